package controlplane_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kas-project/kas/controlplane"
	dataplanev1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/internal/cptest"
)

const (
	testLeaseTTL   = 20 * time.Second
	testStaleGrace = 40 * time.Second
)

// routingEnv starts a control plane whose clock the test moves.
func routingEnv(t *testing.T) (*cptest.Env, *clock) {
	t.Helper()
	clk := &clock{t: time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)}
	env := cptest.Start(t, func(o *controlplane.Options) {
		o.Now = clk.Now
		o.LeaseTTL = testLeaseTTL
		o.StaleGrace = testStaleGrace
	})
	return env, clk
}

func register(t *testing.T, env *cptest.Env, node, boot string) *dataplanev1.RegisterNodeResponse {
	t.Helper()
	resp, err := env.Nodes.RegisterNode(t.Context(), &dataplanev1.RegisterNodeRequest{
		NodeId: node, BootId: boot, PrivateUrl: "grpc://" + node + ":8155", Version: "v1.2.3",
	})
	if err != nil {
		t.Fatalf("register %s/%s: %v", node, boot, err)
	}
	return resp
}

func heartbeat(env *cptest.Env, t *testing.T, node, boot string) (*dataplanev1.HeartbeatResponse, error) {
	return env.Nodes.Heartbeat(t.Context(), &dataplanev1.HeartbeatRequest{NodeId: node, BootId: boot})
}

func tun(id string, agent, seq int64) *dataplanev1.Tunnel {
	return &dataplanev1.Tunnel{TunnelId: id, AgentId: agent, Seq: seq, AgentVersion: "v17.0.0"}
}

func registerTunnels(t *testing.T, env *cptest.Env, node, boot string, ts ...*dataplanev1.Tunnel) int32 {
	t.Helper()
	resp, err := env.Nodes.RegisterTunnels(t.Context(), &dataplanev1.RegisterTunnelsRequest{NodeId: node, BootId: boot, Tunnels: ts})
	if err != nil {
		t.Fatalf("register tunnels on %s/%s: %v", node, boot, err)
	}
	return resp.Applied
}

func unregisterTunnels(t *testing.T, env *cptest.Env, node, boot string, ts ...*dataplanev1.Tunnel) int32 {
	t.Helper()
	resp, err := env.Nodes.UnregisterTunnels(t.Context(), &dataplanev1.UnregisterTunnelsRequest{NodeId: node, BootId: boot, Tunnels: ts})
	if err != nil {
		t.Fatalf("unregister tunnels on %s/%s: %v", node, boot, err)
	}
	return resp.Applied
}

func resolve(t *testing.T, env *cptest.Env, agent int64) []*dataplanev1.AgentNode {
	t.Helper()
	resp, err := env.Nodes.ResolveAgent(t.Context(), &dataplanev1.ResolveAgentRequest{AgentId: agent})
	if err != nil {
		t.Fatalf("resolve agent %d: %v", agent, err)
	}
	return resp.Nodes
}

