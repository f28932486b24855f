package tests

// Abuse tests of the internet-facing and private listeners (issue 6): a
// flood of failed authentications is refused cheaply, slow and idle
// clients are cut, oversized headers get 431, no caller input makes a node
// dial anything but a registered node or its own agents, and the private
// API refuses every JWT that is not a valid one for it.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kas-project/kas/dataplane"
	"github.com/kas-project/kas/dataplane/agentserver"
	"github.com/kas-project/kas/dataplane/relay"
	"github.com/kas-project/kas/dataplane/tunnel"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
	mgmtv1 "github.com/kas-project/kas/gen/kas/management/v1"
	relayv1 "github.com/kas-project/kas/gen/kas/relay/v1"
	"github.com/kas-project/kas/gen/kas/relay/v1/relayv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/cptest"
	"github.com/kas-project/kas/internal/listen"
	"github.com/kas-project/kas/internal/obs"
	"github.com/kas-project/kas/internal/ratelimit"
	"github.com/kas-project/kas/internal/secret"
	"github.com/kas-project/kas/tests/framework"
)

// countingControlPlane serves env's control plane through a handler that
// counts the authentication calls it gets, and returns its URL.
func countingControlPlane(t *testing.T, env *cptest.Env) (url string, authorize, authenticate *atomic.Int64) {
	t.Helper()
	authorize, authenticate = new(atomic.Int64), new(atomic.Int64)
	h := env.Server.Handler()
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case dataplanev1connect.AuthServiceAuthorizeProxyProcedure:
			authorize.Add(1)
		case dataplanev1connect.AuthServiceAuthenticateAgentProcedure:
			authenticate.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	hs.Config.Protocols = new(http.Protocols)
	hs.Config.Protocols.SetHTTP1(true)
	hs.Config.Protocols.SetUnencryptedHTTP2(true)
	hs.Start()
	t.Cleanup(hs.Close)
	return hs.URL, authorize, authenticate
}

// clientFrom returns an HTTP client whose connections come from the local
// address ip (any of 127.0.0.0/8 on Linux): another client, as the node sees it.
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

// abuseSetup is a proxy node limiting failed authentications with a tiny
// burst, in front of a counting control plane, with one agent and an
// access token for it.
type abuseSetup struct {
	env                     *cptest.Env
	node                    *framework.ProxyNode
	creds                   framework.AgentCreds
	pat                     string
	authorize, authenticate *atomic.Int64
}

const abuseBurst = 5

