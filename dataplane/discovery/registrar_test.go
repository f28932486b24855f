package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"

	"github.com/kas-project/kas/controlplane"
	dpv1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
	"github.com/kas-project/kas/internal/cptest"
)

const (
	testHeartbeat  = 5 * time.Second
	testMaxBackoff = time.Second
)

// spyNodes wraps the real NodeService client: it records tunnel batches,
// can fail chosen calls and can hold a call in flight.
type spyNodes struct {
	dataplanev1connect.NodeServiceClient
	bc broadcaster

	mu      sync.Mutex
	calls   map[string]int
	batches []spyBatch
	fail    map[string]int           // method → calls left to fail
	code    connect.Code             // how they fail
	holds   map[string]chan struct{} // method → closed to let held calls through
	waiting map[string]int           // method → calls held now
}

type spyBatch struct {
	open bool
	ids  []string
}

func newSpy(c dataplanev1connect.NodeServiceClient) *spyNodes {
	return &spyNodes{NodeServiceClient: c, calls: map[string]int{}, fail: map[string]int{},
		holds: map[string]chan struct{}{}, waiting: map[string]int{}}
}

func (s *spyNodes) enter(ctx context.Context, method string) error {
	s.mu.Lock()
	s.calls[method]++
	fail := s.fail[method] > 0
	if fail {
		s.fail[method]--
	}
	hold := s.holds[method]
	if hold != nil {
		s.waiting[method]++
	}
	s.mu.Unlock()
	s.bc.Notify()
	if hold != nil {
		defer func() {
			s.mu.Lock()
			s.waiting[method]--
			s.mu.Unlock()
		}()
		select {
		case <-hold:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if fail {
		return connect.NewError(s.code, errors.New("injected failure"))
	}
	return nil
}

func (s *spyNodes) Calls(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method]
}

func (s *spyNodes) Batches() []spyBatch {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]spyBatch(nil), s.batches...)
}

func (s *spyNodes) FailNext(method string, n int, code connect.Code) {
	s.mu.Lock()
	s.fail[method] += n
	s.code = code
	s.mu.Unlock()
}

// Hold makes calls of method wait; the returned func lets them through.
func (s *spyNodes) Hold(method string) (release func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.holds[method] = ch
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.holds, method)
		s.mu.Unlock()
		close(ch)
	}
}

func (s *spyNodes) WaitHeld(t testing.TB, method string) {
	t.Helper()
	s.bc.WaitFor(t, method+" held", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.waiting[method] > 0
	})
}

func (s *spyNodes) WaitCalls(t testing.TB, method string, n int) {
	t.Helper()
	s.bc.WaitFor(t, fmt.Sprintf("%d %s calls", n, method), func() bool { return s.Calls(method) >= n })
}

func (s *spyNodes) record(open bool, ts []*dpv1.Tunnel) {
	b := spyBatch{open: open}
	for _, t := range ts {
		b.ids = append(b.ids, t.GetTunnelId())
	}
	s.mu.Lock()
	s.batches = append(s.batches, b)
	s.mu.Unlock()
}

func (s *spyNodes) RegisterNode(ctx context.Context, r *dpv1.RegisterNodeRequest) (*dpv1.RegisterNodeResponse, error) {
	if err := s.enter(ctx, "RegisterNode"); err != nil {
		return nil, err
	}
	return s.NodeServiceClient.RegisterNode(ctx, r)
}

func (s *spyNodes) Heartbeat(ctx context.Context, r *dpv1.HeartbeatRequest) (*dpv1.HeartbeatResponse, error) {
	if err := s.enter(ctx, "Heartbeat"); err != nil {
		return nil, err
	}
	return s.NodeServiceClient.Heartbeat(ctx, r)
}

func (s *spyNodes) RegisterTunnels(ctx context.Context, r *dpv1.RegisterTunnelsRequest) (*dpv1.RegisterTunnelsResponse, error) {
	if err := s.enter(ctx, "RegisterTunnels"); err != nil {
		return nil, err
	}
	resp, err := s.NodeServiceClient.RegisterTunnels(ctx, r)
	if err == nil {
		s.record(true, r.GetTunnels())
	}
	return resp, err
}