// openTunnels lists node's open tunnel IDs, sorted.
func openTunnels(t *testing.T, env *cptest.Env, node string) []string {
	t.Helper()
	rows, err := pool(env).Query(t.Context(), `SELECT tunnel_id FROM tunnels WHERE node_id = $1 AND open ORDER BY tunnel_id`, node)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestRegisterAndHeartbeat(t *testing.T) {
	env, clk := routingEnv(t)
	t0 := clk.Now()
	resp := register(t, env, "n1", "b1")
	if got := resp.LeaseTtl.AsDuration(); got != testLeaseTTL {
		t.Errorf("lease_ttl = %v, want %v", got, testLeaseTTL)
	}
	if got := resp.HeartbeatInterval.AsDuration(); got != testLeaseTTL/4 {
		t.Errorf("heartbeat_interval = %v, want %v", got, testLeaseTTL/4)
	}
	if got := resp.LeaseExpiresAt.AsTime(); !got.Equal(t0.Add(testLeaseTTL)) {
		t.Errorf("lease_expires_at = %v, want %v", got, t0.Add(testLeaseTTL))
	}
	var url, version string
	var draining bool
	if err := pool(env).QueryRow(t.Context(), `SELECT private_url, version, draining FROM nodes WHERE node_id = 'n1'`).
		Scan(&url, &version, &draining); err != nil {
		t.Fatal(err)
	}
	if url != "grpc://n1:8155" || version != "v1.2.3" || draining {
		t.Errorf("stored node: %s %s draining=%v", url, version, draining)
	}

	clk.Add(15 * time.Second)
	hb, err := heartbeat(env, t, "n1", "b1")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hb.LeaseExpiresAt.AsTime(), clk.Now().Add(testLeaseTTL); !got.Equal(want) {
		t.Errorf("renewed lease_expires_at = %v, want %v", got, want)
	}

	_, err = heartbeat(env, t, "unknown", "b1")
	wantCode(t, err, connect.CodeNotFound, "node not registered")
	_, err = heartbeat(env, t, "n1", "other-boot")
	wantCode(t, err, connect.CodeNotFound, "node not registered")
	_, err = heartbeat(env, t, "", "b1")
	wantCode(t, err, connect.CodeInvalidArgument, "node_id")
	_, err = heartbeat(env, t, "n1", strings.Repeat("b", 129))
	wantCode(t, err, connect.CodeInvalidArgument, "boot_id")
}

func TestRegisterNodeValidation(t *testing.T) {
	env, _ := routingEnv(t)
	good := []string{
		"grpc://10.0.0.1:8155",
		"grpcs://kas-0.kas.default.svc:8155",
		"grpc://[fd00::1]:8155",
		"unix:///run/kas/private-api.sock",
	}
	for i, u := range good {
		_, err := env.Nodes.RegisterNode(t.Context(), &dataplanev1.RegisterNodeRequest{NodeId: fmt.Sprint("ok", i), BootId: "b", PrivateUrl: u})
		if err != nil {
			t.Errorf("private_url %q refused: %v", u, err)
		}
	}
	bad := []string{
		"",
		"10.0.0.1:8155",
		"http://10.0.0.1:8155",
		"grpc://10.0.0.1",
		"grpc://:8155",
		"grpc://10.0.0.1:0",
		"grpc://10.0.0.1:70000",
		"grpc://10.0.0.1:8155/path",
		"grpc://user@10.0.0.1:8155",
		"grpc://10.0.0.1:8155?x=1",
		"unix://relative/path",
		"unix:relative",
		"grpc:" + strings.Repeat("x", 2050),
	}
	for _, u := range bad {
		_, err := env.Nodes.RegisterNode(t.Context(), &dataplanev1.RegisterNodeRequest{NodeId: "n", BootId: "b", PrivateUrl: u})
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "private_url") {
			t.Errorf("private_url %q: got %v, want InvalidArgument naming private_url", u, err)
		}
	}
	_, err := env.Nodes.RegisterNode(t.Context(), &dataplanev1.RegisterNodeRequest{NodeId: strings.Repeat("n", 254), BootId: "b", PrivateUrl: good[0]})
	wantCode(t, err, connect.CodeInvalidArgument, "node_id")
	_, err = env.Nodes.RegisterNode(t.Context(), &dataplanev1.RegisterNodeRequest{NodeId: "n", PrivateUrl: good[0]})
	wantCode(t, err, connect.CodeInvalidArgument, "boot_id")
	if n := count(t, env, `SELECT count(*) FROM nodes`); n != len(good) {
		t.Errorf("%d nodes stored, want %d", n, len(good))
	}
}