func startAbuseSetup(t *testing.T) *abuseSetup {
	t.Helper()
	ctx := framework.Context(t)
	s := &abuseSetup{env: framework.StartControlPlane(t)}
	var cpURL string
	cpURL, s.authorize, s.authenticate = countingControlPlane(t, s.env)
	// Refill is an hour: no token comes back while the test runs.
	limiter := func() *ratelimit.Limiter {
		l, err := ratelimit.New(ratelimit.Options{Burst: abuseBurst, Refill: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	s.node = framework.StartProxyNode(t, s.env, "abuse", func(o *dataplane.Options) {
		o.ControlPlaneURL = cpURL
		o.KubernetesAPI.FailedAuth = limiter()
		o.AgentFailedAuth = limiter()
	})
	s.creds = framework.CreateAgent(t, s.env, "abused")
	if _, err := s.env.Agents.PutAgentConfig(ctx, &mgmtv1.PutAgentConfigRequest{AgentId: s.creds.ID,
		Yaml: "user_access:\n  access_as: {user: {}}\n  projects: [{id: g/p}]\n"}); err != nil {
		t.Fatal(err)
	}
	framework.StartAgent(t, s.creds, s.node.AgentURL, 1)
	framework.WaitRouted(t, s.env, s.creds.ID, s.node.ID)
	pat, err := s.env.Credentials.CreateAccessToken(ctx, &mgmtv1.CreateAccessTokenRequest{User: &mgmtv1.UserIdentity{Id: 1, Username: "alice"},
		AgentIds: []int64{s.creds.ID}, ExpiresAt: timestamppb.New(time.Now().Add(time.Hour))})
	if err != nil {
		t.Fatal(err)
	}
	s.pat = pat.Secret
	return s
}

// proxyGet sends GET path through the proxy with the access token tok.
func (s *abuseSetup) proxyGet(t *testing.T, c *http.Client, tok, path string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(framework.Context(t), http.MethodGet, s.node.ProxyURL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", fmt.Sprintf("Bearer pat:%d:%s", s.creds.ID, tok))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(strings.NewReader(string(b)))
	return resp
}

// handshake sends the agent endpoint a WebSocket handshake with token.
func (s *abuseSetup) handshake(t *testing.T, c *http.Client, token string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(framework.Context(t), http.MethodGet, "http://"+s.node.AgentAddr+agentserver.Path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	req.Header.Set("Sec-WebSocket-Protocol", tunnel.Subprotocol)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// TestAbuseFailedAuthFloodIsRateLimited floods both internet-facing ports
// with well-formed wrong credentials from one address: after the burst,
// each is refused with 429 and Retry-After without reaching the control
// plane; a known-good credential from that address and any credential from
// another address are still answered.
func TestAbuseFailedAuthFloodIsRateLimited(t *testing.T) {
	s := startAbuseSetup(t)
	attacker, other := clientFrom("127.0.0.1"), clientFrom("127.0.0.2")
	const flood = 60

	// The kubernetes API proxy. The user's token is used (and its
	// decision cached) before the flood.
	if resp := s.proxyGet(t, attacker, s.pat, "api"); resp.StatusCode != http.StatusOK {
		t.Fatalf("good token before the flood: %s", resp.Status)
	}
	patID, _, ok := secret.Parse(secret.AccessToken, s.pat)
	if !ok {
		t.Fatal("the access token does not parse")
	}
	var sent []string
	before := s.authorize.Load()
	codes := map[int]int{}
	for i := range flood {
		wrong, _ := secret.New(secret.AccessToken, patID) // the token's row, another random part
		sent = append(sent, wrong)
		resp := s.proxyGet(t, attacker, wrong, "api")
		codes[resp.StatusCode]++
		if i < abuseBurst {
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("wrong token %d (within the burst): %s, want 401", i, resp.Status)
			}
			continue
		}
		if resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("wrong token %d (after the burst): %s, want 429", i, resp.Status)
		}
		if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 {
			t.Fatalf("429 without a Retry-After in seconds: %q", resp.Header.Get("Retry-After"))
		}
		b, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(b), `"reason":"TooManyRequests"`) || !strings.Contains(string(b), `"code":429`) {
			t.Fatalf("429 body is not a Kubernetes Status: %s", b)
		}
	}
	if got := s.authorize.Load() - before; got != abuseBurst {
		t.Errorf("the flood of %d wrong tokens cost %d control-plane calls, want %d (the burst)", flood, got, abuseBurst)
	}
	if resp := s.proxyGet(t, attacker, s.pat, "api"); resp.StatusCode != http.StatusOK {
		t.Errorf("good (cached) token from the flooding address: %s, want 200", resp.Status)
	}
	if resp := s.proxyGet(t, other, sent[0], "api"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("wrong token from another address: %s, want 401 (not limited)", resp.Status)
	}
	if resp := s.proxyGet(t, other, s.pat, "api"); resp.StatusCode != http.StatusOK {
		t.Errorf("good token from another address: %s, want 200", resp.Status)
	}
	if got := s.node.Metric(t, "proxy_auth_rate_limited_total"); got != flood-abuseBurst {
		t.Errorf("kas_dataplane_proxy_auth_rate_limited_total = %v, want %d", got, flood-abuseBurst)
	}
	// The same flood sent all at once from a third address: the attempts
	// in flight together do not pass the burst either.
	third := clientFrom("127.0.0.3")
	before = s.authorize.Load()
	var wg sync.WaitGroup
	var limited atomic.Int64
	for range flood {
		wrong, _ := secret.New(secret.AccessToken, patID)
		sent = append(sent, wrong)
		wg.Go(func() { // not proxyGet: no t.Fatal off the test's goroutine
			req, _ := http.NewRequestWithContext(framework.Context(t), http.MethodGet, s.node.ProxyURL+"api", nil)
			req.Header.Set("Authorization", fmt.Sprintf("Bearer pat:%d:%s", s.creds.ID, wrong))
			resp, err := third.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusTooManyRequests {
				limited.Add(1)
			}
		})
	}
	wg.Wait()
	if got := s.authorize.Load() - before; got != abuseBurst || limited.Load() != flood-abuseBurst {
		t.Errorf("a concurrent flood of %d: %d control-plane calls and %d refused with 429, want %d and %d",
			flood, got, limited.Load(), abuseBurst, flood-abuseBurst)
	}

	// The agent endpoint: wrong agent tokens, well-formed.
	before = s.authenticate.Load()
	for i := range flood {
		wrong, _ := secret.New(secret.AgentToken, s.creds.ID)
		sent = append(sent, wrong)
		resp := s.handshake(t, attacker, wrong)
		want := http.StatusUnauthorized
		if i >= abuseBurst {
			want = http.StatusTooManyRequests
		}
		if resp.StatusCode != want {
			t.Fatalf("wrong agent token %d: %s, want %d", i, resp.Status, want)
		}
		if want == http.StatusTooManyRequests {
			if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 {
				t.Fatalf("429 without a Retry-After in seconds: %q", resp.Header.Get("Retry-After"))
			}
		}
	}
	// Token rechecks of the running agent may add a call or two.
	if got := s.authenticate.Load() - before; got > abuseBurst+2 {
		t.Errorf("the flood of %d wrong agent tokens cost %d control-plane calls, want about %d (the burst)", flood, got, abuseBurst)
	}
	// The agent's own token (its tunnel is open here) still opens a tunnel
	// from the flooding address; another address is not limited.
	sess, err := tunnel.Dial(framework.Context(t), s.node.AgentURL+agentserver.Path,
		http.Header{"Authorization": {"Bearer " + s.creds.Token}}, tunnel.DialOptions{HTTPClient: attacker})
	if err != nil {
		t.Errorf("the agent's own token from the flooding address: %v", err)
	} else {
		sess.Close()
	}
	if resp := s.handshake(t, other, sent[len(sent)-1]); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("wrong agent token from another address: %s, want 401", resp.Status)
	}
	if got := s.node.Metric(t, "tunnel_handshakes_total", "result", "rate_limited"); got != flood-abuseBurst {
		t.Errorf("kas_dataplane_tunnel_handshakes_total{result=rate_limited} = %v, want %d", got, flood-abuseBurst)
	}

	// Nothing of what was sent reaches the logs.
	for _, l := range s.node.Logs.Lines() {
		for _, w := range sent {
			_, random, _ := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(w, secret.AccessToken+"_"), secret.AgentToken+"_"), "_")
			if strings.Contains(l, random) {
				t.Fatalf("a token sent in the flood is in the node's log: %s", l)
			}
		}
	}
}