func (s *spyNodes) UnregisterTunnels(ctx context.Context, r *dpv1.UnregisterTunnelsRequest) (*dpv1.UnregisterTunnelsResponse, error) {
	if err := s.enter(ctx, "UnregisterTunnels"); err != nil {
		return nil, err
	}
	resp, err := s.NodeServiceClient.UnregisterTunnels(ctx, r)
	if err == nil {
		s.record(false, r.GetTunnels())
	}
	return resp, err
}

// regHarness is a Registrar against a real control plane on a fake clock.
type regHarness struct {
	env  *cptest.Env
	clk  *fakeClock
	spy  *spyNodes
	logs *logRecorder
	reg  *Registrar
	done chan error
	stop context.CancelFunc
}

func startControlPlane(t *testing.T, clk *fakeClock) *cptest.Env {
	t.Helper()
	return cptest.Start(t, func(o *controlplane.Options) {
		o.Now = clk.Now
		o.LeaseTTL = 4 * testHeartbeat
		o.HeartbeatInterval = testHeartbeat
	})
}

func newHarness(t *testing.T, env *cptest.Env, clk *fakeClock, client dataplanev1connect.NodeServiceClient, cpURL string) *regHarness {
	t.Helper()
	h := &regHarness{env: env, clk: clk, spy: newSpy(client), logs: &logRecorder{}, done: make(chan error, 1)}
	reg, err := NewRegistrar(RegistrarOptions{
		NodeID:          "node-a",
		PrivateURL:      "grpc://10.0.0.1:8155",
		Version:         "v-test",
		Nodes:           h.spy,
		ControlPlaneURL: cpURL,
		Logger:          slog.New(h.logs),
		Clock:           clk,
		MinBackoff:      100 * time.Millisecond,
		MaxBackoff:      testMaxBackoff,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.reg = reg
	t.Cleanup(func() {
		if t.Failed() {
			h.logs.Dump(t)
		}
	})
	return h
}

func (h *regHarness) Start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h.stop = cancel
	go func() { h.done <- h.reg.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-h.done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func (h *regHarness) WaitRegistered(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitGuard)
	defer cancel()
	if err := h.reg.wait(ctx, func() bool { return h.reg.Registered() }); err != nil {
		t.Fatalf("not registered: %v", err)
	}
}

// WaitBeat waits until the lease was renewed at the fake clock's current time.
func (h *regHarness) WaitBeat(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitGuard)
	defer cancel()
	if err := h.reg.wait(ctx, func() bool { return h.reg.lastBeat.Equal(h.clk.Now()) }); err != nil {
		t.Fatalf("no heartbeat: %v", err)
	}
}

func (h *regHarness) WaitSynced(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitGuard)
	defer cancel()
	if err := h.reg.WaitSynced(ctx); err != nil {
		t.Fatalf("WaitSynced: %v (pending %d)", err, h.reg.Pending())
	}
}

// openTunnels returns the node's open tunnels as the control plane stores them.
func openTunnels(t *testing.T, env *cptest.Env, nodeID string) map[string]int64 {
	t.Helper()
	rows, err := env.Server.Store().Pool().Query(context.Background(),
		`SELECT tunnel_id, agent_id FROM tunnels WHERE node_id = $1 AND open`, nodeID)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var id string
		var agent int64
		if err := rows.Scan(&id, &agent); err != nil {
			t.Fatal(err)
		}
		out[id] = agent
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

type nodeRow struct {
	bootID, privateURL, version string
	draining                    bool
	heartbeatAt                 time.Time
}

func getNode(t *testing.T, env *cptest.Env, nodeID string) (nodeRow, bool) {
	t.Helper()
	var n nodeRow
	err := env.Server.Store().Pool().QueryRow(context.Background(),
		`SELECT boot_id, private_url, version, draining, heartbeat_at FROM nodes WHERE node_id = $1`, nodeID).
		Scan(&n.bootID, &n.privateURL, &n.version, &n.draining, &n.heartbeatAt)
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return n, false
		}
		t.Fatal(err)
	}
	return n, true
}