func TestNewBootDropsPreviousTunnels(t *testing.T) {
	env, clk := routingEnv(t)
	register(t, env, "n1", "b1")
	if got := registerTunnels(t, env, "n1", "b1", tun("t1", 7, 1), tun("t2", 7, 2)); got != 2 {
		t.Fatalf("applied %d, want 2", got)
	}
	// The same boot registering again (say, after a lost response) keeps its tunnels.
	clk.Add(time.Second)
	register(t, env, "n1", "b1")
	if got := openTunnels(t, env, "n1"); !slices.Equal(got, []string{"t1", "t2"}) {
		t.Fatalf("after same-boot registration: tunnels %v", got)
	}
	// A restart (new boot) drops them.
	register(t, env, "n1", "b2")
	if got := openTunnels(t, env, "n1"); len(got) != 0 {
		t.Fatalf("after new boot: tunnels %v, want none", got)
	}
	if got := resolve(t, env, 7); len(got) != 0 {
		t.Fatalf("resolve after new boot = %v", got)
	}
	// The previous process may still be writing: refused.
	_, err := env.Nodes.RegisterTunnels(t.Context(), &dataplanev1.RegisterTunnelsRequest{NodeId: "n1", BootId: "b1", Tunnels: []*dataplanev1.Tunnel{tun("t3", 7, 3)}})
	wantCode(t, err, connect.CodeFailedPrecondition, "another boot")
	_, err = env.Nodes.UnregisterTunnels(t.Context(), &dataplanev1.UnregisterTunnelsRequest{NodeId: "n1", BootId: "b1", Tunnels: []*dataplanev1.Tunnel{tun("t3", 7, 4)}})
	wantCode(t, err, connect.CodeFailedPrecondition, "another boot")
	_, err = env.Nodes.RegisterTunnels(t.Context(), &dataplanev1.RegisterTunnelsRequest{NodeId: "nope", BootId: "b1", Tunnels: []*dataplanev1.Tunnel{tun("t3", 7, 3)}})
	wantCode(t, err, connect.CodeNotFound, "node not registered")
	if got := openTunnels(t, env, "n1"); len(got) != 0 {
		t.Fatalf("stale writes landed: %v", got)
	}
	// The new boot registers its own.
	if got := registerTunnels(t, env, "n1", "b2", tun("t1", 7, 1)); got != 1 {
		t.Fatalf("new boot applied %d, want 1", got)
	}
	if got := resolve(t, env, 7); len(got) != 1 || got[0].NodeId != "n1" || got[0].Tunnels != 1 {
		t.Fatalf("resolve = %v", got)
	}
}

// TestNewBootRace races a restart against the previous boot's tunnel
// writes: whatever the interleaving, no tunnel of the old boot survives.
func TestNewBootRace(t *testing.T) {
	env, _ := routingEnv(t)
	for i := range 20 {
		node := fmt.Sprint("race", i)
		register(t, env, node, "old")
		var wg sync.WaitGroup
		wg.Go(func() {
			for j := range 5 {
				_, err := env.Nodes.RegisterTunnels(t.Context(), &dataplanev1.RegisterTunnelsRequest{
					NodeId: node, BootId: "old", Tunnels: []*dataplanev1.Tunnel{tun(fmt.Sprint("old-", j), 1, int64(j+1))},
				})
				if err != nil && connect.CodeOf(err) != connect.CodeFailedPrecondition {
					t.Errorf("old boot write: %v", err)
				}
			}
		})
		wg.Go(func() {
			if _, err := env.Nodes.RegisterNode(t.Context(), &dataplanev1.RegisterNodeRequest{NodeId: node, BootId: "new", PrivateUrl: "grpc://x:1"}); err != nil {
				t.Errorf("new boot: %v", err)
			}
		})
		wg.Wait()
		if got := openTunnels(t, env, node); len(got) != 0 {
			t.Fatalf("iteration %d: tunnels of the old boot survived the new one: %v", i, got)
		}
	}
}

func TestTunnelFencing(t *testing.T) {
	env, _ := routingEnv(t)
	register(t, env, "n1", "b1")
	steps := []struct {
		name     string
		register bool
		tunnel   *dataplanev1.Tunnel
		applied  int32
		open     []string
	}{
		{"open t1", true, tun("t1", 5, 10), 1, []string{"t1"}},
		{"stale register of t1", true, tun("t1", 5, 9), 0, []string{"t1"}},
		{"replayed register of t1", true, tun("t1", 5, 10), 0, []string{"t1"}},
		{"close t1 with its own seq", false, tun("t1", 0, 10), 1, nil},
		{"close t1 again", false, tun("t1", 0, 10), 0, nil},
		{"late register cannot resurrect t1", true, tun("t1", 5, 10), 0, nil},
		{"stale close of t1", false, tun("t1", 0, 3), 0, nil},
		{"close overtakes register of t2", false, tun("t2", 0, 21), 1, nil},
		{"the overtaken register of t2", true, tun("t2", 5, 20), 0, nil},
		{"t1 reopened later", true, tun("t1", 5, 30), 1, []string{"t1"}},
		{"close with a newer seq", false, tun("t1", 0, 31), 1, nil},
	}
	for _, s := range steps {
		var got int32
		if s.register {
			got = registerTunnels(t, env, "n1", "b1", s.tunnel)
		} else {
			got = unregisterTunnels(t, env, "n1", "b1", s.tunnel)
		}
		if got != s.applied {
			t.Errorf("%s: applied %d, want %d", s.name, got, s.applied)
		}
		if open := openTunnels(t, env, "n1"); !slices.Equal(open, s.open) {
			t.Fatalf("%s: open tunnels %v, want %v", s.name, open, s.open)
		}
	}
	// Tombstones keep their seq.
	if n := count(t, env, `SELECT count(*) FROM tunnels WHERE node_id = 'n1' AND NOT open AND tunnel_id = 't2' AND seq = 21`); n != 1 {
		t.Errorf("tombstone of t2 missing")
	}
}