// TestAbuseSlowAndIdleClientsAreCut opens, on every public listener,
// connections that send nothing and connections that send their headers a
// byte at a time: each is closed once the header timeout has passed.
func TestAbuseSlowAndIdleClientsAreCut(t *testing.T) {
	const timeout = 500 * time.Millisecond
	defer listen.SetReadHeaderTimeout(timeout)()
	env := framework.StartControlPlane(t)
	node := framework.StartProxyNode(t, env, "slow")
	// The control plane's listener, as kas controlplane builds it.
	cpL := framework.Listen(t)
	cpCtx, stopCP := context.WithCancel(context.Background())
	cpDone := make(chan error, 1)
	go func() { cpDone <- listen.Serve(cpCtx, listen.NewServer(env.Server.Handler(), nil), cpL, time.Second) }()
	defer func() {
		stopCP()
		if err := <-cpDone; err != nil {
			t.Errorf("control plane listener: %v", err)
		}
	}()
	private, err := url.Parse(node.PrivateURL())
	if err != nil {
		t.Fatal(err)
	}
	for name, addr := range map[string]string{
		"agent":          node.AgentAddr,
		"kubernetes_api": node.ProxyAddr,
		"private_api":    private.Host,
		"controlplane":   cpL.Addr().String(),
	} {
		t.Run(name, func(t *testing.T) {
			conns := map[string]net.Conn{}
			for i := range 50 { // many connections that never send a byte
				conns[fmt.Sprintf("idle connection %d", i)] = dialRaw(t, addr)
			}
			slow := dialRaw(t, addr)
			conns["slow connection"] = slow
			stop := make(chan struct{})
			defer close(stop)
			go drip(slow, "GET / HTTP/1.1\r\nHost: kas\r\nX-Slow: "+strings.Repeat("a", 10_000), stop)
			start := time.Now()
			deadline := start.Add(10 * timeout) // one for all: a failure takes no longer
			for what, c := range conns {
				if err := waitClosed(c, deadline); err != nil {
					t.Errorf("%s: %v", what, err)
				}
			}
			if d := time.Since(start); d < timeout/2 {
				t.Errorf("cut after %v, before the timeout", d)
			}
			// The listener still serves.
			c := dialRaw(t, addr)
			fmt.Fprintf(c, "GET /livez-not-here HTTP/1.1\r\nHost: kas\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("a normal request after the slow ones: %v", err)
			}
			resp.Body.Close()
		})
	}
}

