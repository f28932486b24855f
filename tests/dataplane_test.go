package tests

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/kas-project/kas/dataplane"
	"github.com/kas-project/kas/dataplane/tunnel"
	mgmtv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/tests/framework"
)

// Three nodes, one agent on each: a request at any node reaches any agent,
// over the node's own tunnel or relayed in one hop to the node that has one.
func TestDataplaneAnyNodeReachesEveryAgent(t *testing.T) {
	env := framework.StartControlPlane(t)
	nodes := []*framework.Node{
		framework.StartNode(t, env, "node-a"),
		framework.StartNode(t, env, "node-b"),
		framework.StartNode(t, env, "node-c"),
	}
	var agents []*framework.Agent
	for i, n := range nodes {
		creds := framework.CreateAgent(t, env, fmt.Sprintf("agent-%d", i))
		agents = append(agents, framework.StartAgent(t, creds, n.AgentURL, 1))
		framework.WaitRouted(t, env, creds.ID, n.ID)
	}
	ctx := framework.Context(t)

	for _, at := range nodes {
		for i, ag := range agents {
			resp, body, err := at.Get(ctx, ag.Creds.ID, "/api/v1/pods")
			if err != nil {
				t.Fatalf("node %s → agent %d: %v", at.ID, ag.Creds.ID, err)
			}
			if got := resp.Header.Get(framework.AgentHeader); got != strconv.FormatInt(ag.Creds.ID, 10) {
				t.Errorf("node %s → agent %d: answered by agent %q", at.ID, ag.Creds.ID, got)
			}
			if want := fmt.Sprintf("agent %d: /api/v1/pods", ag.Creds.ID); body != want {
				t.Errorf("node %s → agent %d: body %q, want %q", at.ID, ag.Creds.ID, body, want)
			}
			if !ag.OnNodes(nodes[i].ID) {
				t.Errorf("agent %d has tunnels on %v, want only %s", ag.Creds.ID, ag.Nodes(), nodes[i].ID)
			}
		}
	}
	// Each node served its own agent locally and relayed to the two others
	// (one connection per agent: the transport keeps them alive), and took
	// the two relays of the others for its agent.
	for _, n := range nodes {
		local, relayed := n.Metric(t, "agent_dials_total", "result", "local"), n.Metric(t, "agent_dials_total", "result", "relay")
		in := n.Metric(t, "relays_in_total", "result", "ok")
		if local != 1 || relayed != 2 || in != 2 {
			t.Errorf("node %s: %v local dials, %v relayed, %v relays in; want 1, 2, 2", n.ID, local, relayed, in)
		}
	}

	t.Run("bulk body both ways through a relay", func(t *testing.T) {
		payload := make([]byte, 4<<20+7)
		rand.Read(payload)
		req, _ := http.NewRequestWithContext(dataplane.WithAgent(ctx, agents[2].Creds.ID), http.MethodPost, "http://kubernetes/echo", bytes.NewReader(payload))
		resp, err := nodes[0].Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("echo of %d bytes: got %d bytes, equal=%v, err %v", len(payload), len(got), bytes.Equal(got, payload), err)
		}
	})

	t.Run("protocol upgrade through a relay", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(dataplane.WithAgent(ctx, agents[1].Creds.ID), http.MethodGet, "http://kubernetes/upgrade", nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "kas-test")
		resp, err := nodes[2].Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("status %s, want 101", resp.Status)
		}
		rw, ok := resp.Body.(io.ReadWriteCloser)
		if !ok {
			t.Fatalf("101 body is %T, not an io.ReadWriteCloser", resp.Body)
		}
		for _, msg := range []string{"first", "second message"} {
			if got, err := framework.ReadUpgraded(rw, msg); err != nil || got != msg {
				t.Fatalf("upgraded echo of %q: %q, %v", msg, got, err)
			}
		}
	})

	t.Run("concurrent requests at every node", func(t *testing.T) {
		var wg sync.WaitGroup
		var failed atomic.Int64
		for w := range 32 {
			wg.Go(func() {
				for i := range 10 {
					at, ag := nodes[(w+i)%3], agents[(w/3+i)%3]
					if _, _, err := at.Get(ctx, ag.Creds.ID, "/api"); err != nil {
						failed.Add(1)
						t.Errorf("node %s → agent %d: %v", at.ID, ag.Creds.ID, err)
					}
				}
			})
		}
		wg.Wait()
	})

	t.Run("an agent that is not connected fails fast", func(t *testing.T) {
		idle := framework.CreateAgent(t, env, "never-connected")
		start := time.Now()
		err := nodes[0].DialError(ctx, idle.ID)
		took := time.Since(start)
		if !errors.Is(err, dataplane.ErrNotConnected) || !strings.Contains(err.Error(), "agent is not connected") {
			t.Fatalf("dial of an agent without tunnels: %v", err)
		}
		if took > time.Second {
			t.Errorf("not connected reported after %v; want at once", took)
		}
		t.Logf("not connected reported in %v", took)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://kubernetes/api", nil)
		if _, err := nodes[0].Client().Do(req); err == nil || !strings.Contains(err.Error(), "no agent") {
			t.Errorf("request without an agent in its context: %v", err)
		}
	})

	// Nothing leaks: once the pooled connections are closed, every stream
	// opened on every node has closed.
	for _, n := range nodes {
		n.Transport().CloseIdleConnections()
	}
	for _, n := range nodes {
		framework.Eventually(t, "streams of node "+n.ID+" closed", func() bool {
			opened := n.Metric(t, "tunnel_streams_total", "event", "opened")
			return opened > 0 && n.Metric(t, "tunnel_streams_total", "event", "closed") == opened
		})
	}
}

