// Package proxy is the Kubernetes API proxy of a dataplane node (port 8154,
// under dataplane.kubernetes_api.path_prefix, default /k8s-proxy/): what
// kubectl, client-go, CI jobs and browsers talk to.
//
// A request names its agent and proves who it is in one of KAS's three
// ways: `Authorization: Bearer pat:<agent-id>:<token>` (an access token),
// `Authorization: Bearer ci:<agent-id>:<job-token>` (a CI job token), or
// the `_gitlab_kas` cookie with the agent in `Gitlab-Agent-Id` and, for
// unsafe methods, the CSRF token in `X-Csrf-Token`. An Authorization
// header wins over the cookie. The control plane decides (AuthService.
// AuthorizeProxy: it decrypts the cookie, checks the credential and the
// agent's ci_access/user_access, and resolves access_as into the identity
// to impersonate); the node caches each decision under the SHA-256 of the
// credential, agent and (cookies) CSRF bits, for the TTL the control plane
// gives, at most 60 s when allowed and 10 s when refused, and concurrent
// misses share one call. The credential itself is never stored or logged.
//
// An allowed request goes to the agent through the node's transport (a
// local tunnel, or a relay to the node that has one) with
// httputil.ReverseProxy: the prefix is stripped, every chunk is flushed at
// once (watches, logs -f), and a 101 Switching Protocols turns the
// connection into an opaque byte pipe (exec, attach, port-forward, cp over
// SPDY or WebSocket). The caller's Authorization, Cookie, Impersonate-*,
// hop-by-hop and Kas-* headers never reach the agent; the node adds one
// trusted header, Kas-Impersonation (package impersonation), which agentk
// turns into Impersonate-* headers next to its own credentials.
//
// Browsers: a request with an Origin header must come from an origin in
// Options.AllowedOrigins (dataplane.kubernetes_api.allowed_origins) or the
// proxy's own, else it is refused with 403 before its credentials are
// looked at; preflights from allowed origins are answered by the proxy
// without credentials, and every answer to them carries kas's CORS
// headers, never the API server's (cors.go, docs/cookie.md).
//
// Every error the proxy makes is a Kubernetes Status (status.go) with the
// right code: 401 missing or invalid credential, 403 not allowed, 404
// unknown agent, 503 agent not connected or control plane unavailable, 502
// the relay or the tunnel failed (the message names the side). An agent
// that cannot reach its API server answers 502 itself, passed through.
package proxy