func TestRegistrarRegistersAndHeartbeats(t *testing.T) {
	clk := newFakeClock()
	env := startControlPlane(t, clk)
	h := newHarness(t, env, clk, env.Nodes, env.URL)
	if h.reg.Registered() {
		t.Fatal("registered before Run")
	}
	h.Start(t)
	h.WaitRegistered(t)

	n, ok := getNode(t, env, "node-a")
	if !ok {
		t.Fatal("no node row after registration")
	}
	if n.bootID != h.reg.BootID() || n.privateURL != "grpc://10.0.0.1:8155" || n.version != "v-test" || n.draining {
		t.Fatalf("node row = %+v", n)
	}
	if len(h.reg.BootID()) != 32 {
		t.Fatalf("boot ID %q is not 16 random bytes in hex", h.reg.BootID())
	}
	for i := 1; i <= 3; i++ {
		clk.WaitTimers(t, 1) // the heartbeat timer
		clk.Advance(testHeartbeat - time.Millisecond)
		if got := h.spy.Calls("Heartbeat"); got != i-1 {
			t.Fatalf("heartbeat before the interval: %d calls", got)
		}
		if age := h.reg.HeartbeatAge(); age != testHeartbeat-time.Millisecond {
			t.Fatalf("HeartbeatAge() = %v", age)
		}
		clk.Advance(time.Millisecond)
		h.spy.WaitCalls(t, "Heartbeat", i)
		h.WaitBeat(t)
		n, _ := getNode(t, env, "node-a")
		if !n.heartbeatAt.Equal(clk.Now()) {
			t.Fatalf("heartbeat_at = %v, want %v", n.heartbeatAt, clk.Now())
		}
	}
	if !h.reg.Registered() {
		t.Fatal("not registered after heartbeats")
	}
}

func TestRegistrarBatchesAndResyncsAfterNodeLost(t *testing.T) {
	clk := newFakeClock()
	env := startControlPlane(t, clk)
	h := newHarness(t, env, clk, env.Nodes, env.URL)

	const n = 2500
	for i := range n {
		h.reg.TunnelOpened(int64(100+i%7), fmt.Sprintf("t%04d", i), "v1")
	}
	h.Start(t)
	h.WaitSynced(t)

	got := openTunnels(t, env, "node-a")
	if len(got) != n {
		t.Fatalf("%d open tunnels stored, want %d", len(got), n)
	}
	if got["t0008"] != 101 {
		t.Fatalf("t0008 agent = %d, want 101", got["t0008"])
	}
	batches := h.spy.Batches()
	if len(batches) != 3 || len(batches[0].ids) != 1000 || len(batches[1].ids) != 1000 || len(batches[2].ids) != 500 {
		t.Fatalf("batches of %v, want 1000, 1000, 500", sizes(batches))
	}
	if batches[0].ids[0] != "t0000" || batches[2].ids[499] != "t2499" {
		t.Fatalf("batches not in sequence order: first %s, last %s", batches[0].ids[0], batches[2].ids[499])
	}

	// Close 1200 tunnels: two UnregisterTunnels calls at most 1000 each.
	for i := range 1200 {
		h.reg.TunnelClosed(fmt.Sprintf("t%04d", i))
	}
	h.WaitSynced(t)
	if got := openTunnels(t, env, "node-a"); len(got) != n-1200 {
		t.Fatalf("%d open tunnels after closes, want %d", len(got), n-1200)
	}
	for _, b := range h.spy.Batches()[3:] {
		if b.open || len(b.ids) > MaxBatch {
			t.Fatalf("unexpected batch after closes: open=%v size=%d", b.open, len(b.ids))
		}
	}
	if h.reg.Pending() != 0 {
		t.Fatalf("pending = %d", h.reg.Pending())
	}

	// The control plane loses the node: the next heartbeat gets NotFound,
	// the node registers again and re-sends every open tunnel.
	if _, err := env.Server.Store().Pool().Exec(context.Background(), `DELETE FROM nodes`); err != nil {
		t.Fatal(err)
	}
	if got := openTunnels(t, env, "node-a"); len(got) != 0 {
		t.Fatalf("tunnels survived the node row: %d", len(got))
	}
	clk.WaitTimers(t, 1)
	clk.Advance(testHeartbeat)
	h.spy.WaitCalls(t, "RegisterNode", 2)
	h.WaitSynced(t)
	got = openTunnels(t, env, "node-a")
	if len(got) != n-1200 {
		t.Fatalf("%d open tunnels after re-registration, want %d", len(got), n-1200)
	}
	if _, ok := got["t1199"]; ok {
		t.Fatal("closed tunnel t1199 came back")
	}
	if h.logs.Count("lost this node's registration") != 1 {
		t.Fatal("no log about the lost registration")
	}
}

