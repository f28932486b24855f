package agentserver

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kas-project/kas/dataplane/discovery"
	"github.com/kas-project/kas/dataplane/tunnel"
	mgmtv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/internal/cptest"
)

// env is an agent server in front of a real control plane (authenticator
// and registrar included) on an httptest listener.
type env struct {
	cp    *cptest.Env
	srv   *Server
	url   string
	reg   *discovery.Registrar
	token string
	tokID int64
	agent int64
}

func start(t *testing.T) *env {
	t.Helper()
	return startWith(t, discovery.AuthenticatorOptions{}, Options{}, nil)
}

// startWith is start with authenticator and server options; the clients,
// IDs and registrar are filled in. wrap, if set, wraps the authenticator.
func startWith(t *testing.T, ao discovery.AuthenticatorOptions, so Options, wrap func(Authenticator) Authenticator) *env {
	t.Helper()
	cp := cptest.Start(t)
	ctx := context.Background()
	a, err := cp.Agents.CreateAgent(ctx, &mgmtv1.CreateAgentRequest{ProjectId: 1, Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := cp.Agents.CreateAgentToken(ctx, &mgmtv1.CreateAgentTokenRequest{AgentId: a.GetAgent().GetId(), Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	ao.Auth = cp.Auth
	auth, err := discovery.NewAgentAuthenticator(ao)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(auth.Close)
	reg, err := discovery.NewRegistrar(discovery.RegistrarOptions{NodeID: "n1", PrivateURL: "grpc://10.0.0.1:8155", Nodes: cp.Nodes})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); reg.Run(rctx) }()
	t.Cleanup(func() { stop(); <-done })
	so.NodeID, so.Auth, so.Registrar = "n1", auth, reg
	if wrap != nil {
		so.Auth = wrap(auth)
	}
	srv, err := New(so)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { srv.Close(); hs.Close() })
	return &env{cp: cp, srv: srv, url: "ws" + strings.TrimPrefix(hs.URL, "http") + Path, reg: reg,
		token: tok.GetSecret(), tokID: tok.GetToken().GetId(), agent: a.GetAgent().GetId()}
}

// dial opens an agent-side session that accepts (and holds) every stream,
// counting them in accepted, and waits until the server registered it.
func (e *env) dial(t *testing.T, accepted *atomic.Int64) *tunnel.Session {
	t.Helper()
	return e.dialWith(t, e.token, accepted)
}

// dialWith is dial with another token.
func (e *env) dialWith(t *testing.T, token string, accepted *atomic.Int64) *tunnel.Session {
	t.Helper()
	before := e.srv.Tunnels()
	h := http.Header{"Authorization": {"Bearer " + token}, HeaderAgentVersion: {"v1"}}
	s, err := tunnel.Dial(context.Background(), e.url, h, tunnel.DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	go func() {
		for {
			if _, err := s.Accept(context.Background()); err != nil {
				return
			}
			accepted.Add(1)
		}
	}()
	waitFor(t, "tunnel registered", func() bool { return e.srv.Tunnels() == before+1 })
	return s
}

func TestOpenPicksTheLeastLoadedTunnelNotGoingAway(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	if _, err := e.srv.Open(ctx, e.agent); !errors.Is(err, ErrNoTunnel) || !strings.Contains(err.Error(), "node n1") {
		t.Fatalf("Open without tunnels: %v", err)
	}
	var accepted atomic.Int64
	agents := []*tunnel.Session{e.dial(t, &accepted), e.dial(t, &accepted), e.dial(t, &accepted)}
	if err := e.reg.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	if n := e.srv.AgentTunnels(e.agent); n != 3 {
		t.Fatalf("%d tunnels registered, want 3", n)
	}
	// Six streams spread two per tunnel.
	for range 6 {
		if _, err := e.srv.Open(ctx, e.agent); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range e.sessions() {
		if s.NumStreams() != 2 {
			t.Errorf("tunnel %d has %d streams, want 2", i, s.NumStreams())
		}
	}
	waitFor(t, "the agent accepted every stream", func() bool { return accepted.Load() == 6 })
	// The agent says one tunnel goes away: it gets no new stream while
	// others exist, even though it is no more loaded.
	agents[0].GoAway()
	waitFor(t, "GOAWAY seen", func() bool {
		for _, s := range e.sessions() {
			if goneAway(s) {
				return true
			}
		}
		return false
	})
	for range 4 {
		st, err := e.srv.Open(ctx, e.agent)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
	}
	for _, s := range e.sessions() {
		if goneAway(s) && s.NumStreams() != 2 {
			t.Errorf("the tunnel going away got new streams: %d", s.NumStreams())
		}
	}
	agents[1].GoAway()
	agents[2].GoAway()
	waitFor(t, "every GOAWAY seen", func() bool {
		for _, s := range e.sessions() {
			if !goneAway(s) {
				return false
			}
		}
		return true
	})
	if _, err := e.srv.Open(ctx, e.agent); !errors.Is(err, ErrDraining) {
		t.Errorf("Open with every tunnel going away: %v, want ErrDraining", err)
	}
}

func TestShutdownClosesIdleTunnelsAndRefusesNewOnes(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	var accepted atomic.Int64
	e.dial(t, &accepted)
	busy := e.dial(t, &accepted)
	st, err := e.srv.Open(ctx, e.agent)
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("x")) // the stream is busy on one of the tunnels
	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(ctx) }()
	// New tunnels are refused with a retryable 503 at once.
	waitFor(t, "draining", e.srv.isDraining)
	_, err = tunnel.Dial(ctx, e.url, http.Header{"Authorization": {"Bearer " + e.token}}, tunnel.DialOptions{})
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "draining") {
		t.Errorf("handshake while draining: %v", err)
	}
	// The refusal closes its connection, so that the agent's next try goes
	// through the load balancer to another node.
	req, _ := http.NewRequest(http.MethodGet, strings.Replace(e.url, "ws://", "http://", 1), nil)
	req.Header.Set("Authorization", "Bearer "+e.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !resp.Close || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("refusal while draining: status %d, connection closed %v, Retry-After %q; want 503, Connection: close and 1 (another node can take the agent now)",
			resp.StatusCode, resp.Close, resp.Header.Get("Retry-After"))
	}
	// The idle tunnel closes; the busy one waits for its stream.
	waitFor(t, "idle tunnel closed", func() bool { return e.srv.Tunnels() == 1 })
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned with a stream open: %v", err)
	default:
	}
	st.Close()
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if e.srv.Tunnels() != 0 {
		t.Errorf("%d tunnels left", e.srv.Tunnels())
	}
	<-busy.Done()
	// The closed count follows the registry: wait for the second one.
	waitFor(t, "both tunnels counted closed", func() bool { return e.srv.Stats().Closed == 2 })
	st2 := e.srv.Stats()
	if st2.Accepted != 2 || st2.RefusedDraining != 2 || st2.Closed != 2 || st2.Streams.StreamsOpened != 1 || st2.Streams.StreamsClosed != 1 {
		t.Errorf("stats %+v", st2)
	}
}