// A node killed without a goodbye: its agents reconnect elsewhere, requests
// for them succeed again within 5 s, and its routes leave the control plane
// within the lease.
func TestDataplaneNodeKilled(t *testing.T) {
	env := framework.StartControlPlane(t)
	a := framework.StartNode(t, env, "node-a")
	b := framework.StartNode(t, env, "node-b")
	c := framework.StartNode(t, env, "node-c")
	// Both agents land on node a; X falls back to b, Y to c.
	x := framework.StartAgent(t, framework.CreateAgent(t, env, "agent-x"), framework.NewBalancer(t, framework.First, a, b, c).URL, 1)
	y := framework.StartAgent(t, framework.CreateAgent(t, env, "agent-y"), framework.NewBalancer(t, framework.First, a, c, b).URL, 1)
	framework.WaitRouted(t, env, x.Creds.ID, "node-a")
	framework.WaitRouted(t, env, y.Creds.ID, "node-a")
	ctx := framework.Context(t)
	// Requests at c for X and at b for Y are relayed to a; their routes are cached.
	for _, p := range []struct {
		at *framework.Node
		ag *framework.Agent
	}{{c, x}, {b, y}} {
		if _, _, err := p.at.Get(ctx, p.ag.Creds.ID, "/warm"); err != nil {
			t.Fatal(err)
		}
	}

	killed := time.Now()
	a.Kill(t)
	var wg sync.WaitGroup
	recovered := make([]time.Duration, 2)
	for i, p := range []struct {
		at *framework.Node
		ag *framework.Agent
	}{{c, x}, {b, y}} {
		wg.Go(func() {
			var lastErr error
			ok := framework.Within(framework.Guard, func() bool {
				_, _, lastErr = p.at.Get(ctx, p.ag.Creds.ID, "/after-kill")
				return lastErr == nil
			})
			recovered[i] = time.Since(killed)
			if !ok {
				t.Errorf("node %s → agent %d: no success after the kill: %v", p.at.ID, p.ag.Creds.ID, lastErr)
			}
		})
	}
	wg.Wait()
	for i, d := range recovered {
		t.Logf("requests for agent %c succeed again %v after the kill", "XY"[i], d.Round(time.Millisecond))
		if d > 5*time.Second {
			t.Errorf("agent %c recovered after %v; want within 5 s", "XY"[i], d)
		}
	}
	if !x.OnNodes("node-b") || !y.OnNodes("node-c") {
		t.Errorf("after the kill agent X is on %v (want node-b), Y on %v (want node-c)", x.Nodes(), y.Nodes())
	}

	// The control plane stops resolving to the dead node once its lease
	// ends, and shows its routes as stale.
	framework.Eventually(t, "node-a's routes expired", func() bool {
		for _, id := range []int64{x.Creds.ID, y.Creds.ID} {
			for _, n := range framework.ResolveNodes(t, env, id) {
				if n == "node-a" {
					return false
				}
			}
		}
		return true
	})
	expired := time.Since(killed)
	t.Logf("node-a's routes left the control plane %v after the kill (lease %v)", expired.Round(time.Millisecond), framework.LeaseTTL)
	if expired > framework.LeaseTTL+time.Second {
		t.Errorf("routes of the killed node resolved for %v; want within the lease (%v)", expired, framework.LeaseTTL)
	}
	routes, err := env.Routing.ListRoutes(ctx, &mgmtv1.ListRoutesRequest{AgentId: x.Creds.ID})
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, r := range routes.GetRoutes() {
		states[r.GetNodeId()] = r.GetState()
	}
	if states["node-a"] != "stale" || states["node-b"] != "live" {
		t.Errorf("routes of agent X: %v; want node-a stale, node-b live", states)
	}
}