func TestTunnelBatches(t *testing.T) {
	env, _ := routingEnv(t)
	register(t, env, "n1", "b1")
	batch := make([]*dataplanev1.Tunnel, controlplane.MaxTunnelsPerCall)
	for i := range batch {
		batch[i] = tun(fmt.Sprint("t", i), int64(i%10+1), int64(i+1))
	}
	if got := registerTunnels(t, env, "n1", "b1", batch...); got != int32(len(batch)) {
		t.Fatalf("applied %d, want %d", got, len(batch))
	}
	// Half of them again, newer: only those apply.
	for i := range batch {
		batch[i].Seq += int64(i % 2 * 10000)
	}
	if got := registerTunnels(t, env, "n1", "b1", batch...); got != int32(len(batch)/2) {
		t.Fatalf("applied %d, want %d", got, len(batch)/2)
	}
	if got := resolve(t, env, 3); len(got) != 1 || got[0].Tunnels != 100 {
		t.Fatalf("resolve agent 3 = %v, want 100 tunnels on n1", got)
	}
	if got := unregisterTunnels(t, env, "n1", "b1", batch[:500]...); got != 500 {
		t.Fatalf("unregistered %d, want 500", got)
	}
	if n := len(openTunnels(t, env, "n1")); n != 500 {
		t.Fatalf("%d open tunnels, want 500", n)
	}
	if got := registerTunnels(t, env, "n1", "b1"); got != 0 {
		t.Fatalf("empty batch applied %d", got)
	}

	call := func(ts ...*dataplanev1.Tunnel) error {
		_, err := env.Nodes.RegisterTunnels(t.Context(), &dataplanev1.RegisterTunnelsRequest{NodeId: "n1", BootId: "b1", Tunnels: ts})
		return err
	}
	wantCode(t, call(append(batch, tun("one-more", 1, 1))...), connect.CodeInvalidArgument, "tunnels", "at most 1000")
	wantCode(t, call(tun("a", 1, 1), tun("b", 1, 2), tun("a", 1, 3)), connect.CodeInvalidArgument, "tunnels[2].tunnel_id")
	wantCode(t, call(tun("", 1, 1)), connect.CodeInvalidArgument, "tunnels[0].tunnel_id")
	wantCode(t, call(tun("a", 0, 1)), connect.CodeInvalidArgument, "tunnels[0].agent_id")
	wantCode(t, call(tun("a", 1, -1)), connect.CodeInvalidArgument, "tunnels[0].seq")
	wantCode(t, call(tun(strings.Repeat("x", 129), 1, 1)), connect.CodeInvalidArgument, "tunnels[0].tunnel_id")
	bad := tun("a", 1, 1)
	bad.ConnectedAt = &timestamppb.Timestamp{Seconds: -1 << 62}
	wantCode(t, call(bad), connect.CodeInvalidArgument, "tunnels[0].connected_at")
	nul := tun("a", 1, 1)
	nul.AgentVersion = "v1\x00"
	wantCode(t, call(nul), connect.CodeInvalidArgument, "tunnels[0].agent_version")
	wantCode(t, call(tun("a\x00", 1, 1)), connect.CodeInvalidArgument, "tunnels[0].tunnel_id")
}