func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// drip writes s one byte at a time, a byte every 20 ms (a slow-loris
// client), until a write fails or stop is closed.
func drip(c net.Conn, s string, stop <-chan struct{}) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i = (i + 1) % len(s) {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		if _, err := c.Write([]byte{s[i]}); err != nil {
			return
		}
	}
}

// waitClosed reads c until the server closes it; an error if it is still
// open at deadline. Whatever the server answers first (a 408) is ignored.
func waitClosed(c net.Conn, deadline time.Time) error {
	c.SetReadDeadline(deadline)
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("still open at the deadline")
	}
	return nil // EOF (io.Copy returns nil) or reset: closed by the server
}

// TestAbuseOversizedHeaders sends headers beyond the servers'
// MaxHeaderBytes to the proxy and agent listeners: 431, and the node keeps
// serving.
func TestAbuseOversizedHeaders(t *testing.T) {
	s := startAbuseSetup(t)
	big := strings.Repeat("x", 1<<20+8<<10)
	for name, req := range map[string]string{
		"kubernetes_api": fmt.Sprintf("GET /k8s-proxy/api HTTP/1.1\r\nHost: kas\r\nAuthorization: Bearer pat:%d:%s\r\nX-Big: %s\r\n\r\n", s.creds.ID, s.pat, big),
		"agent":          fmt.Sprintf("GET %s HTTP/1.1\r\nHost: kas\r\nAuthorization: Bearer %s\r\nX-Big: %s\r\n\r\n", agentserver.Path, s.creds.Token, big),
	} {
		addr := s.node.ProxyAddr
		if name == "agent" {
			addr = s.node.AgentAddr
		}
		c := dialRaw(t, addr)
		go io.WriteString(c, req) // fails once the server has answered and closed
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("%s: %s, want 431", name, resp.Status)
		}
	}
	// Still serving, through the same tunnel.
	if resp := s.proxyGet(t, http.DefaultClient, s.pat, "api"); resp.StatusCode != http.StatusOK {
		t.Errorf("after oversized headers: %s", resp.Status)
	}
}