// Rechecks close the tunnel of a revoked token within the authenticator's
// cache TTL plus the recheck interval, and keep the others.
func TestRecheckClosesTunnelsOfRevokedTokensOnly(t *testing.T) {
	const allow, recheck = 100 * time.Millisecond, 100 * time.Millisecond
	e := startWith(t, discovery.AuthenticatorOptions{AllowTTL: allow, DenyTTL: allow}, Options{RecheckInterval: recheck}, nil)
	ctx := context.Background()
	other, err := e.cp.Agents.CreateAgentToken(ctx, &mgmtv1.CreateAgentTokenRequest{AgentId: e.agent, Name: "other"})
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int64
	kept := e.dialWith(t, other.GetSecret(), &accepted)
	doomed := e.dial(t, &accepted)
	revoked := time.Now()
	if _, err := e.cp.Agents.RevokeAgentToken(ctx, &mgmtv1.RevokeAgentTokenRequest{TokenId: e.tokID}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-doomed.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the revoked token's tunnel is still open")
	}
	if took := time.Since(revoked); took > allow+recheck+time.Second {
		t.Errorf("the revoked token's tunnel closed after %v, bound %v", took, allow+recheck)
	}
	waitFor(t, "the revoked tunnel unregistered", func() bool { return e.srv.Tunnels() == 1 })
	// The valid token's tunnel lives through several more rechecks.
	misses := func() uint64 { return e.srv.opts.Auth.(*discovery.AgentAuthenticator).Stats().Misses }
	m := misses()
	waitFor(t, "three more rechecks", func() bool { return misses() >= m+3 })
	select {
	case <-kept.Done():
		t.Fatalf("the valid token's tunnel closed: %v", kept.Err())
	default:
	}
	if st := e.srv.Stats(); st.Revoked != 1 || st.Closed != 1 || st.Tunnels != 1 {
		t.Errorf("stats %+v", st)
	}
}

// An idle tunnel keeps no handler goroutine and no recheck goroutine of
// its own: its session's reader, one watch goroutine, and a shared
// recheck loop.
func TestIdleTunnelsKeepOneGoroutineHere(t *testing.T) {
	e := start(t)
	const n = 20
	var accepted atomic.Int64
	for range n {
		e.dial(t, &accepted)
	}
	// count returns how many goroutines run a function of this package
	// whose name starts with fn (a frame, not a "created by" line).
	count := func(fn string) int {
		buf := make([]byte, 1<<22)
		buf = buf[:runtime.Stack(buf, true)]
		c := 0
		for g := range strings.SplitSeq(string(buf), "\n\n") {
			for line := range strings.Lines(g) {
				if strings.HasPrefix(line, "github.com/kas-project/kas/dataplane/agentserver."+fn) {
					c++
					break
				}
			}
		}
		return c
	}
	waitFor(t, "every handler returned", func() bool { return count("(*Server).serveTunnel") == 0 })
	if got := count("(*Server).watch"); got != n {
		t.Errorf("%d watch goroutines for %d tunnels", got, n)
	}
	if got := count("(*Server).recheckLoop"); got != 1 {
		t.Errorf("%d recheck loops", got)
	}
	e.srv.Close()
	if got := count("(*Server)"); got != 0 {
		t.Errorf("%d goroutines of this package left after Close", got)
	}
}