func TestResolveAgentOrder(t *testing.T) {
	env, clk := routingEnv(t)
	const agent = 42
	for _, n := range []string{"live-2", "draining-3", "live-1", "expired-5"} {
		register(t, env, n, "b")
	}
	registerTunnels(t, env, "live-2", "b", tun("a", agent, 1), tun("b", agent, 2), tun("other", agent+1, 3))
	registerTunnels(t, env, "draining-3", "b", tun("a", agent, 1), tun("b", agent, 2), tun("c", agent, 3))
	registerTunnels(t, env, "live-1", "b", tun("a", agent, 1), tun("closed", agent, 2))
	unregisterTunnels(t, env, "live-1", "b", tun("closed", 0, 3))
	registerTunnels(t, env, "expired-5", "b", tun("a", agent, 1), tun("b", agent, 2), tun("c", agent, 3), tun("d", agent, 4), tun("e", agent, 5))
	if _, err := env.Nodes.SetDraining(t.Context(), &dataplanev1.SetDrainingRequest{NodeId: "draining-3", BootId: "b"}); err != nil {
		t.Fatal(err)
	}
	// Everyone but expired-5 keeps heartbeating.
	clk.Add(testLeaseTTL - time.Second)
	for _, n := range []string{"live-2", "draining-3", "live-1"} {
		if _, err := heartbeat(env, t, n, "b"); err != nil {
			t.Fatal(err)
		}
	}
	want := []*dataplanev1.AgentNode{
		{NodeId: "expired-5", PrivateUrl: "grpc://expired-5:8155", Tunnels: 5},
		{NodeId: "live-2", PrivateUrl: "grpc://live-2:8155", Tunnels: 2},
		{NodeId: "live-1", PrivateUrl: "grpc://live-1:8155", Tunnels: 1},
		{NodeId: "draining-3", PrivateUrl: "grpc://draining-3:8155", Tunnels: 3, Draining: true},
	}
	wantNodes(t, resolve(t, env, agent), want)
	clk.Add(2 * time.Second) // expired-5's lease lapses
	wantNodes(t, resolve(t, env, agent), want[1:])
	if got := resolve(t, env, 999); len(got) != 0 {
		t.Errorf("unknown agent resolved to %v", got)
	}
	_, err := env.Nodes.ResolveAgent(t.Context(), &dataplanev1.ResolveAgentRequest{})
	wantCode(t, err, connect.CodeInvalidArgument, "agent_id")

	// A node that comes back (registers again, same boot) is live again,
	// its tunnels intact.
	register(t, env, "expired-5", "b")
	wantNodes(t, resolve(t, env, agent), want)
}

func wantNodes(t *testing.T, got, want []*dataplanev1.AgentNode) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("resolved %v, want %v", got, want)
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.NodeId != w.NodeId || g.PrivateUrl != w.PrivateUrl || g.Tunnels != w.Tunnels || g.Draining != w.Draining {
			t.Fatalf("resolved[%d] = %v, want %v (all: %v)", i, g, w, got)
		}
	}
}

func TestDrainAndDeregister(t *testing.T) {
	env, _ := routingEnv(t)
	register(t, env, "n1", "b1")
	registerTunnels(t, env, "n1", "b1", tun("t1", 1, 1))
	ctx := t.Context()

	_, err := env.Nodes.SetDraining(ctx, &dataplanev1.SetDrainingRequest{NodeId: "n1", BootId: "b0"})
	wantCode(t, err, connect.CodeNotFound, "node not registered")
	_, err = env.Nodes.SetDraining(ctx, &dataplanev1.SetDrainingRequest{NodeId: "n2", BootId: "b1"})
	wantCode(t, err, connect.CodeNotFound, "node not registered")
	if _, err := env.Nodes.SetDraining(ctx, &dataplanev1.SetDrainingRequest{NodeId: "n1", BootId: "b1"}); err != nil {
		t.Fatal(err)
	}
	if got := resolve(t, env, 1); len(got) != 1 || !got[0].Draining {
		t.Fatalf("resolve = %v, want n1 draining", got)
	}
	// Registering again ends draining.
	register(t, env, "n1", "b1")
	if got := resolve(t, env, 1); len(got) != 1 || got[0].Draining {
		t.Fatalf("resolve = %v, want n1 not draining", got)
	}

	_, err = env.Nodes.DeregisterNode(ctx, &dataplanev1.DeregisterNodeRequest{NodeId: "n1", BootId: "b0"})
	wantCode(t, err, connect.CodeNotFound, "node not registered")
	if _, err := env.Nodes.DeregisterNode(ctx, &dataplanev1.DeregisterNodeRequest{NodeId: "n1", BootId: "b1"}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, env, `SELECT count(*) FROM tunnels`) + count(t, env, `SELECT count(*) FROM nodes`); n != 0 {
		t.Fatalf("%d rows left after deregistration", n)
	}
	_, err = heartbeat(env, t, "n1", "b1")
	wantCode(t, err, connect.CodeNotFound, "node not registered")
}

