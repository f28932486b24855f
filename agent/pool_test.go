package agent

import (
	"context"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func okHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
}

func get(t testing.TB, nt *nodeTunnel, path string) string {
	t.Helper()
	resp, err := nt.client().Get("http://agent" + path)
	if err != nil {
		t.Fatalf("GET %s through the tunnel: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestKeepsTunnelsOnDifferentNodes(t *testing.T) {
	picks := make(chan string, 10)
	for _, n := range []string{"node-a", "node-a", "node-b"} {
		picks <- n
	}
	h := newHarness(t, okHandler(), func(o *Options, n *fakeNode) { // default: 2 tunnels
		n.pick = func() string { return <-picks }
	})

	first, second := h.node.nextTunnel(t), h.node.nextTunnel(t)
	waitTunnels(t, h.a, 2)
	if ns := h.a.Nodes(); !slices.Equal(ns, []string{"node-a", "node-a"}) {
		t.Fatalf("Nodes() = %v", ns)
	}
	// The younger tunnel tries again for another node after NodeRetry
	// (-20% jitter with this random source); only one tries.
	d := h.clock.waitTimer(t, "node retry", between(time.Second, time.Minute))
	if d != 8*time.Second {
		t.Errorf("node retry after %v, want 8s", d)
	}
	h.node.noAttempt(t)
	h.clock.Advance(d)
	probe := h.node.nextTunnel(t)
	if probe.nodeID != "node-b" {
		t.Fatalf("probe on %s", probe.nodeID)
	}
	// It keeps the probe and drains the tunnel it replaces.
	select {
	case <-first.sess.Done():
	case <-second.sess.Done():
	case <-time.After(guard):
		t.Fatal("neither node-a tunnel was closed after the move to node-b")
	}
	if ns := h.a.Nodes(); !slices.Equal(ns, []string{"node-a", "node-b"}) {
		t.Errorf("Nodes() = %v, want [node-a node-b]", ns)
	}
	if get(t, probe, "/version") != "ok" {
		t.Error("the moved tunnel does not serve")
	}
	if n := counterValue(t, h.a.m.replacements.WithLabelValues(reasonNode)); n != 1 {
		t.Errorf("replacements{reason=node} = %v", n)
	}
}

func TestStopsLookingForAnotherNodeAfterNodeRetries(t *testing.T) {
	h := newHarness(t, okHandler(), nil) // every tunnel lands on node-a
	h.node.nextTunnel(t)
	h.node.nextTunnel(t)
	for _, want := range []time.Duration{8 * time.Second, 16 * time.Second, 32 * time.Second} {
		d := h.clock.waitTimer(t, "node retry", between(time.Second, 5*time.Minute))
		if d != want {
			t.Fatalf("node retry after %v, want %v", d, want)
		}
		h.clock.Advance(d)
		probe := h.node.nextTunnel(t)
		waitDone(t, "the probe on the same node closing", probe.sess.Done())
	}
	// Three tries used up: only the tunnels' age timers are left.
	h.clock.waitTimer(t, "max age", between(20*time.Minute, time.Hour))
	h.clock.mu.Lock()
	for tm := range h.clock.timers {
		if tm.d < 20*time.Minute && tm.d != DefaultDrainTimeout {
			t.Errorf("timer of %v still armed after the node retries were used up", tm.d)
		}
	}
	h.clock.mu.Unlock()
	h.node.noAttempt(t)
	waitTunnels(t, h.a, 2)
}

func TestGoAwayOpensReplacementBeforeOldCloses(t *testing.T) {
	arrived := make(chan struct{})
	release := make(chan struct{})
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(arrived)
			<-release
		}
		io.WriteString(w, "done")
	}), func(o *Options, n *fakeNode) { o.Tunnels = 1 })
	old := h.node.nextTunnel(t)
	waitTunnels(t, h.a, 1)

	slow := make(chan string, 1)
	go func() {
		resp, err := old.client().Get("http://agent/slow")
		if err != nil {
			slow <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		slow <- string(b)
	}()
	<-arrived

	old.sess.GoAway() // the node drains
	repl := h.node.nextTunnel(t)
	if !slices.Contains(repl.liveBefore, old) {
		t.Fatal("the old tunnel closed before the replacement was opened")
	}
	waitTunnels(t, h.a, 1)
	if isDone(old.sess.Done()) {
		t.Fatal("the old tunnel closed with a request in flight")
	}
	if get(t, repl, "/fast") != "done" {
		t.Error("the replacement does not serve")
	}
	close(release)
	if got := <-slow; got != "done" {
		t.Errorf("request in flight during the drain = %q", got)
	}
	waitDone(t, "the drained tunnel closing", old.sess.Done())
	if isDone(repl.sess.Done()) {
		t.Error("the replacement closed")
	}
	if n := counterValue(t, h.a.m.replacements.WithLabelValues(reasonGoneAway)); n != 1 {
		t.Errorf("replacements{reason=goaway} = %v", n)
	}
}