// gatedAuth holds every token check until the test lets it through, and
// records how many run at once.
type gatedAuth struct {
	Authenticator
	gate           chan struct{}
	inflight, peak atomic.Int64
}

func (g *gatedAuth) Valid(ctx context.Context, token string) (discovery.AgentInfo, error) {
	n := g.inflight.Add(1)
	for p := g.peak.Load(); n > p && !g.peak.CompareAndSwap(p, n); p = g.peak.Load() {
	}
	<-g.gate
	defer g.inflight.Add(-1)
	return g.Authenticator.Valid(ctx, token)
}

func gated(g *gatedAuth) func(Authenticator) Authenticator {
	return func(a Authenticator) Authenticator {
		g.Authenticator = a
		return g
	}
}

// A storm of handshakes reaches the control plane MaxTokenChecks at a time.
func TestHandshakeTokenChecksAreBounded(t *testing.T) {
	g := &gatedAuth{gate: make(chan struct{})}
	e := startWith(t, discovery.AuthenticatorOptions{}, Options{MaxTokenChecks: 2}, gated(g))
	const n = 6
	h := http.Header{"Authorization": {"Bearer " + e.token}}
	errs := make(chan error, n)
	for range n {
		go func() {
			s, err := tunnel.Dial(context.Background(), e.url, h, tunnel.DialOptions{})
			if err == nil {
				t.Cleanup(func() { s.Close() })
			}
			errs <- err
		}()
	}
	for i := range n {
		waitFor(t, "a full set of checks", func() bool { return g.inflight.Load() >= int64(min(2, n-i)) })
		g.gate <- struct{}{}
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if p := g.peak.Load(); p != 2 {
		t.Errorf("%d token checks ran at once, want 2", p)
	}
	waitFor(t, "every tunnel registered", func() bool { return e.srv.Tunnels() == n })
}

// A handshake that finds no free check slot within AuthTimeout is refused
// with a retryable 503.
func TestHandshakeWithoutCheckSlotIsRefused(t *testing.T) {
	g := &gatedAuth{gate: make(chan struct{})}
	e := startWith(t, discovery.AuthenticatorOptions{}, Options{MaxTokenChecks: 1, AuthTimeout: 300 * time.Millisecond}, gated(g))
	defer close(g.gate)
	h := http.Header{"Authorization": {"Bearer " + e.token}}
	go tunnel.Dial(context.Background(), e.url, h, tunnel.DialOptions{}) // holds the only slot
	waitFor(t, "the slot taken", func() bool { return g.inflight.Load() == 1 })
	_, err := tunnel.Dial(context.Background(), e.url, h, tunnel.DialOptions{})
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), msgBusy) {
		t.Errorf("handshake without a check slot: %v", err)
	}
	if st := e.srv.Stats(); st.RefusedUnavailable != 1 {
		t.Errorf("stats %+v", st)
	}
}

func (e *env) sessions() []*tunnel.Session {
	e.srv.mu.Lock()
	defer e.srv.mu.Unlock()
	var out []*tunnel.Session
	for _, ent := range e.srv.byAgent[e.agent] {
		out = append(out, ent.sess)
	}
	return out
}

// waitFor polls a condition that crosses goroutines with no event to wait
// on, bounded by a guard.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	guard := time.NewTimer(10 * time.Second)
	defer guard.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-guard.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// Between a handshake's accepted token and its tunnel's registration the
// agent already sees the tunnel up: Open says "being set up" (the node
// retries) rather than "no tunnel" (the node answers not connected).
func TestOpenDuringHandshakeAsksToRetry(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	if _, err := e.srv.Open(ctx, e.agent); !errors.Is(err, ErrNoTunnel) {
		t.Fatalf("Open with no tunnel: %v, want ErrNoTunnel", err)
	}
	e.srv.setHandshaking(e.agent, +1)
	if _, err := e.srv.Open(ctx, e.agent); !errors.Is(err, ErrHandshaking) {
		t.Fatalf("Open during a handshake: %v, want ErrHandshaking", err)
	}
	e.srv.setHandshaking(e.agent, -1)
	if _, err := e.srv.Open(ctx, e.agent); !errors.Is(err, ErrNoTunnel) {
		t.Fatalf("Open after the handshake failed: %v, want ErrNoTunnel", err)
	}
	var accepted atomic.Int64
	e.dial(t, &accepted)
	st, err := e.srv.Open(ctx, e.agent)
	if err != nil {
		t.Fatalf("Open with a tunnel: %v", err)
	}
	st.Close()
	e.srv.mu.Lock()
	left := len(e.srv.handshaking)
	e.srv.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d handshakes still counted after the tunnel was added", left)
	}
}