// TestStaleNodesSwept: nodes that stopped heartbeating disappear through
// the statements that run anyway, with no background loop.
func TestStaleNodesSwept(t *testing.T) {
	env, clk := routingEnv(t)
	register(t, env, "dead", "b")
	register(t, env, "alive", "b")
	registerTunnels(t, env, "dead", "b", tun("t1", 1, 1), tun("t2", 2, 2))
	registerTunnels(t, env, "alive", "b", tun("t1", 1, 1), tun("t2", 2, 2))
	unregisterTunnels(t, env, "alive", "b", tun("t2", 0, 3))

	// Within the grace period the expired node stays (stale, not routed).
	clk.Add(testLeaseTTL + testStaleGrace - time.Second)
	register(t, env, "alive", "b") // same boot: keeps its tunnels
	if n := count(t, env, `SELECT count(*) FROM nodes WHERE node_id = 'dead'`); n != 1 {
		t.Fatal("expired node deleted before its grace period ended")
	}
	if n := count(t, env, `SELECT count(*) FROM tunnels WHERE node_id = 'alive' AND NOT open`); n != 1 {
		t.Fatal("tombstone swept before the grace period ended")
	}
	clk.Add(2 * time.Second)
	if _, err := heartbeat(env, t, "alive", "b"); err != nil {
		t.Fatal(err)
	}
	if n := count(t, env, `SELECT count(*) FROM nodes WHERE node_id = 'dead'`); n != 0 {
		t.Fatal("heartbeat did not sweep the expired node")
	}
	if n := count(t, env, `SELECT count(*) FROM tunnels WHERE node_id = 'dead'`); n != 0 {
		t.Fatal("tunnels of the swept node remain")
	}
	if n := count(t, env, `SELECT count(*) FROM tunnels WHERE node_id = 'alive' AND NOT open`); n != 0 {
		t.Fatal("heartbeat did not sweep its old tombstone")
	}
	if got := openTunnels(t, env, "alive"); !slices.Equal(got, []string{"t1"}) {
		t.Fatalf("alive's tunnels = %v", got)
	}
	// The swept node comes back: NotFound, then it registers again.
	_, err := heartbeat(env, t, "dead", "b")
	wantCode(t, err, connect.CodeNotFound, "node not registered")

	// Registration sweeps too.
	register(t, env, "dead2", "b")
	clk.Add(testLeaseTTL + testStaleGrace + time.Second)
	register(t, env, "newcomer", "b")
	if n := count(t, env, `SELECT count(*) FROM nodes WHERE node_id IN ('dead2', 'alive')`); n != 0 {
		t.Fatalf("registration left %d expired nodes", n)
	}
}