func TestReplacesTunnelsAtMaxAge(t *testing.T) {
	h := newHarness(t, okHandler(), func(o *Options, n *fakeNode) { o.Tunnels = 1 })
	old := h.node.nextTunnel(t)
	// 30m -20%: this random source draws the low end of the jitter.
	d := h.clock.waitTimer(t, "max age", between(time.Minute, time.Hour))
	if d != 24*time.Minute {
		t.Fatalf("max age timer %v, want 24m", d)
	}
	h.node.noAttempt(t)
	h.clock.Advance(d)
	repl := h.node.nextTunnel(t)
	if !slices.Contains(repl.liveBefore, old) {
		t.Fatal("the old tunnel closed before the replacement was opened")
	}
	waitDone(t, "the old tunnel closing", old.sess.Done())
	if get(t, repl, "/") != "ok" {
		t.Error("the replacement does not serve")
	}
	h.clock.waitTimer(t, "the replacement's max age", func(d time.Duration) bool { return d == 24*time.Minute })
	if n := counterValue(t, h.a.m.replacements.WithLabelValues(reasonMaxAge)); n != 1 {
		t.Errorf("replacements{reason=max_age} = %v", n)
	}
}

func TestRejectedTokenBacksOffToTheMaximum(t *testing.T) {
	h := newHarness(t, okHandler(), func(o *Options, n *fakeNode) {
		o.Tunnels = 1
		o.TokenFile = writeFile(t, "bad-token", "kasagent_42_wrong\n")
		o.Rand = func(n int64) int64 { return n - 1 }
	})
	for i := range 3 {
		if a := h.node.next(t); a.status != http.StatusUnauthorized {
			t.Fatalf("attempt %d: status %d", i, a.status)
		}
		d := h.clock.waitTimer(t, "backoff", between(DefaultMaxBackoff/2, DefaultMaxBackoff))
		h.node.noAttempt(t) // it waits for the timer
		h.clock.Advance(d)
	}
	h.node.next(t)
	h.clock.waitTimer(t, "backoff", between(DefaultMaxBackoff/2, DefaultMaxBackoff)) // the attempt is counted
	if n := counterValue(t, h.a.m.connects.WithLabelValues("unauthorized")); n != 4 {
		t.Errorf("connects{result=unauthorized} = %v, want 4", n)
	}
	logs := h.logs.String()
	if !strings.Contains(logs, "refused the agent token") || !strings.Contains(logs, "--token-file") {
		t.Errorf("no clear log line about the token:\n%s", logs)
	}
	if strings.Contains(logs, "kasagent_42_wrong") {
		t.Errorf("the token was logged:\n%s", logs)
	}
	rec := httptest.NewRecorder()
	h.a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("/readyz without a tunnel = %d", rec.Code)
	}
}

