package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	dpv1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
	"github.com/kas-project/kas/internal/cptest"
)

func (s *spyNodes) ResolveAgent(ctx context.Context, r *dpv1.ResolveAgentRequest) (*dpv1.ResolveAgentResponse, error) {
	if err := s.enter(ctx, "ResolveAgent"); err != nil {
		return nil, err
	}
	return s.NodeServiceClient.ResolveAgent(ctx, r)
}

// seedNode registers a node directly with the control plane and opens
// tunnels there: agent ID → how many.
func seedNode(t *testing.T, env *cptest.Env, nodeID string, tunnels map[int64]int) {
	t.Helper()
	ctx := context.Background()
	boot := "boot-" + nodeID
	if _, err := env.Nodes.RegisterNode(ctx, &dpv1.RegisterNodeRequest{
		NodeId: nodeID, BootId: boot, PrivateUrl: "grpc://" + nodeID + ":8155"}); err != nil {
		t.Fatal(err)
	}
	addTunnels(t, env, nodeID, tunnels)
}

var seedSeq int64

func addTunnels(t *testing.T, env *cptest.Env, nodeID string, tunnels map[int64]int) {
	t.Helper()
	if len(tunnels) == 0 {
		return
	}
	var ts []*dpv1.Tunnel
	for agent, n := range tunnels {
		for range n {
			seedSeq++
			ts = append(ts, &dpv1.Tunnel{TunnelId: fmt.Sprintf("%s-%d", nodeID, seedSeq), AgentId: agent, Seq: seedSeq})
		}
	}
	if _, err := env.Nodes.RegisterTunnels(context.Background(), &dpv1.RegisterTunnelsRequest{
		NodeId: nodeID, BootId: "boot-" + nodeID, Tunnels: ts}); err != nil {
		t.Fatal(err)
	}
}

