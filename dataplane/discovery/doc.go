// Package discovery is how a dataplane node finds itself and its peers:
//
//   - PrivateURL derives the URL other nodes dial to relay to this one, from
//     the OWN_PRIVATE_API_* settings and the private API listener.
//   - Registrar registers the node with the control plane, heartbeats its
//     lease and reports the tunnels it opens and closes, re-sending all of
//     them whenever the control plane has lost the node.
//   - Resolver answers "which nodes hold this agent's tunnels?", with a short
//     cache that keeps serving known routes while the control plane is down.
//   - AgentAuthenticator checks agent tokens with a short cache keyed by the
//     token's SHA-256, and rechecks open tunnels so revoked tokens lose them.
//
// The package talks to the control plane only through the generated Connect
// clients of kas.dataplane.v1. Nothing here blocks a caller on the control
// plane longer than one RPC, and nothing stops serving when it is down.
package discovery
