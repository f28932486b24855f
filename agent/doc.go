// Package agent is agentk, the agent that runs in each cluster: it dials out
// to the dataplane nodes, keeps a pool of WebSocket tunnels open, and serves
// every stream a node opens on them as one HTTP/1.1 connection whose
// requests it forwards to the cluster's Kubernetes API server with its own
// credentials.
//
// The tunnel pool keeps Options.Tunnels tunnels open, preferring different
// nodes. It reconnects with exponential backoff and full jitter, and resets
// the backoff only after a tunnel stayed up for Options.HealthyAfter, so a
// node that accepts and then drops tunnels does not make agents hammer it.
// Every tunnel is replaced at a jittered maximum age, and whenever its node
// sends GOAWAY, make before break: the replacement is opened first, then the
// old tunnel finishes its streams and closes.
//
// Everything clock-driven goes through Options.Clock, so tests control
// time. New prepares an Agent, Run serves until its context ends, and
// Ready, Tunnels and WaitTunnels tell a test (or /readyz) how many tunnels
// are up.
package agent
