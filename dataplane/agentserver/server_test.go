package agentserver

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
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
	agent int64
}

func start(t *testing.T) *env {
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
	auth, err := discovery.NewAgentAuthenticator(discovery.AuthenticatorOptions{Auth: cp.Auth})
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
	srv, err := New(Options{NodeID: "n1", Auth: auth, Registrar: reg})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { srv.Close(); hs.Close() })
	return &env{cp: cp, srv: srv, url: "ws" + strings.TrimPrefix(hs.URL, "http") + Path, reg: reg,
		token: tok.GetSecret(), agent: a.GetAgent().GetId()}
}

// dial opens an agent-side session that accepts (and holds) every stream,
// counting them in accepted, and waits until the server registered it.
func (e *env) dial(t *testing.T, accepted *atomic.Int64) *tunnel.Session {
	t.Helper()
	before := e.srv.Tunnels()
	h := http.Header{"Authorization": {"Bearer " + e.token}, HeaderAgentVersion: {"v1"}}
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
	st2 := e.srv.Stats()
	if st2.Accepted != 2 || st2.RefusedDraining != 1 || st2.Closed != 2 || st2.Streams.StreamsOpened != 1 || st2.Streams.StreamsClosed != 1 {
		t.Errorf("stats %+v", st2)
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