// A node drained under load loses no request: its agents open tunnels
// elsewhere before the old ones close, streams in flight finish, and
// requests keep flowing through the other nodes and, until it stops taking
// traffic, through the draining node itself.
func TestDataplaneDrainLosesNoRequest(t *testing.T) {
	env := framework.StartControlPlane(t)
	a := framework.StartNode(t, env, "node-a", func(o *dataplane.Options) { o.DrainDelay = 300 * time.Millisecond })
	b := framework.StartNode(t, env, "node-b")
	c := framework.StartNode(t, env, "node-c")
	// X keeps one tunnel, on a; Y keeps two, on a and b.
	x := framework.StartAgent(t, framework.CreateAgent(t, env, "agent-x"), framework.NewBalancer(t, framework.First, a, b, c).URL, 1)
	y := framework.StartAgent(t, framework.CreateAgent(t, env, "agent-y"), framework.NewBalancer(t, framework.RoundRobin, a, b, c).URL, 2)
	framework.WaitRouted(t, env, x.Creds.ID, "node-a")
	framework.WaitRouted(t, env, y.Creds.ID, "node-a", "node-b")
	ctx := framework.Context(t)

	// An exec-like stream to X through a stays open across the drain.
	req, _ := http.NewRequestWithContext(dataplane.WithAgent(ctx, x.Creds.ID), http.MethodGet, "http://kubernetes/upgrade", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "kas-test")
	resp, err := a.Client().Do(req)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade through node a: %v %v", resp, err)
	}
	session := resp.Body.(io.ReadWriteCloser)

	var ok, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	loop := func(at *framework.Node, ag *framework.Agent, while func() bool) {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if !while() {
					return
				}
				if _, _, err := at.Get(ctx, ag.Creds.ID, "/api/v1/pods?i="+strconv.Itoa(i)); err != nil {
					failed.Add(1)
					t.Errorf("during the drain, node %s → agent %d: %v", at.ID, ag.Creds.ID, err)
					continue
				}
				ok.Add(1)
			}
		})
	}
	always := func() bool { return true }
	aReady := func() bool { return a.Ready(ctx) == nil } // a load balancer stops sending when /readyz fails
	for _, ag := range []*framework.Agent{x, y} {
		for _, at := range []*framework.Node{b, c} {
			loop(at, ag, always)
			loop(at, ag, always)
		}
		loop(a, ag, aReady)
	}
	framework.Eventually(t, "requests flowing", func() bool { return ok.Load() >= 50 })

	drainStart := time.Now()
	a.StartDrain()
	framework.Eventually(t, "node a not ready", func() bool { return !aReady() })

	// While draining, a refuses new tunnels with a retryable 503.
	if sess, err := tunnel.Dial(ctx, a.AgentURL+framework.TunnelPath, bearer(x.Creds.Token), tunnel.DialOptions{}); err == nil {
		sess.Close()
		t.Error("a draining node accepted a tunnel")
	} else if !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "draining") {
		t.Errorf("handshake with a draining node: %v; want 503 draining", err)
	}
	// X moves to another node before its tunnel on a closes.
	framework.Eventually(t, "agent X moved off node a", func() bool {
		ns := framework.ResolveNodes(t, env, x.Creds.ID)
		return len(ns) > 0 && ns[0] != "node-a"
	})
	// The stream through a still works; closing it lets the drain finish.
	if got, err := framework.ReadUpgraded(session, "still there"); err != nil || got != "still there" {
		t.Errorf("upgraded stream during the drain: %q %v", got, err)
	}
	session.Close()
	a.WaitStopped(t)
	drained := time.Since(drainStart)
	before := ok.Load()
	framework.Eventually(t, "requests flowing after the drain", func() bool { return ok.Load() >= before+50 })
	close(stop)
	wg.Wait()

	t.Logf("drain took %v; %d requests succeeded, %d failed", drained.Round(time.Millisecond), ok.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Errorf("%d requests failed during the drain", failed.Load())
	}
	if x.Tunnels() != 1 || y.Tunnels() != 2 || strings.Contains(strings.Join(append(x.Nodes(), y.Nodes()...), ","), "node-a") {
		t.Errorf("after the drain agent X is on %v, Y on %v; want 1 and 2 tunnels, none on node-a", x.Nodes(), y.Nodes())
	}
	for _, id := range []int64{x.Creds.ID, y.Creds.ID} {
		for _, n := range framework.ResolveNodes(t, env, id) {
			if n == "node-a" {
				t.Errorf("agent %d still resolves to the drained node", id)
			}
		}
	}
	if a.Logs.Count("tunnels drained") != 1 || a.Logs.Count("node registered") == 0 {
		t.Errorf("node a's logs lack the drain")
	}
}