// TestHeartbeatTouchesNoTunnel: with 10,000 tunnels on a node, a heartbeat
// rewrites none of them, and its tombstone sweep reads only tombstones.
func TestHeartbeatTouchesNoTunnel(t *testing.T) {
	env, clk := routingEnv(t)
	register(t, env, "big", "b")
	for b := range 10 {
		batch := make([]*dataplanev1.Tunnel, 1000)
		for i := range batch {
			n := b*1000 + i
			batch[i] = tun(fmt.Sprint("t", n), int64(n%500+1), int64(n+1))
		}
		registerTunnels(t, env, "big", "b", batch...)
	}
	snapshot := func() string {
		var s string
		if err := pool(env).QueryRow(t.Context(), `SELECT md5(string_agg(ctid::text || xmin::text, ',' ORDER BY tunnel_id)) FROM tunnels`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := snapshot()
	clk.Add(time.Second)
	if _, err := heartbeat(env, t, "big", "b"); err != nil {
		t.Fatal(err)
	}
	if snapshot() != before {
		t.Fatal("heartbeat rewrote tunnel rows")
	}
	if n := count(t, env, `SELECT count(*) FROM tunnels WHERE node_id = 'big' AND open`); n != 10000 {
		t.Fatalf("%d open tunnels, want 10000", n)
	}
	// The sweep's access path is the tombstone index, not the node's tunnels.
	if _, err := pool(env).Exec(t.Context(), `ANALYZE tunnels`); err != nil {
		t.Fatal(err)
	}
	var plan string
	if err := pool(env).QueryRow(t.Context(), `EXPLAIN (FORMAT JSON) DELETE FROM tunnels WHERE node_id = 'big' AND NOT open AND updated_at < now()`).Scan(&plan); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(plan, "tunnels_tombstones_idx") {
		t.Fatalf("tombstone sweep plan does not use the tombstone index: %s", plan)
	}
}

func TestGC(t *testing.T) {
	env, clk := routingEnv(t)
	ctx := t.Context()
	a := createAgent(t, env, 1, "gc")
	register(t, env, "dead", "b")
	register(t, env, "alive", "b")
	registerTunnels(t, env, "dead", "b", tun("t1", a.Id, 1), tun("t2", a.Id, 2))
	registerTunnels(t, env, "alive", "b", tun("t1", a.Id, 1), tun("t2", a.Id, 2))
	unregisterTunnels(t, env, "alive", "b", tun("t2", 0, 3))

	// Credentials: one expiring soon, one revoked, one long-lived.
	expiring := must[*managementv1.CreateAccessTokenResponse](t)(env.Credentials.CreateAccessToken(ctx, &managementv1.CreateAccessTokenRequest{
		User: &managementv1.UserIdentity{Id: 1, Username: "u"}, AgentIds: []int64{a.Id}, ExpiresAt: timestamppb.New(clk.Now().Add(time.Hour)),
	}))
	revoked := must[*managementv1.CreateCIJobTokenResponse](t)(env.Credentials.CreateCIJobToken(ctx, &managementv1.CreateCIJobTokenRequest{
		Job: &managementv1.CIJob{JobId: 1, ProjectId: 1, ProjectPath: "g/p"}, ExpiresAt: timestamppb.New(clk.Now().Add(6 * 24 * time.Hour)),
	}))
	must[*managementv1.RevokeCIJobTokenResponse](t)(env.Credentials.RevokeCIJobToken(ctx, &managementv1.RevokeCIJobTokenRequest{Id: revoked.Id}))
	kept := must[*managementv1.CreateSessionResponse](t)(env.Credentials.CreateSession(ctx, &managementv1.CreateSessionRequest{
		User: &managementv1.UserIdentity{Id: 1, Username: "u"}, ExpiresAt: timestamppb.New(clk.Now().Add(29 * 24 * time.Hour)),
	}))

	nodes, tunnels, err := env.Server.GC(ctx)
	if err != nil || nodes != 0 || tunnels != 0 {
		t.Fatalf("GC with nothing to do = %d, %d, %v", nodes, tunnels, err)
	}

	clk.Add(testLeaseTTL - time.Second)
	if _, err := heartbeat(env, t, "alive", "b"); err != nil {
		t.Fatal(err)
	}
	clk.Add(testStaleGrace + 2*time.Second) // dead: expired beyond grace; alive: expired, within grace
	nodes, tunnels, err = env.Server.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// dead with 2 tunnels, and alive's tombstone (older than grace).
	if nodes != 1 || tunnels != 3 {
		t.Fatalf("GC = %d nodes, %d tunnels; want 1, 3", nodes, tunnels)
	}
	if got := openTunnels(t, env, "alive"); !slices.Equal(got, []string{"t1"}) {
		t.Fatalf("alive's tunnels after GC = %v", got)
	}
	if n := count(t, env, `SELECT count(*) FROM nodes`); n != 1 {
		t.Fatalf("%d nodes after GC, want 1", n)
	}
	// Credentials stay a week after they end.
	if n := count(t, env, `SELECT count(*) FROM access_tokens`) + count(t, env, `SELECT count(*) FROM ci_job_tokens`) + count(t, env, `SELECT count(*) FROM sessions`); n != 3 {
		t.Fatalf("%d credentials after GC, want 3", n)
	}
	clk.Add(7*24*time.Hour + 2*time.Hour)
	if _, _, err := env.Server.GC(ctx); err != nil {
		t.Fatal(err)
	}
	if n := count(t, env, `SELECT count(*) FROM access_tokens WHERE id = $1`, expiring.Token.Id); n != 0 {
		t.Error("access token expired over a week ago survived GC")
	}
	if n := count(t, env, `SELECT count(*) FROM ci_job_tokens WHERE id = $1`, revoked.Id); n != 0 {
		t.Error("CI job token revoked over a week ago survived GC")
	}
	if n := count(t, env, `SELECT count(*) FROM sessions WHERE id = $1`, kept.Id); n != 1 {
		t.Error("valid session deleted by GC")
	}
	if n := count(t, env, `SELECT count(*) FROM nodes`); n != 0 {
		t.Errorf("%d nodes after everything expired", n)
	}
}
