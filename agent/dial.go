package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/kas-project/kas/dataplane/tunnel"
	"github.com/kas-project/kas/internal/secret"
)

// dialer opens tunnels to the node's agent endpoint.
type dialer struct {
	url     string
	version string
	token   string // file
	timeout time.Duration
	cfg     tunnel.Config
	base    http.RoundTripper // shared by every handshake
}

// conn is a freshly dialled tunnel.
type conn struct {
	sess   *tunnel.Session
	nodeID string
}

// dialError is a failed handshake: the HTTP status the node answered (0 if
// it never did) and its Retry-After.
type dialError struct {
	status     int
	retryAfter time.Duration
	err        error
}

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// result is the metric label of a connection attempt.
func (e *dialError) result() string {
	switch e.status {
	case http.StatusUnauthorized, http.StatusForbidden:
		return "unauthorized"
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
		return "unavailable"
	}
	return "error"
}

func newDialer(r *resolved) *dialer {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = r.Proxy
	tr.TLSClientConfig = r.tlsConfig
	// A WebSocket handshake is HTTP/1.1.
	tr.ForceAttemptHTTP2 = false
	// Every handshake on a new connection: one a node refused (draining,
	// busy) must not be retried over the same connection to the same node,
	// but go through the load balancer again.
	tr.DisableKeepAlives = true
	return &dialer{
		url:     r.tunnelURL,
		version: r.Version,
		token:   r.TokenFile,
		timeout: r.HandshakeTimeout,
		cfg:     r.Tunnel,
		base:    tr,
	}
}

// dial performs one handshake. Errors are *dialError.
func (d *dialer) dial(ctx context.Context) (*conn, error) {
	tok, err := readToken(d.token)
	if err != nil {
		return nil, &dialError{err: fmt.Errorf("dial tunnel: %w", err)}
	}
	h := http.Header{}
	h.Set("Authorization", "Bearer "+tok)
	h.Set(AgentVersionHeader, d.version)
	h.Set("User-Agent", "agentk/"+d.version)
	rec := &recorder{rt: d.base}
	client := &http.Client{
		Transport: rec,
		// A redirect is a misconfigured address (a missing path prefix,
		// http instead of https): report it rather than follow it.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	// The handshake is network I/O, bounded in real time.
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	sess, err := tunnel.Dial(ctx, d.url, h, tunnel.DialOptions{Config: d.cfg, HTTPClient: client})
	if err != nil {
		de := &dialError{err: err}
		if resp := rec.resp; resp != nil {
			de.status = resp.StatusCode
			de.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		}
		return nil, de
	}
	c := &conn{sess: sess}
	if rec.resp != nil {
		c.nodeID = rec.resp.Header.Get(NodeIDHeader)
	}
	return c, nil
}

// recorder keeps the handshake's response: tunnel.Dial reports a refusal
// as text, but the agent needs its status, Retry-After and Kas-Node-Id.
type recorder struct {
	rt   http.RoundTripper
	resp *http.Response
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.rt.RoundTrip(req)
	r.resp = resp
	return resp, err
}

// parseRetryAfter parses Retry-After: seconds or an HTTP date. 0 if absent
// or malformed.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		if s < 0 {
			return 0
		}
		return time.Duration(min(s, 3600)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), time.Hour)
	}
	return 0
}

// agentIDOf returns the agent ID an agent token carries.
func agentIDOf(token string) (int64, error) {
	id, _, ok := secret.Parse(secret.AgentToken, token)
	if !ok {
		return 0, errors.New("the token does not look like an agent token (" + secret.AgentToken + "_<id>_<secret>)")
	}
	return id, nil
}