func sizes(bs []spyBatch) []int {
	var out []int
	for _, b := range bs {
		out = append(out, len(b.ids))
	}
	return out
}

func TestRegistrarCloseWinsOverOpen(t *testing.T) {
	clk := newFakeClock()
	env := startControlPlane(t, clk)
	h := newHarness(t, env, clk, env.Nodes, env.URL)

	// Opened and closed before anything was sent: no call at all.
	h.reg.TunnelOpened(1, "gone", "v1")
	h.reg.TunnelClosed("gone")
	h.reg.TunnelClosed("never-opened")
	h.Start(t)
	h.WaitSynced(t)
	if got := h.spy.Calls("RegisterTunnels") + h.spy.Calls("UnregisterTunnels"); got != 0 {
		t.Fatalf("%d tunnel calls for a tunnel that never needed one", got)
	}

	// The close arrives while the open is in flight: the open lands, then
	// the close, coalesced with an open that came meanwhile.
	release := h.spy.Hold("RegisterTunnels")
	h.reg.TunnelOpened(1, "a", "v1")
	h.spy.WaitHeld(t, "RegisterTunnels")
	h.reg.TunnelClosed("a")
	h.reg.TunnelOpened(2, "b", "v1")
	h.reg.TunnelOpened(2, "c", "v1")
	release()
	h.WaitSynced(t)
	got := openTunnels(t, env, "node-a")
	if _, ok := got["a"]; ok || len(got) != 2 {
		t.Fatalf("open tunnels = %v, want b and c", got)
	}
	want := []string{"open [a]", "close [a]", "open [b c]"}
	var seen []string
	for _, b := range h.spy.Batches() {
		kind := "close"
		if b.open {
			kind = "open"
		}
		seen = append(seen, fmt.Sprintf("%s %v", kind, b.ids))
	}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("batches %v, want %v", seen, want)
	}

	// A failed call is retried after a backoff without losing events or
	// letting an older state win.
	h.spy.FailNext("UnregisterTunnels", 1, connect.CodeUnavailable)
	h.reg.TunnelClosed("b")
	h.spy.WaitCalls(t, "UnregisterTunnels", 2)
	h.reg.TunnelOpened(3, "d", "v1")
	h.reg.TunnelClosed("c")
	clk.WaitTimers(t, 2) // heartbeat + flush backoff
	clk.Advance(testMaxBackoff)
	h.WaitSynced(t)
	got = openTunnels(t, env, "node-a")
	if len(got) != 1 || got["d"] != 3 {
		t.Fatalf("open tunnels = %v, want only d", got)
	}
	if h.logs.Count("send tunnel events", "injected failure") != 1 {
		t.Fatal("the failed flush was not logged")
	}
}