// A revoked token's tunnel closes within the recheck bound, and the agent
// cannot come back with it.
func TestDataplaneRevokedTokenClosesTunnel(t *testing.T) {
	env := framework.StartControlPlane(t)
	const allow, recheck = 300 * time.Millisecond, 300 * time.Millisecond
	a := framework.StartNode(t, env, "node-a", func(o *dataplane.Options) {
		o.Authenticator.AllowTTL, o.Authenticator.RecheckInterval = allow, recheck
	})
	ag := framework.StartAgent(t, framework.CreateAgent(t, env, "agent-r"), a.AgentURL, 1)
	ctx := framework.Context(t)
	if _, _, err := a.Get(ctx, ag.Creds.ID, "/api"); err != nil {
		t.Fatal(err)
	}

	revoked := time.Now()
	framework.Revoke(t, env, ag.Creds)
	framework.Eventually(t, "tunnel closed", func() bool { return a.AgentTunnels(ag.Creds.ID) == 0 })
	took := time.Since(revoked)
	t.Logf("tunnel closed %v after the token was revoked (bound: allow TTL %v + recheck interval %v)", took.Round(time.Millisecond), allow, recheck)
	if took > allow+recheck+time.Second {
		t.Errorf("revoked token kept its tunnel for %v", took)
	}
	if a.Logs.Count("agent token no longer valid: closing tunnel", "agent_id="+strconv.FormatInt(ag.Creds.ID, 10)) != 1 {
		t.Error("no log line for the revoked tunnel")
	}
	framework.Eventually(t, "the agent refused on reconnect", func() bool {
		return a.Metric(t, "tunnel_handshakes_total", "result", "unauthenticated") >= 1
	})
	framework.Eventually(t, "the agent's route gone", func() bool {
		return framework.IsNotConnected(a.DialError(ctx, ag.Creds.ID))
	})
	if n := a.Metric(t, "tunnels_revoked_total"); n != 1 {
		t.Errorf("tunnels_revoked_total = %v", n)
	}
}

