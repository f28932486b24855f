package agent

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kas-project/kas/dataplane/tunnel"
	"github.com/kas-project/kas/internal/obs"
)

// guard bounds every wait of a test in real time, so a broken agent fails
// the test instead of hanging it. Nothing waits for it to pass.
const guard = 15 * time.Second

// testToken is the agent token the fake node accepts (agent ID 42).
const testToken = "kasagent_42_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"

// ---- fake clock ----

// fakeClock is a manual clock: time moves only on Advance.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers map[*fakeTimer]struct{}
	wake   chan struct{} // closed and replaced whenever timers change
}

func newFakeClock() *fakeClock {
	return &fakeClock{
		now:    time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC),
		timers: make(map[*fakeTimer]struct{}),
		wake:   make(chan struct{}),
	}
}

type fakeTimer struct {
	c    *fakeClock
	ch   chan time.Time
	when time.Time
	d    time.Duration
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	_, armed := t.c.timers[t]
	delete(t.c.timers, t)
	t.c.notifyLocked()
	return armed
}

func (c *fakeClock) notifyLocked() {
	close(c.wake)
	c.wake = make(chan struct{})
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, ch: make(chan time.Time, 1), when: c.now.Add(d), d: d}
	if d <= 0 {
		t.ch <- c.now
	} else {
		c.timers[t] = struct{}{}
	}
	c.notifyLocked()
	return t
}

// Advance moves time forward and fires every timer that is due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for t := range c.timers {
		if !t.when.After(c.now) {
			delete(c.timers, t)
			t.ch <- c.now
		}
	}
	c.notifyLocked()
}

// waitTimer waits until an armed timer's duration satisfies match and
// returns that duration.
func (c *fakeClock) waitTimer(t testing.TB, what string, match func(time.Duration) bool) time.Duration {
	t.Helper()
	deadline := time.NewTimer(guard)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		wake := c.wake
		var found []time.Duration
		for tm := range c.timers {
			if match(tm.d) {
				found = append(found, tm.d)
			}
		}
		var all []time.Duration
		for tm := range c.timers {
			all = append(all, tm.d)
		}
		c.mu.Unlock()
		if len(found) > 0 {
			return found[0]
		}
		select {
		case <-wake:
		case <-deadline.C:
			t.Fatalf("no %s timer armed; armed: %v", what, all)
		}
	}
}

func between(lo, hi time.Duration) func(time.Duration) bool {
	return func(d time.Duration) bool { return d >= lo && d <= hi }
}

// ---- fake dataplane node ----

// fakeNode is a dataplane node's agent endpoint: it checks the token and
// accepts tunnels with tunnel.Accept. pick chooses the node ID each
// accepted tunnel reports (a load balancer in front of several nodes).
type fakeNode struct {
	t        testing.TB
	srv      *httptest.Server
	attempts chan attempt

	mu      sync.Mutex
	pick    func() string
	refuse  func() (status int, retryAfter string) // nil or 0: accept
	live    []*nodeTunnel
	nextPos int
}

// attempt is one handshake the node saw.
type attempt struct {
	header http.Header
	remote string // the connection's client address
	status int
	tunnel *nodeTunnel // nil when refused
}

// nodeTunnel is the node's end of one tunnel.
type nodeTunnel struct {
	sess   *tunnel.Session
	nodeID string
	// liveBefore are the node's tunnels that were still open when this one
	// was accepted, before the 101 went out.
	liveBefore []*nodeTunnel
}

func newFakeNode(t testing.TB, tls bool) *fakeNode {
	n := &fakeNode{t: t, attempts: make(chan attempt, 100), pick: func() string { return "node-a" }}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+TunnelPath, n.handle)
	if tls {
		n.srv = httptest.NewTLSServer(mux)
	} else {
		n.srv = httptest.NewServer(mux)
	}
	t.Cleanup(func() {
		n.mu.Lock()
		live := n.live
		n.mu.Unlock()
		for _, nt := range live {
			nt.sess.Close()
		}
		n.srv.Close()
	})
	return n
}

func (n *fakeNode) url() string { return "ws" + strings.TrimPrefix(n.srv.URL, "http") }