func newResolver(t *testing.T, client dataplanev1connect.NodeServiceClient, clk *fakeClock, logs *logRecorder) *Resolver {
	t.Helper()
	if logs == nil {
		logs = &logRecorder{}
	}
	r, err := NewResolver(ResolverOptions{Nodes: client, SelfID: "self", Clock: clk, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func ids(nodes []Node) string {
	var out []string
	for _, n := range nodes {
		out = append(out, fmt.Sprintf("%s:%d", n.ID, n.Tunnels))
	}
	return fmt.Sprint(out)
}

func mustResolve(t *testing.T, r *Resolver, agentID int64) []Node {
	t.Helper()
	nodes, err := r.Resolve(context.Background(), agentID)
	if err != nil {
		t.Fatalf("Resolve(%d): %v", agentID, err)
	}
	return nodes
}

func TestResolverCacheHitMissInvalidate(t *testing.T) {
	clk := newFakeClock()
	env := startControlPlane(t, clk)
	seedNode(t, env, "self", map[int64]int{42: 3, 43: 1})
	seedNode(t, env, "node-b", map[int64]int{42: 2})
	seedNode(t, env, "node-c", map[int64]int{42: 1})
	spy := newSpy(env.Nodes)
	r := newResolver(t, spy, clk, nil)

	// Own node excluded; most tunnels first.
	if got := ids(mustResolve(t, r, 42)); got != "[node-b:2 node-c:1]" {
		t.Fatalf("Resolve(42) = %s", got)
	}
	n := mustResolve(t, r, 42)
	n[0].ID = "mutated" // callers get copies
	if got := ids(mustResolve(t, r, 42)); got != "[node-b:2 node-c:1]" {
		t.Fatalf("cached Resolve(42) = %s", got)
	}
	if calls := spy.Calls("ResolveAgent"); calls != 1 {
		t.Fatalf("%d lookups, want 1", calls)
	}
	if st := r.Stats(); st.Hits != 2 || st.Misses != 1 || st.Entries != 1 {
		t.Fatalf("stats %+v", st)
	}
	if n[0].Draining || n[0].PrivateURL != "grpc://node-b:8155" {
		t.Fatalf("node = %+v", n[0])
	}

	// A new route elsewhere shows once the positive TTL has passed.
	seedNode(t, env, "node-d", map[int64]int{42: 5})
	clk.Advance(5*time.Second - time.Millisecond)
	if got := ids(mustResolve(t, r, 42)); got != "[node-b:2 node-c:1]" {
		t.Fatalf("Resolve(42) within TTL = %s", got)
	}
	clk.Advance(time.Millisecond)
	if got := ids(mustResolve(t, r, 42)); got != "[node-d:5 node-b:2 node-c:1]" {
		t.Fatalf("Resolve(42) after TTL = %s", got)
	}
	if calls := spy.Calls("ResolveAgent"); calls != 2 {
		t.Fatalf("%d lookups, want 2", calls)
	}

	// A relay found the tunnel gone on node-d: the others stay cached.
	r.Invalidate(42, "node-d")
	r.Invalidate(42, "unknown")
	r.Invalidate(7, "node-d")
	if got := ids(mustResolve(t, r, 42)); got != "[node-b:2 node-c:1]" {
		t.Fatalf("Resolve(42) after Invalidate = %s", got)
	}
	r.Invalidate(42, "node-b")
	r.Invalidate(42, "node-c")
	if calls := spy.Calls("ResolveAgent"); calls != 2 {
		t.Fatalf("%d lookups before the cache emptied, want 2", calls)
	}
	if got := ids(mustResolve(t, r, 42)); got != "[node-d:5 node-b:2 node-c:1]" {
		t.Fatalf("Resolve(42) after invalidating every node = %s", got)
	}
	if calls := spy.Calls("ResolveAgent"); calls != 3 {
		t.Fatalf("%d lookups, want 3", calls)
	}
	if st := r.Stats(); st.Invalidations != 3 {
		t.Fatalf("invalidations = %d, want 3", st.Invalidations)
	}

	// Negative answers (including "only on this node") are cached for 1 s.
	if got := mustResolve(t, r, 43); len(got) != 0 {
		t.Fatalf("Resolve(43) = %s, want none (only self)", ids(got))
	}
	if got := mustResolve(t, r, 99); len(got) != 0 {
		t.Fatalf("Resolve(99) = %s", ids(got))
	}
	addTunnels(t, env, "node-c", map[int64]int{99: 1})
	if got := mustResolve(t, r, 99); len(got) != 0 {
		t.Fatalf("negative answer not cached: %s", ids(got))
	}
	clk.Advance(time.Second)
	if got := ids(mustResolve(t, r, 99)); got != "[node-c:1]" {
		t.Fatalf("Resolve(99) after negative TTL = %s", got)
	}
	if st := r.Stats(); st.Errors != 0 || st.Stale != 0 || st.Entries != 3 {
		t.Fatalf("stats %+v", st)
	}

	// Entries too old to serve even when stale are swept.
	clk.Advance(10 * time.Minute)
	mustResolve(t, r, 99)
	if st := r.Stats(); st.Entries != 1 {
		t.Fatalf("%d entries after the sweep, want 1", st.Entries)
	}
}

func TestResolverServesStaleRoutesWhileControlPlaneDown(t *testing.T) {
	clk := newFakeClock()
	env := startControlPlane(t, clk)
	seedNode(t, env, "node-b", map[int64]int{42: 1})
	up, err := url.Parse(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	dialer := &switchDialer{}
	dialer.target.Store(up.Host)
	hc := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true}}
	t.Cleanup(hc.CloseIdleConnections)
	spy := newSpy(dataplanev1connect.NewNodeServiceClient(hc, env.URL, env.DataplaneOpt))
	logs := &logRecorder{}
	r := newResolver(t, spy, clk, logs)

	if got := ids(mustResolve(t, r, 42)); got != "[node-b:1]" {
		t.Fatalf("Resolve(42) = %s", got)
	}
	dialer.target.Store(closedAddr(t))

	clk.Advance(5 * time.Second)
	if got := ids(mustResolve(t, r, 42)); got != "[node-b:1]" {
		t.Fatalf("stale Resolve(42) = %s", got)
	}
	if logs.Count("WARN", "using routes cached earlier", "agent_id=42", "connection refused") != 1 {
		t.Fatal("stale answer not logged")
	}
	// The failure is remembered for the negative TTL: no call per request.
	mustResolve(t, r, 42)
	if calls := spy.Calls("ResolveAgent"); calls != 2 {
		t.Fatalf("%d lookups, want 2", calls)
	}
	clk.Advance(time.Second)
	mustResolve(t, r, 42)
	if st := r.Stats(); st.Stale != 2 || st.Errors != 0 || spy.Calls("ResolveAgent") != 3 {
		t.Fatalf("stats %+v, %d lookups", st, spy.Calls("ResolveAgent"))
	}

	// Nothing cached: the error, wrapped.
	if _, err := r.Resolve(context.Background(), 77); err == nil {
		t.Fatal("Resolve(77) succeeded with the control plane down")
	} else if want := "resolve agent 77: unavailable: "; len(err.Error()) < len(want) || err.Error()[:len(want)] != want {
		t.Fatalf("Resolve(77) error = %v", err)
	}

	// Too old to trust.
	clk.Advance(10 * time.Minute)
	if _, err := r.Resolve(context.Background(), 42); err == nil {
		t.Fatal("served a route older than the stale TTL")
	}
	if st := r.Stats(); st.Errors != 2 {
		t.Fatalf("errors = %d, want 2", st.Errors)
	}

	// Back up.
	dialer.target.Store(up.Host)
	seedNode(t, env, "node-b", nil) // its lease ran out meanwhile; same boot, same tunnels
	if got := ids(mustResolve(t, r, 42)); got != "[node-b:1]" {
		t.Fatalf("Resolve(42) after recovery = %s", got)
	}
}

func TestResolverSingleflight(t *testing.T) {
	clk := newFakeClock()
	env := startControlPlane(t, clk)
	seedNode(t, env, "node-b", map[int64]int{42: 1})
	spy := newSpy(env.Nodes)
	r := newResolver(t, spy, clk, nil)
	r.flight.onJoin = spy.bc.Notify

	release := spy.Hold("ResolveAgent")
	const callers = 10
	var wg sync.WaitGroup
	results := make(chan string, callers)
	for range callers {
		wg.Go(func() {
			nodes, err := r.Resolve(context.Background(), 42)
			if err != nil {
				results <- err.Error()
				return
			}
			results <- ids(nodes)
		})
	}
	// One more caller gives up early without hurting the others.
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() {
		_, err := r.Resolve(ctx, 42)
		gaveUp <- err
	}()
	spy.WaitHeld(t, "ResolveAgent")
	spy.bc.WaitFor(t, "callers joining", func() bool { return r.flight.waiters(42) == callers+1 })
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled caller got %v", err)
	}
	release()
	wg.Wait()
	close(results)
	for got := range results {
		if got != "[node-b:1]" {
			t.Fatalf("caller got %s", got)
		}
	}
	if calls := spy.Calls("ResolveAgent"); calls != 1 {
		t.Fatalf("%d lookups for %d concurrent misses, want 1", calls, callers)
	}
	if st := r.Stats(); st.Misses != callers+1 {
		t.Fatalf("misses = %d", st.Misses)
	}
}

func TestResolverCloseAndValidate(t *testing.T) {
	clk := newFakeClock()
	env := startControlPlane(t, clk)
	spy := newSpy(env.Nodes)
	r := newResolver(t, spy, clk, nil)
	release := spy.Hold("ResolveAgent")
	defer release()
	errc := make(chan error, 1)
	go func() {
		_, err := r.Resolve(context.Background(), 5)
		errc <- err
	}()
	spy.WaitHeld(t, "ResolveAgent")
	r.Close() // cancels the lookup in flight and waits for it
	if err := <-errc; err == nil {
		t.Fatal("Resolve succeeded across Close")
	}
	if _, err := r.Resolve(context.Background(), 5); !errors.Is(err, errClosed) {
		t.Fatalf("Resolve after Close: %v", err)
	}

	_, err := NewResolver(ResolverOptions{StaleTTL: time.Second, PositiveTTL: time.Minute})
	want := "resolver: NodeService client is required\n" +
		"resolver: own node ID is required\n" +
		"resolver: stale TTL must not be below the positive TTL"
	if err == nil || err.Error() != want {
		t.Fatalf("NewResolver error = %v, want %q", err, want)
	}
}

// TestResolverServesStaleRoutesWhileControlPlaneHangs: a control plane that
// does not answer (its database unreachable) costs a caller holding an
// expired answer StaleWait, not the lookup's timeout; the lookup goes on
// and its answer replaces the stale one. With nothing cached the caller
// waits for the lookup.
func TestResolverServesStaleRoutesWhileControlPlaneHangs(t *testing.T) {
	clk := newFakeClock()
	env := startControlPlane(t, clk)
	seedNode(t, env, "node-b", map[int64]int{42: 1})
	spy := newSpy(env.Nodes)
	r := newResolver(t, spy, clk, nil)
	r.opts.StaleWait = 20 * time.Millisecond
	if got := ids(mustResolve(t, r, 42)); got != "[node-b:1]" {
		t.Fatalf("Resolve(42) = %s", got)
	}
	seedNode(t, env, "node-c", map[int64]int{42: 2}) // known to the control plane only
	clk.Advance(6 * time.Second)                     // the answer expired

	release := spy.Hold("ResolveAgent")
	if got := ids(mustResolve(t, r, 42)); got != "[node-b:1]" {
		t.Fatalf("Resolve(42) with the lookup hanging = %s, want the stale answer", got)
	}
	if st := r.Stats(); st.Stale != 1 || st.Errors != 0 {
		t.Fatalf("stats %+v, want 1 stale", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := r.Resolve(ctx, 77); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Resolve(77) with nothing cached = %v, want the caller's deadline", err)
	}
	release()
	spy.bc.WaitFor(t, "the lookup's answer cached", func() bool {
		nodes, err := r.Resolve(context.Background(), 42)
		return err == nil && ids(nodes) == "[node-c:2 node-b:1]"
	})
}