func TestUnavailableNodeIsRetriedAfterRetryAfter(t *testing.T) {
	var refusals atomic.Int32
	refusals.Store(2)
	h := newHarness(t, okHandler(), func(o *Options, n *fakeNode) {
		o.Tunnels = 1
		n.refuse = func() (int, string) {
			if refusals.Add(-1) >= 0 {
				return http.StatusServiceUnavailable, "20"
			}
			return 0, ""
		}
	})
	first := h.node.next(t)
	if first.status != http.StatusServiceUnavailable {
		t.Fatalf("first attempt: %d", first.status)
	}
	// Backoff alone would retry at once (this random source draws 0);
	// Retry-After holds it back.
	d := h.clock.waitTimer(t, "Retry-After", between(time.Second, time.Minute))
	if d != 20*time.Second {
		t.Fatalf("retry after %v, want 20s", d)
	}
	h.node.noAttempt(t)
	h.clock.Advance(d)
	second := h.node.next(t)
	if second.status != http.StatusServiceUnavailable {
		t.Fatalf("second attempt: %d", second.status)
	}
	h.clock.Advance(h.clock.waitTimer(t, "Retry-After", between(time.Second, time.Minute)))
	third := h.node.next(t)
	if third.tunnel == nil {
		t.Fatalf("third attempt: %d", third.status)
	}
	// Each attempt on a connection of its own: through a load balancer, a
	// refused one may reach another node.
	if first.remote == second.remote || second.remote == third.remote {
		t.Errorf("attempts from %s, %s, %s: a refused handshake's connection was reused", first.remote, second.remote, third.remote)
	}
	waitTunnels(t, h.a, 1)
	if n := counterValue(t, h.a.m.connects.WithLabelValues("unavailable")); n != 2 {
		t.Errorf("connects{result=unavailable} = %v", n)
	}
}

func TestBackoffResetsOnlyAfterAHealthyTunnel(t *testing.T) {
	h := newHarness(t, okHandler(), func(o *Options, n *fakeNode) {
		o.Tunnels = 1
		o.Rand = func(n int64) int64 { return n / 2 }
	})
	nt := h.node.nextTunnel(t)
	// Tunnels that die young: the delay grows (half of 1s, 2s, 4s).
	for _, want := range []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second} {
		nt.sess.Close()
		d := h.clock.waitTimer(t, "reconnect", between(time.Millisecond, time.Minute))
		if d != want {
			t.Fatalf("reconnect after %v, want %v", d, want)
		}
		h.node.noAttempt(t)
		h.clock.Advance(d)
		nt = h.node.nextTunnel(t)
	}
	// A tunnel that stayed up for HealthyAfter resets the backoff.
	waitTunnels(t, h.a, 1)
	h.clock.Advance(DefaultHealthyAfter)
	nt.sess.Close()
	if d := h.clock.waitTimer(t, "reconnect", between(time.Millisecond, time.Minute)); d != 500*time.Millisecond {
		t.Fatalf("reconnect after a healthy tunnel after %v, want 500ms", d)
	}
}