func TestRegistrarRejectsBadEventsWithoutWedging(t *testing.T) {
	clk := newFakeClock()
	env := startControlPlane(t, clk)
	h := newHarness(t, env, clk, env.Nodes, env.URL)
	h.Start(t)
	h.WaitRegistered(t)

	// Invalid events never reach the queue.
	h.reg.TunnelOpened(0, "no-agent", "v1")
	h.reg.TunnelOpened(1, "", "v1")
	h.reg.TunnelOpened(1, strings.Repeat("x", 129), "v1")
	h.reg.TunnelOpened(1, "nul\x00", "v1")
	h.reg.TunnelOpened(1, "bad\xff", "v1")
	if h.reg.Pending() != 0 || h.logs.Count("ERROR", "invalid ID") != 5 {
		t.Fatalf("pending %d after invalid events", h.reg.Pending())
	}
	// Over-long or non-UTF-8 agent versions are cut and cleaned.
	h.reg.TunnelOpened(1, "long", "v"+strings.Repeat("é", 100))
	h.reg.TunnelOpened(1, "bad-utf8", "v1\xff\x00\n\xfe")
	h.WaitSynced(t)
	var versions []string
	rows, err := env.Server.Store().Pool().Query(context.Background(),
		`SELECT agent_version FROM tunnels WHERE node_id = 'node-a' ORDER BY tunnel_id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		versions = append(versions, v)
	}
	if rows.Err() != nil || len(versions) != 2 || versions[0] != "v1" ||
		versions[1] != "v"+strings.Repeat("é", 63) {
		t.Fatalf("agent versions %q, %v", versions, rows.Err())
	}

	// A batch the control plane rejects is dropped, not retried forever.
	calls := h.spy.Calls("RegisterTunnels")
	h.spy.FailNext("RegisterTunnels", 1, connect.CodeInvalidArgument)
	h.reg.TunnelOpened(1, "rejected", "v1")
	h.spy.WaitCalls(t, "RegisterTunnels", calls+1)
	h.reg.TunnelOpened(1, "after", "v1")
	h.WaitSynced(t)
	got := openTunnels(t, env, "node-a")
	if _, ok := got["after"]; !ok || len(got) != 3 {
		t.Fatalf("open tunnels %v", got)
	}
	if h.logs.Count("ERROR", "rejected tunnel events; dropping them") != 1 {
		t.Fatal("drop not logged")
	}
}

func TestRegistrarStaleWriteCannotReopen(t *testing.T) {
	// The control plane fences by sequence: re-sending an old open after
	// the close changes nothing.
	clk := newFakeClock()
	env := startControlPlane(t, clk)
	h := newHarness(t, env, clk, env.Nodes, env.URL)
	h.Start(t)
	h.reg.TunnelOpened(1, "x", "v1")
	h.WaitSynced(t)
	h.reg.TunnelClosed("x")
	h.WaitSynced(t)
	_, err := env.Nodes.RegisterTunnels(context.Background(), &dpv1.RegisterTunnelsRequest{
		NodeId: "node-a", BootId: h.reg.BootID(), Tunnels: []*dpv1.Tunnel{{TunnelId: "x", AgentId: 1, Seq: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := openTunnels(t, env, "node-a"); len(got) != 0 {
		t.Fatalf("stale open resurrected: %v", got)
	}
}

// switchDialer dials whatever address target holds, whatever the URL says.
type switchDialer struct {
	target atomic.Value // string
}

func (d *switchDialer) DialContext(ctx context.Context, network, _ string) (net.Conn, error) {
	var nd net.Dialer
	return nd.DialContext(ctx, network, d.target.Load().(string))
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestRegistrarKeepsRetryingWhileControlPlaneUnreachable(t *testing.T) {
	clk := newFakeClock()
	env := startControlPlane(t, clk)
	up, err := url.Parse(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	dialer := &switchDialer{}
	dialer.target.Store(closedAddr(t))
	hc := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true}}
	t.Cleanup(hc.CloseIdleConnections)
	const cpURL = "http://kas-controlplane.test:8153"
	client := dataplanev1connect.NewNodeServiceClient(hc, cpURL, env.DataplaneOpt)
	h := newHarness(t, env, clk, client, cpURL)

	h.reg.TunnelOpened(7, "early", "v1")
	h.Start(t)
	msg := "cannot reach the control plane at " + cpURL + "; check dataplane.controlplane_url"
	for i := 1; i <= 4; i++ {
		h.logs.WaitCount(t, i, "ERROR", msg, "op=register node", "connection refused")
		clk.WaitTimers(t, 1) // the backoff
		if h.reg.Registered() {
			t.Fatal("registered while unreachable")
		}
		clk.Advance(testMaxBackoff)
	}
	// Tunnels keep being accepted meanwhile.
	h.reg.TunnelOpened(7, "meanwhile", "v1")

	dialer.target.Store(up.Host)
	clk.WaitTimers(t, 1)
	clk.Advance(testMaxBackoff)
	h.WaitSynced(t)
	if got := openTunnels(t, env, "node-a"); len(got) != 2 {
		t.Fatalf("open tunnels after recovery = %v", got)
	}

	// Unreachable again after registration: heartbeats fail, the node
	// stays registered and keeps its tunnels, and recovers.
	dialer.target.Store(closedAddr(t))
	clk.WaitTimers(t, 1)
	clk.Advance(testHeartbeat)
	h.logs.WaitCount(t, 1, "WARN", msg, "op=heartbeat")
	if !h.reg.Registered() {
		t.Fatal("a failed heartbeat unregistered the node")
	}
	h.reg.TunnelOpened(7, "during-outage", "v1")
	h.logs.WaitCount(t, 1, "WARN", msg, "op=send tunnel events")
	clk.WaitTimers(t, 2) // heartbeat retry + flush backoff
	dialer.target.Store(up.Host)
	clk.Advance(testHeartbeat)
	h.WaitSynced(t)
	h.WaitBeat(t)
	if got := openTunnels(t, env, "node-a"); len(got) != 3 {
		t.Fatalf("open tunnels after the second outage = %v", got)
	}
	if age := h.reg.HeartbeatAge(); age != 0 {
		t.Fatalf("HeartbeatAge() = %v after recovery", age)
	}
}

func TestRegistrarDrainAndDeregister(t *testing.T) {
	clk := newFakeClock()
	env := startControlPlane(t, clk)
	h := newHarness(t, env, clk, env.Nodes, env.URL)
	h.Start(t)
	h.WaitRegistered(t)
	h.reg.TunnelOpened(1, "a", "v1")
	h.WaitSynced(t)

	ctx := context.Background()
	if err := h.reg.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := getNode(t, env, "node-a"); !n.draining {
		t.Fatal("node not draining after Drain")
	}

	// Draining survives a lost registration.
	if _, err := env.Server.Store().Pool().Exec(ctx, `DELETE FROM nodes`); err != nil {
		t.Fatal(err)
	}
	clk.WaitTimers(t, 1)
	clk.Advance(testHeartbeat)
	h.spy.WaitCalls(t, "RegisterNode", 2)
	h.WaitSynced(t)
	if n, _ := getNode(t, env, "node-a"); !n.draining {
		t.Fatal("draining lost after re-registration")
	}

	if err := h.reg.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-h.done:
		h.done <- err // for the cleanup
	default:
		t.Fatal("Run still running after Deregister")
	}
	if _, ok := getNode(t, env, "node-a"); ok {
		t.Fatal("node row survived Deregister")
	}
	if h.reg.Registered() {
		t.Fatal("Registered() after Deregister")
	}
	if err := h.reg.Run(ctx); err == nil {
		t.Fatal("Run after Deregister succeeded")
	}
}

func TestRegistrarOptionsValidate(t *testing.T) {
	_, err := NewRegistrar(RegistrarOptions{MinBackoff: time.Second, MaxBackoff: time.Millisecond})
	want := "registrar: node ID must be 1 to 253 characters\n" +
		"registrar: private URL is required\n" +
		"registrar: NodeService client is required\n" +
		"registrar: max backoff must not be below min backoff"
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v, want %q", err, want)
	}
}

func TestBackoffFullJitter(t *testing.T) {
	b := &backoff{min: 100 * time.Millisecond, max: time.Second}
	ceilings := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, c := range ceilings {
		for range 50 {
			bb := *b
			if d := bb.next(); d < 0 || d >= c*time.Millisecond {
				t.Fatalf("attempt %d: delay %v outside [0, %vms)", i, d, c)
			}
		}
		b.next()
	}
	b.n = 1000 // no overflow after many attempts
	if d := b.next(); d < 0 || d >= time.Second {
		t.Fatalf("delay %v after many attempts", d)
	}
	b.reset()
	if b.n != 0 {
		t.Fatal("reset did not reset")
	}
}
