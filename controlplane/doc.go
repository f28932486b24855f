// Package controlplane is kas's stateless control plane: the Connect/gRPC
// services that Rails, kasctl and dataplane nodes call. It owns agents, their
// tokens and configuration, proxy credentials, dataplane nodes and the tunnel
// routing table, and keeps all of it in Postgres.
//
// Invariant: no state outside Postgres and no background loop. Any replica
// answers any request the same way; expired nodes and their tunnels are
// removed by the statements that run anyway (registration, heartbeat) or by
// an explicit `kas controlplane gc`. The control plane never holds a tunnel.
package controlplane