func TestReadinessMetricsAndObservabilityListener(t *testing.T) {
	var refused atomic.Bool
	refused.Store(true)
	h := newHarness(t, okHandler(), func(o *Options, n *fakeNode) {
		o.Tunnels = 1
		o.ObservabilityListen = "127.0.0.1:0"
		n.refuse = func() (int, string) {
			if refused.Load() {
				return http.StatusServiceUnavailable, "5"
			}
			return 0, ""
		}
	})
	base := "http://" + h.a.ObservabilityAddr().String()
	fetch := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := fetch("/livez"); code != 200 {
		t.Errorf("/livez = %d", code)
	}
	if a := h.node.next(t); a.status != http.StatusServiceUnavailable {
		t.Fatalf("first attempt: %d", a.status)
	}
	if code, body := fetch("/readyz"); code != 503 || !strings.Contains(body, "no tunnel") {
		t.Errorf("/readyz before a tunnel = %d %q", code, body)
	}
	select {
	case <-h.a.Ready():
		t.Error("Ready() closed before a tunnel was up")
	default:
	}
	refused.Store(false)
	h.clock.Advance(h.clock.waitTimer(t, "Retry-After", between(time.Second, time.Minute)))
	nt := h.node.nextTunnel(t)
	waitDone(t, "Ready()", h.a.Ready())
	if code, _ := fetch("/readyz"); code != 200 {
		t.Errorf("/readyz with a tunnel = %d", code)
	}
	if get(t, nt, "/api") != "ok" {
		t.Error("request failed")
	}
	// The request counter moves just after the handler returns, which may
	// be after the caller read the response: wait for it.
	var metrics string
	deadline := time.Now().Add(guard)
	for {
		_, metrics = fetch("/metrics")
		if strings.Contains(metrics, `kas_http_requests_total{code="200",method="get",server="agentk"} 1`) || time.Now().After(deadline) {
			break
		}
		runtime.Gosched()
	}
	for _, want := range []string{
		`agentk_tunnels{state="active"} 1`,
		`agentk_tunnels{state="draining"} 0`,
		`agentk_tunnel_connects_total{result="ok"} 1`,
		`agentk_tunnel_connects_total{result="unavailable"} 1`,
		`agentk_tunnel_streams_total 1`,
		`kas_http_requests_total{code="200",method="get",server="agentk"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !strings.Contains(metrics, `agentk_tunnel_bytes_total{direction="in"}`) ||
		strings.Contains(metrics, `agentk_tunnel_bytes_total{direction="in"} 0`) {
		t.Errorf("bytes in not counted:\n%s", metrics)
	}
}

func TestDialsWSSThroughAnHTTPSProxyWithACAFile(t *testing.T) {
	node := newFakeNode(t, true)
	var connects atomic.Int32
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
			return
		}
		connects.Add(1)
		up, err := net.Dial("tcp", r.Host)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusOK)
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			up.Close()
			return
		}
		go func() { io.Copy(up, brw); up.Close() }()
		io.Copy(c, up)
		c.Close()
	}))
	t.Cleanup(proxy.Close)
	up := httptest.NewServer(okHandler())
	t.Cleanup(up.Close)

	o, _, _ := baseOptions(t, node, up.URL)
	o.Tunnels = 1
	o.CAFile = writeFile(t, "ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: node.srv.Certificate().Raw})))
	proxyURL, _ := url.Parse(proxy.URL)
	o.Proxy = http.ProxyURL(proxyURL)
	a := start(t, o)
	nt := node.nextTunnel(t)
	waitTunnels(t, a, 1)
	if !strings.HasPrefix(o.KASAddress, "wss://") {
		t.Fatalf("address %s", o.KASAddress)
	}
	if connects.Load() != 1 {
		t.Errorf("proxy saw %d CONNECTs, want 1", connects.Load())
	}
	if get(t, nt, "/") != "ok" {
		t.Error("request through the wss tunnel failed")
	}
}

func TestShutdownLetsRequestsFinish(t *testing.T) {
	arrived := make(chan struct{})
	release := make(chan struct{})
	node := newFakeNode(t, false)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		io.WriteString(w, "finished")
	}))
	t.Cleanup(up.Close)
	o, _, _ := baseOptions(t, node, up.URL)
	o.Tunnels = 1
	a, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	nt := node.nextTunnel(t)
	res := make(chan string, 1)
	go func() { res <- get(t, nt, "/watch") }()
	<-arrived
	cancel()
	// The agent says goodbye but keeps serving the request in flight.
	waitDone(t, "GOAWAY from the stopping agent", nt.sess.GoneAway())
	select {
	case err := <-done:
		t.Fatalf("Run returned with a request in flight: %v", err)
	default:
	}
	close(release)
	if got := <-res; got != "finished" {
		t.Errorf("request in flight at shutdown = %q", got)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(guard):
		t.Fatal("Run did not return")
	}
	waitDone(t, "the tunnel closing", nt.sess.Done())
}

func counterValue(t testing.TB, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