func bearer(token string) http.Header {
	return http.Header{"Authorization": {"Bearer " + token}, "Kas-Agent-Version": {"e2e-raw"}}
}

// responseRecorder keeps the handshake response for header checks.
type responseRecorder struct {
	resp *http.Response
}

func (r *responseRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	r.resp = resp
	return resp, err
}

// The handshake contract: path, bearer token checked before the upgrade,
// Kas-Node-Id in every answer, Kas-Agent-Version recorded.
func TestDataplaneHandshake(t *testing.T) {
	env := framework.StartControlPlane(t)
	a := framework.StartNode(t, env, "node-a")
	creds := framework.CreateAgent(t, env, "agent-h")
	ctx := framework.Context(t)
	url := a.AgentURL + framework.TunnelPath

	for _, tc := range []struct {
		name   string
		header http.Header
		want   []string
	}{
		{"wrong token", bearer("kasagent_1_nottherealsecretnottherealsecretxx"), []string{"401 Unauthorized", "agent token is not valid"}},
		{"no token", http.Header{}, []string{"401 Unauthorized", "missing agent token"}},
	} {
		rec := &responseRecorder{}
		_, err := tunnel.Dial(ctx, url, tc.header, tunnel.DialOptions{HTTPClient: &http.Client{Transport: rec}})
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%s: err = %v, want it to contain %q", tc.name, err, w)
			}
		}
		if rec.resp == nil || rec.resp.Header.Get("Kas-Node-Id") != "node-a" {
			t.Errorf("%s: answer lacks Kas-Node-Id: node-a", tc.name)
		}
	}

	// Not the tunnel subprotocol: 400 naming the one spoken here.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.AgentAddr+framework.TunnelPath, nil)
	for k, v := range map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
		"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": "chat", "Authorization": "Bearer " + creds.Token} {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), tunnel.Subprotocol) {
		t.Errorf("wrong subprotocol: %s %q", resp.Status, body)
	}
	// Another path: 404 naming the right one.
	resp, err = http.Get("http://" + a.AgentAddr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), framework.TunnelPath) {
		t.Errorf("GET /: %s %q", resp.Status, body)
	}

	// A valid token: the tunnel opens, the answer names the node, and the
	// control plane records the tunnel with the agent's version.
	rec := &responseRecorder{}
	sess, err := tunnel.Dial(ctx, url, bearer(creds.Token), tunnel.DialOptions{HTTPClient: &http.Client{Transport: rec}})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if got := rec.resp.Header.Get("Kas-Node-Id"); got != "node-a" {
		t.Errorf("Kas-Node-Id = %q", got)
	}
	framework.WaitRouted(t, env, creds.ID, "node-a")
	if a.Logs.Count("tunnel opened", "agent_version=e2e-raw", "agent_id="+strconv.FormatInt(creds.ID, 10), "tunnel_id=", "node_id=node-a") != 1 {
		t.Error("no tunnel opened log line with node, agent, tunnel and version")
	}
	sess.Close()
	framework.Eventually(t, "tunnel gone", func() bool { return a.Tunnels() == 0 })
	framework.WaitRouted(t, env, creds.ID)
}