// TestAbuseNoSSRF shows that nothing a caller controls makes a node dial
// an address that is not a registered node or its own agent: hostile
// paths, absolute request URIs and Host headers naming another server
// reach the agent as paths (or are refused), and a node asked to relay for
// an agent it has no tunnel of answers "not here" instead of relaying
// onward (one hop).
func TestAbuseNoSSRF(t *testing.T) {
	env := framework.StartControlPlane(t)
	front := framework.StartProxyNode(t, env, "front")
	back := framework.StartNode(t, env, "back")
	creds := framework.CreateAgent(t, env, "behind-back")
	ctx := framework.Context(t)
	if _, err := env.Agents.PutAgentConfig(ctx, &mgmtv1.PutAgentConfigRequest{AgentId: creds.ID,
		Yaml: "user_access:\n  access_as: {user: {}}\n  projects: [{id: g/p}]\n"}); err != nil {
		t.Fatal(err)
	}
	framework.StartAgent(t, creds, back.AgentURL, 1)
	framework.WaitRouted(t, env, creds.ID, back.ID)
	lonely := framework.CreateAgent(t, env, "no-tunnel") // routed nowhere
	pat, err := env.Credentials.CreateAccessToken(ctx, &mgmtv1.CreateAccessTokenRequest{User: &mgmtv1.UserIdentity{Id: 1, Username: "alice"},
		AgentIds: []int64{creds.ID, lonely.ID}, ExpiresAt: timestamppb.New(time.Now().Add(time.Hour))})
	if err != nil {
		t.Fatal(err)
	}

	// A canary: any connection to it is a dial the caller chose.
	canary := framework.Listen(t)
	var dialed atomic.Int64
	go func() {
		for {
			c, err := canary.Accept()
			if err != nil {
				return
			}
			dialed.Add(1)
			c.Close()
		}
	}()
	ca := canary.Addr().String()
	auth := fmt.Sprintf("Bearer pat:%d:%s", creds.ID, pat.Secret)
	for _, tc := range []struct{ name, target, host, wantPath string }{
		{"double slash", "/k8s-proxy//" + ca + "/api", "kas", "//" + ca + "/api"},
		{"absolute URI", "http://" + ca + "/k8s-proxy/api", ca, "/api"},
		{"absolute URI, other scheme", "https://" + ca + "/k8s-proxy/api", "kas", "/api"},
		{"Host header", "/k8s-proxy/api", ca, "/api"},
		{"encoded", "/k8s-proxy/%2F%2F" + ca + "/api", "kas", "///" + ca + "/api"},
		{"dot segments", "/k8s-proxy/../../" + ca + "/api", "kas", ""}, // whatever the answer: no dial
	} {
		c := dialRaw(t, front.ProxyAddr)
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\nX-Forwarded-Host: %s\r\nForwarded: host=%s\r\n\r\n",
			tc.target, tc.host, auth, ca, ca)
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if tc.wantPath == "" {
			continue
		}
		if want := fmt.Sprintf("agent %d: %s", creds.ID, tc.wantPath); resp.StatusCode != http.StatusOK || string(b) != want {
			t.Errorf("%s: %s %q, want 200 %q (the agent's API server got it as a path)", tc.name, resp.Status, b, want)
		}
	}
	// An agent with no tunnel anywhere: nothing to dial.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, front.ProxyURL+"api", nil)
	req.Header.Set("Authorization", fmt.Sprintf("Bearer pat:%d:%s", lonely.ID, pat.Secret))
	req.Host = ca
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("agent without tunnels: %s, want 503", resp.Status)
	}
	if n := dialed.Load(); n != 0 {
		t.Fatalf("the canary was dialled %d times", n)
	}

	// The private API, with a valid key: a node holding no tunnel of the
	// agent answers "not here" and does not relay onward, though another
	// node has one.
	relaysOut := front.Metric(t, "relays_out_total", "result", "ok")
	backIn := back.Metric(t, "relays_in_total", "result", "ok")
	// Its other fields name the canary: they are only logged.
	d, err := relay.NewDialer(relay.DialerOptions{NodeID: "grpc://" + ca, Key: env.PrivateKey})
	if err != nil {
		t.Fatal(err)
	}
	rctx := obs.WithRequestID(ctx, "http://"+ca+"/")
	for _, id := range []int64{creds.ID, lonely.ID, 1 << 40} {
		if _, err := d.Dial(rctx, front.PrivateURL(), id); !errors.Is(err, relay.ErrNoTunnel) {
			t.Errorf("relay to the front node for agent %d: %v, want ErrNoTunnel", id, err)
		}
	}
	if n := dialed.Load(); n != 0 {
		t.Fatalf("the canary was dialled %d times", n)
	}
	if got := front.Metric(t, "relays_out_total", "result", "ok"); got != relaysOut {
		t.Errorf("the front node relayed onward: relays_out_total{ok} %v → %v", relaysOut, got)
	}
	if got := back.Metric(t, "relays_in_total", "result", "ok"); got != backIn {
		t.Errorf("the back node got a relay: relays_in_total{ok} %v → %v", backIn, got)
	}
	// The one hop that is allowed: the back node holds the tunnel.
	conn, err := d.Dial(ctx, back.PrivateURL(), creds.ID)
	if err != nil {
		t.Fatalf("relay to the node holding the tunnel: %v", err)
	}
	conn.Close()
}