func (n *fakeNode) handle(w http.ResponseWriter, r *http.Request) {
	a := attempt{header: r.Header.Clone(), remote: r.RemoteAddr}
	defer func() { n.attempts <- a }()
	n.mu.Lock()
	refuse, pick := n.refuse, n.pick
	n.mu.Unlock()
	if tok, ok := tunnel.BearerToken(r); !ok || tok != testToken {
		a.status = http.StatusUnauthorized
		http.Error(w, "unauthorized", a.status)
		return
	}
	if refuse != nil {
		if status, ra := refuse(); status != 0 {
			if ra != "" {
				w.Header().Set("Retry-After", ra)
			}
			a.status = status
			http.Error(w, http.StatusText(status), status)
			return
		}
	}
	nt := &nodeTunnel{nodeID: pick()}
	n.mu.Lock()
	for _, o := range n.live {
		if !isDone(o.sess.Done()) {
			nt.liveBefore = append(nt.liveBefore, o)
		}
	}
	n.mu.Unlock()
	w.Header().Set(NodeIDHeader, nt.nodeID)
	sess, err := tunnel.Accept(w, r, tunnel.AcceptOptions{})
	if err != nil {
		a.status = -1
		n.t.Errorf("fake node: accept: %v", err)
		return
	}
	nt.sess = sess
	n.mu.Lock()
	n.live = append(n.live, nt)
	n.mu.Unlock()
	a.status = http.StatusSwitchingProtocols
	a.tunnel = nt
}

// next returns the next handshake the node sees.
func (n *fakeNode) next(t testing.TB) attempt {
	t.Helper()
	select {
	case a := <-n.attempts:
		return a
	case <-time.After(guard):
		t.Fatal("the agent made no connection attempt")
		return attempt{}
	}
}

// nextTunnel returns the next tunnel the node accepts.
func (n *fakeNode) nextTunnel(t testing.TB) *nodeTunnel {
	t.Helper()
	a := n.next(t)
	if a.tunnel == nil {
		t.Fatalf("handshake answered %d, want a tunnel", a.status)
	}
	return a.tunnel
}

// noAttempt checks that no handshake is pending.
func (n *fakeNode) noAttempt(t testing.TB) {
	t.Helper()
	select {
	case a := <-n.attempts:
		t.Fatalf("unexpected connection attempt (status %d)", a.status)
	default:
	}
}

// client sends HTTP requests through the tunnel, one stream per
// connection, as the node does.
func (nt *nodeTunnel) client() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:        func(ctx context.Context, _, _ string) (net.Conn, error) { return nt.sess.Open(ctx) },
		DisableCompression: true,
	}}
}

func waitDone(t testing.TB, what string, c <-chan struct{}) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(guard):
		t.Fatalf("%s did not happen", what)
	}
}

// ---- the agent under test ----

type harness struct {
	a     *Agent
	clock *fakeClock
	logs  *syncBuffer
	node  *fakeNode
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func writeFile(t testing.TB, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// baseOptions are Options for an agent dialling node and forwarding to
// upstream: a fake clock and a random source that always draws 0 (no
// reconnect delay, tunnel ages at 80% of the maximum).
func baseOptions(t testing.TB, node *fakeNode, upstream string) (Options, *fakeClock, *syncBuffer) {
	clk := newFakeClock()
	logs := &syncBuffer{}
	log, err := obs.NewLogger(logs, "debug", obs.FormatJSON, false)
	if err != nil {
		t.Fatal(err)
	}
	return Options{
		KASAddress:    node.url(),
		TokenFile:     writeFile(t, "token", "  "+testToken+"\n"),
		Version:       "v1.2.3-test",
		KubeAPIURL:    upstream,
		KubeTokenFile: writeFile(t, "sa-token", "agent-sa-token\n"),
		Logger:        log,
		Clock:         clk,
		Rand:          func(int64) int64 { return 0 },
	}, clk, logs
}

// start runs an agent with o until the test ends.
func start(t testing.TB, o Options) *Agent {
	t.Helper()
	a, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(guard):
			t.Errorf("Run did not return after its context ended")
		}
	})
	return a
}

// newHarness starts an agent against a fake node and upstream; setup may
// change both before the agent starts.
func newHarness(t testing.TB, upstream http.Handler, setup func(*Options, *fakeNode)) *harness {
	t.Helper()
	node := newFakeNode(t, false)
	up := httptest.NewServer(upstream)
	t.Cleanup(up.Close)
	o, clk, logs := baseOptions(t, node, up.URL)
	if setup != nil {
		setup(&o, node)
	}
	return &harness{a: start(t, o), clock: clk, logs: logs, node: node}
}

func waitTunnels(t testing.TB, a *Agent, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	if err := a.WaitTunnels(ctx, n); err != nil {
		t.Fatal(err)
	}
}