// The control plane goes away: open tunnels keep serving, relays use the
// routes cached before, a new agent gets a clear retryable refusal, and
// everything recovers when the control plane returns.
func TestDataplaneControlPlaneOutage(t *testing.T) {
	env := framework.StartControlPlane(t)
	link := framework.ProxyTo(t, strings.TrimPrefix(env.URL, "http://"))
	viaLink := func(o *dataplane.Options) {
		o.ControlPlaneURL = "http://" + link.Addr()
		o.Resolver.PositiveTTL = 200 * time.Millisecond
	}
	a := framework.StartNode(t, env, "node-a", viaLink)
	b := framework.StartNode(t, env, "node-b", viaLink)
	x := framework.StartAgent(t, framework.CreateAgent(t, env, "agent-x"), a.AgentURL, 1)
	framework.WaitRouted(t, env, x.Creds.ID, "node-a")
	late := framework.CreateAgent(t, env, "agent-late") // its token is minted, never checked yet
	ctx := framework.Context(t)
	if _, _, err := b.Get(ctx, x.Creds.ID, "/before"); err != nil {
		t.Fatal(err)
	}

	link.Down()
	// Requests keep succeeding through the outage, relayed ones on a route
	// cached before it (fresh connections force a route lookup each time).
	stale := b.Metric(t, "route_stale_total")
	requests := 0
	framework.Eventually(t, "a relay served from the stale route cache", func() bool {
		b.Transport().CloseIdleConnections()
		for _, at := range []*framework.Node{a, b} {
			if _, _, err := at.Get(ctx, x.Creds.ID, "/during"); err != nil {
				t.Fatalf("during the outage, node %s → agent %d: %v", at.ID, x.Creds.ID, err)
			}
			requests++
		}
		return b.Metric(t, "route_stale_total") > stale
	})
	t.Logf("%d requests served during the outage", requests)
	if a.Ready(ctx) != nil || b.Ready(ctx) != nil {
		t.Error("nodes turned unready because the control plane is down")
	}

	// A new agent cannot be authenticated: 503 with Retry-After, saying why.
	rec := &responseRecorder{}
	_, err := tunnel.Dial(ctx, a.AgentURL+framework.TunnelPath, bearer(late.Token), tunnel.DialOptions{HTTPClient: &http.Client{Transport: rec}})
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "control plane unavailable") ||
		rec.resp == nil || rec.resp.Header.Get("Retry-After") == "" {
		t.Errorf("new agent during the outage: %v; want 503 with Retry-After naming the control plane", err)
	}
	lateAgent := framework.StartAgentNoWait(t, late, a.AgentURL, 1)
	framework.Eventually(t, "the late agent refused as retryable", func() bool {
		return lateAgent.Logs.Count("the dataplane cannot take the tunnel now", "status=503") > 0
	})
	// Nothing cached about it: the relay lookup fails fast, as unavailable.
	if err := b.DialError(ctx, late.ID); !errors.Is(err, dataplane.ErrUnreachable) {
		t.Errorf("dial of an unknown agent during the outage: %v; want ErrUnreachable", err)
	}

	recovered := time.Now()
	link.Up()
	if err := lateAgent.WaitTunnels(ctx, 1); err != nil {
		t.Fatal(err)
	}
	framework.WaitRouted(t, env, late.ID, "node-a")
	framework.Eventually(t, "the late agent reachable through node b", func() bool {
		_, _, err := b.Get(ctx, late.ID, "/after")
		return err == nil
	})
	t.Logf("the late agent is reachable through another node %v after the control plane returned", time.Since(recovered).Round(time.Millisecond))
	framework.WaitRouted(t, env, x.Creds.ID, "node-a")
	if _, _, err := b.Get(ctx, x.Creds.ID, "/after"); err != nil {
		t.Error(err)
	}
}