// TestAbusePrivateAPIRefusesBadJWTs calls a node's private API (Relay)
// without a JWT, with one signed by another key, expired, for another
// audience or issuer, and with alg none: each is Unauthenticated before any
// tunnel is looked at.
func TestAbusePrivateAPIRefusesBadJWTs(t *testing.T) {
	env := framework.StartControlPlane(t)
	node := framework.StartNode(t, env, "private")
	creds := framework.CreateAgent(t, env, "relayed")
	framework.StartAgent(t, creds, node.AgentURL, 1)
	framework.WaitRouted(t, env, creds.ID, node.ID)
	private, err := url.Parse(node.PrivateURL())
	if err != nil {
		t.Fatal(err)
	}
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	h2c := &http.Transport{Protocols: p}
	defer h2c.CloseIdleConnections()
	// call opens a Relay call for the agent with auth and returns the
	// result of opening it.
	call := func(auth string) error {
		client := relayv1connect.NewRelayServiceClient(&http.Client{Transport: withAuth{h2c, auth}}, "http://"+private.Host, connect.WithGRPC())
		stream, err := client.Relay(framework.Context(t))
		if err != nil {
			return err
		}
		defer stream.CloseResponse()
		defer stream.CloseRequest()
		stream.Send(&relayv1.RelayRequest{Msg: &relayv1.RelayRequest_Header{Header: &relayv1.RelayHeader{AgentId: creds.ID, FromNodeId: "mallory"}}})
		_, err = stream.Receive()
		return err
	}

	sign := func(key []byte, method jwt.SigningMethod, iss, aud string, exp time.Time) string {
		tok, err := jwt.NewWithClaims(method, jwt.RegisteredClaims{Issuer: iss, Subject: "mallory", Audience: jwt.ClaimStrings{aud},
			IssuedAt: jwt.NewNumericDate(exp.Add(-time.Minute)), ExpiresAt: jwt.NewNumericDate(exp)}).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	now := time.Now()
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.RegisteredClaims{Issuer: authn.IssuerDataplane,
		Audience: jwt.ClaimStrings{authn.AudiencePrivateAPI}, ExpiresAt: jwt.NewNumericDate(now.Add(time.Minute))}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	good := sign(env.PrivateKey, jwt.SigningMethodHS256, authn.IssuerDataplane, authn.AudiencePrivateAPI, now.Add(time.Minute))
	before := node.Metric(t, "relays_in_total", "result", "ok")
	for _, tc := range []struct{ name, auth string }{
		{"no token", ""},
		{"not a bearer token", "Basic " + good},
		{"garbage", "Bearer not-a-jwt"},
		{"another key", "Bearer " + sign(cptest.Key(t), jwt.SigningMethodHS256, authn.IssuerDataplane, authn.AudiencePrivateAPI, now.Add(time.Minute))},
		{"the management key", "Bearer " + sign(env.APIKey, jwt.SigningMethodHS256, authn.IssuerDataplane, authn.AudiencePrivateAPI, now.Add(time.Minute))},
		{"expired", "Bearer " + sign(env.PrivateKey, jwt.SigningMethodHS256, authn.IssuerDataplane, authn.AudiencePrivateAPI, now.Add(-time.Minute))},
		{"too long a life", "Bearer " + sign(env.PrivateKey, jwt.SigningMethodHS256, authn.IssuerDataplane, authn.AudiencePrivateAPI, now.Add(24*time.Hour))},
		{"control plane audience", "Bearer " + sign(env.PrivateKey, jwt.SigningMethodHS256, authn.IssuerDataplane, authn.AudienceDataplane, now.Add(time.Minute))},
		{"management issuer", "Bearer " + sign(env.PrivateKey, jwt.SigningMethodHS256, authn.IssuerRails, authn.AudiencePrivateAPI, now.Add(time.Minute))},
		{"HS512", "Bearer " + sign(env.PrivateKey, jwt.SigningMethodHS512, authn.IssuerDataplane, authn.AudiencePrivateAPI, now.Add(time.Minute))},
		{"alg none", "Bearer " + none},
	} {
		if err := call(tc.auth); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("%s: %v, want unauthenticated", tc.name, err)
		}
	}
	if got := node.Metric(t, "relays_in_total", "result", "ok"); got != before {
		t.Errorf("a refused call opened a relay: relays_in_total{ok} %v → %v", before, got)
	}
	// The control: the same call with a good token is relayed.
	if err := call("Bearer " + good); err != nil {
		t.Errorf("good token: %v", err)
	}
}

// withAuth sets Authorization on every request (none when auth is "").
type withAuth struct {
	base http.RoundTripper
	auth string
}

func (w withAuth) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Del("Authorization")
	if w.auth != "" {
		r.Header.Set("Authorization", w.auth)
	}
	return w.base.RoundTrip(r)
}
