// Package dataplane runs a dataplane node: it accepts agentk's tunnels
// (package agentserver, port 8150), registers itself and its tunnels with
// the control plane (package discovery), relays node to node over the
// private API (package relay, port 8155), and serves the Kubernetes API
// proxy (package proxy, port 8154, when Options.KubernetesAPIListener is
// set), which reaches any agent through DialAgent and Transport.
//
// Streams carry HTTP/1.1: the node is the HTTP client, the agent the HTTP
// server. A request for an agent goes over a tunnel of this node when it
// has one, else over a Relay stream to a node that has one — one hop, never
// two: the relay server only uses its own tunnels.
//
// Lifecycle: New opens nothing (the caller passes listeners); Run serves
// until its context ends and then drains, make before break: /readyz turns
// 503 (Ready), the node is marked draining in the control plane so others
// resolve its agents elsewhere first, new tunnels are refused, every tunnel
// gets GOAWAY so its agent opens a replacement on another node, and each
// tunnel is closed once it carries no stream (after at least DrainDelay, at
// most DrainGrace). Then the node deregisters and its servers stop. Close
// stops at once without deregistering, as a killed process would; the
// control plane forgets the node when its lease expires.
//
// Invariant: a node never writes Postgres; everything it knows about other
// nodes comes from the control plane, and it only dials private URLs the
// control plane returned.
package dataplane