// Peers that misbehave cost the node nothing lasting: each is logged and
// dropped, the other agents keep working, and goroutines and streams
// return to where they were.
func TestDataplaneMisbehavingPeers(t *testing.T) {
	env := framework.StartControlPlane(t)
	a := framework.StartNode(t, env, "node-a")
	good := framework.StartAgent(t, framework.CreateAgent(t, env, "agent-good"), a.AgentURL, 1)
	bad := framework.CreateAgent(t, env, "agent-bad")
	ctx := framework.Context(t)
	url := a.AgentURL + framework.TunnelPath

	// Warm up: the bad agent's token is checked once (cached from now on),
	// and the good agent has served a request.
	sess, err := tunnel.Dial(ctx, url, bearer(bad.Token), tunnel.DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sess.Close()
	if _, _, err := a.Get(ctx, good.Creds.ID, "/warm"); err != nil {
		t.Fatal(err)
	}
	settle := func() {
		t.Helper()
		a.Transport().CloseIdleConnections()
		framework.Eventually(t, "only the good tunnel, no stream", func() bool {
			return a.Tunnels() == 1 && a.Metric(t, "tunnel_streams_total", "event", "opened") == a.Metric(t, "tunnel_streams_total", "event", "closed")
		})
	}
	settle()
	framework.WaitRouted(t, env, bad.ID)
	baseline := framework.Goroutines()
	goodStillServed := func() {
		t.Helper()
		if _, _, err := a.Get(ctx, good.Creds.ID, "/still-fine"); err != nil {
			t.Errorf("the good agent, next to a misbehaving peer: %v", err)
		}
	}
	rawDial := func(header http.Header) *websocket.Conn {
		t.Helper()
		c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{tunnel.Subprotocol}, HTTPHeader: header})
		if err != nil {
			t.Fatal(err)
		}
		framework.Eventually(t, "the raw tunnel open", func() bool { return a.AgentTunnels(bad.ID) == 1 })
		return c
	}

	t.Run("garbage frame", func(t *testing.T) {
		c := rawDial(bearer(bad.Token))
		defer c.CloseNow()
		garbage := bytes.Repeat([]byte{0xff}, 64)
		if err := c.Write(ctx, websocket.MessageBinary, garbage); err != nil {
			t.Fatal(err)
		}
		framework.Eventually(t, "the tunnel dropped", func() bool { return a.AgentTunnels(bad.ID) == 0 })
		if a.Logs.Count("tunnel closed", "agent_id="+strconv.FormatInt(bad.ID, 10), "protocol violation") != 1 {
			t.Error("no log line naming the protocol violation")
		}
		goodStillServed()
	})

	t.Run("tunnel peer that never reads or answers", func(t *testing.T) {
		c := rawDial(bearer(bad.Token)) // never read: pings, opens and data pile up unread
		defer c.CloseNow()
		start := time.Now()
		_, _, err := a.Get(ctx, bad.ID, "/nobody-home")
		if err == nil {
			t.Fatal("a request to an agent that never reads succeeded")
		}
		t.Logf("request to a silent agent failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
		goodStillServed()
		framework.Eventually(t, "the silent tunnel dropped", func() bool { return a.AgentTunnels(bad.ID) == 0 })
		if a.Logs.Count("tunnel closed", "agent_id="+strconv.FormatInt(bad.ID, 10), "unresponsive") != 1 {
			t.Error("no log line naming the unresponsive peer")
		}
	})

	t.Run("half-open peer", func(t *testing.T) {
		link := framework.ProxyTo(t, a.AgentAddr)
		sess, err := tunnel.Dial(ctx, "ws://"+link.Addr()+framework.TunnelPath, bearer(bad.Token), tunnel.DialOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		framework.Eventually(t, "the tunnel open", func() bool { return a.AgentTunnels(bad.ID) == 1 })
		link.Blackhole() // the peer vanishes: no FIN, no RST, nothing
		vanished := time.Now()
		framework.Eventually(t, "the half-open tunnel dropped", func() bool { return a.AgentTunnels(bad.ID) == 0 })
		t.Logf("half-open tunnel dropped %v after the peer vanished", time.Since(vanished).Round(time.Millisecond))
		goodStillServed()
		link.Close()
	})

	t.Run("caller that never reads its response", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(dataplane.WithAgent(ctx, good.Creds.ID), http.MethodGet, "http://kubernetes/big?n="+strconv.Itoa(256<<20), nil)
		resp, err := a.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		// The response body fills the stream's window and stops; the
		// tunnel's other streams carry on.
		for i := range 20 {
			if _, _, err := a.Get(ctx, good.Creds.ID, "/next-to-a-stalled-stream?i="+strconv.Itoa(i)); err != nil {
				t.Fatalf("request next to a stalled stream: %v", err)
			}
		}
		resp.Body.Close()
	})

	settle()
	framework.Eventually(t, fmt.Sprintf("goroutines back to %d", baseline), func() bool { return framework.Goroutines() <= baseline })
	if n := a.Metric(t, "tunnel_handshakes_total", "result", "ok"); n != 5 {
		t.Errorf("%v tunnels accepted, want 5", n)
	}
}
