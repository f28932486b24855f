package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	dpv1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
)

// memSample is one "mem" answer of a child.
type memSample struct {
	heapInuse, stackInuse, rss, goroutines int64
}

// memDelta is the memory a node process gained while n tunnels connected.
type memDelta struct {
	before, after memSample
	n             int
}

type perTunnel struct {
	heapStack, stack, rss, goroutines float64
}

func (d memDelta) perTunnel() perTunnel {
	n := float64(d.n)
	return perTunnel{
		heapStack:  float64(d.after.heapInuse+d.after.stackInuse-d.before.heapInuse-d.before.stackInuse) / n,
		stack:      float64(d.after.stackInuse-d.before.stackInuse) / n,
		rss:        float64(d.after.rss-d.before.rss) / n,
		goroutines: float64(d.after.goroutines-d.before.goroutines) / n,
	}
}

// routing is how long agents took to be routed: the control plane's time
// of each agent's tunnel registration, from the start.
type routing struct {
	all, p50, p99   time.Duration
	complete        bool
	refused, failed int64 // agents' handshakes refused (503) and failed otherwise
	noBackend       int64 // connections the load balancer could not place
}

type fleetResult struct {
	rawMem, kasMem     memDelta
	initial, reconnect routing
	deadGone           time.Duration
	cpErrors           int64
	retries            retries // the agents' connection attempts after the kill
	notes              []string
}

func readMem(p *proc) (memSample, error) {
	v, err := p.callInts("mem", time.Minute)
	if err != nil {
		return memSample{}, err
	}
	if len(v) != 4 {
		return memSample{}, fmt.Errorf("%s: mem: %v", p.name, v)
	}
	return memSample{heapInuse: v[0], stackInuse: v[1], rss: v[2], goroutines: v[3]}, nil
}

// fleet is the agent children.
type fleet []*proc

func startFleet(ctx context.Context, c config, creds []cred, backends []string, raw bool) (fleet, error) {
	var f fleet
	for i := 0; i < len(creds); i += c.perChild {
		cfg := fleetConfig{Agents: creds[i:min(len(creds), i+c.perChild)], Backends: backends, Raw: raw}
		p, _, err := startProc(ctx, fmt.Sprintf("fleet %d", len(f)), "fleet", cfg, "built", 2*time.Minute)
		if err != nil {
			f.kill()
			return nil, err
		}
		f = append(f, p)
	}
	return f, nil
}

func (f fleet) start() error {
	for _, p := range f {
		if _, err := p.call("go", 10*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// sum adds up an integer answer of every child.
func (f fleet) sum(cmd string) ([]int64, error) {
	var total []int64
	for _, p := range f {
		v, err := p.callInts(cmd, 30*time.Second)
		if err != nil {
			return nil, err
		}
		if total == nil {
			total = make([]int64, len(v))
		}
		for i := range v {
			total[i] += v[i]
		}
	}
	return total, nil
}

// collect concatenates an integer answer of every child.
func (f fleet) collect(cmd string) ([]int64, error) {
	var all []int64
	for _, p := range f {
		v, err := p.callInts(cmd, time.Minute)
		if err != nil {
			return nil, err
		}
		all = append(all, v...)
	}
	return all, nil
}

func (f fleet) kill() {
	var wg sync.WaitGroup
	for _, p := range f {
		wg.Go(p.kill)
	}
	wg.Wait()
}

// measureFleet measures the node's memory per idle tunnel against raw
// WebSockets, then connects the fleet to node A (baseline), kills A and
// measures how long the agents take to be routed through node B and when
// they tried. With c.stormOnly it skips the memory measurements.
func measureFleet(ctx context.Context, cp *cpEnv, c config) (res fleetResult, err error) {
	fmt.Fprintf(os.Stderr, "creating %d agents\n", c.agents)
	creds, err := cp.createAgents(ctx, "fleet", c.agents)
	if err != nil {
		return res, err
	}

	// Baseline: plain WebSockets held by one goroutine each.
	if !c.stormOnly {
		if res.rawMem, err = rawMemory(ctx, c, creds); err != nil {
			return res, fmt.Errorf("raw WebSocket memory: %w", err)
		}
	}

	fmt.Fprintf(os.Stderr, "starting nodes\n")
	cfg := func(id string) nodeConfig {
		return nodeConfig{NodeID: id, ControlPlaneURL: cp.url, Key: cp.privateKey}
	}
	nodeA, fa, err := startProc(ctx, "node A", "node", cfg("node-a"), "ready", time.Minute)
	if err != nil {
		return res, err
	}
	defer nodeA.kill()
	nodeB, fb, err := startProc(ctx, "node B", "node", cfg("node-b"), "ready", time.Minute)
	if err != nil {
		return res, err
	}
	defer nodeB.kill()

	agents, err := startFleet(ctx, c, creds, []string{fa[0], fb[0]}, false)
	if err != nil {
		return res, err
	}
	defer agents.kill()
	if !c.stormOnly {
		if res.kasMem.before, err = readMem(nodeA); err != nil {
			return res, err
		}
	}
	cpErrs0 := cp.logs.errs.Load()
	conns0 := cp.conns.Load()

	fmt.Fprintf(os.Stderr, "connecting %d agents to node A\n", c.agents)
	t0 := time.Now()
	if err := agents.start(); err != nil {
		return res, err
	}
	progress := func(node *proc) func(int) {
		return func(routed int) {
			msg := fmt.Sprintf("%v: %d agents routed to %s", time.Since(t0).Round(time.Second), routed, node.name)
			if v, err := node.callInts("stats", 10*time.Second); err == nil {
				msg += fmt.Sprintf("; it holds %d tunnels, %d fds, logged %d warnings", v[0], v[3], v[1])
			}
			if v, err := agents.sum("count"); err == nil {
				msg += fmt.Sprintf("; %d agents have a tunnel", v[0])
			}
			if v, err := agents.sum("stats"); err == nil {
				msg += fmt.Sprintf("; handshakes refused %d, failed %d", v[0], v[1])
			}
			fmt.Fprintln(os.Stderr, msg)
		}
	}
	if res.initial, err = waitRouted(ctx, cp, "node-a", c.agents, t0, c.storm, progress(nodeA)); err != nil {
		return res, err
	}
	if v, err := agents.sum("stats"); err == nil {
		res.initial.refused, res.initial.failed, res.initial.noBackend = v[0], v[1], v[2]
	}
	if !res.initial.complete {
		return res, fmt.Errorf("only some of %d agents routed to node A within %v", c.agents, c.storm)
	}
	if !c.stormOnly {
		if res.kasMem.after, err = readMem(nodeA); err != nil {
			return res, err
		}
	}
	if c.profileDir != "" {
		if _, err := nodeA.call("profile "+c.profileDir, time.Minute); err != nil {
			return res, err
		}
	}
	st, err := nodeA.callInts("stats", time.Minute)
	if err != nil {
		return res, err
	}
	res.kasMem.n = int(st[0])
	if res.kasMem.n != c.agents && !c.stormOnly {
		res.notes = append(res.notes, fmt.Sprintf("node A held %d tunnels for %d agents when measured", res.kasMem.n, c.agents))
	}

	if c.profileDir != "" {
		// CPU profiles of the reconnect storm: node B's, and this
		// process's (the control plane).
		if _, err := nodeB.call("cpuprofile "+c.profileDir, time.Minute); err != nil {
			return res, err
		}
		f, err := os.Create(filepath.Join(c.profileDir, "controlplane-cpu.pprof"))
		if err != nil {
			return res, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return res, err
		}
	}
	res.notes = append(res.notes, fmt.Sprintf("control plane: %d connections accepted while %d agents connected", cp.conns.Load()-conns0, c.agents))
	conns0 = cp.conns.Load()
	fmt.Fprintf(os.Stderr, "killing node A\n")
	tKill := time.Now()
	nodeA.kill()
	t0 = tKill
	if res.reconnect, err = waitRouted(ctx, cp, "node-b", c.agents, tKill, c.storm, progress(nodeB)); err != nil {
		return res, err
	}
	if v, err := agents.sum("stats"); err == nil {
		r, i := &res.reconnect, res.initial
		r.refused, r.failed, r.noBackend = v[0]-i.refused, v[1]-i.failed, v[2]-i.noBackend
	}
	if c.profileDir != "" {
		pprof.StopCPUProfile()
		if _, err := nodeB.call("cpuprofile stop", time.Minute); err != nil {
			return res, err
		}
	}
	if !res.reconnect.complete {
		res.notes = append(res.notes, fmt.Sprintf("not every agent was routed to node B within %v", c.storm))
	}
	since := fmt.Sprintf(" %d", tKill.UnixNano())
	if res.retries.first, err = agents.collect("first" + since); err != nil {
		return res, err
	}
	if res.retries.all, err = agents.collect("attempts" + since); err != nil {
		return res, err
	}
	if res.retries.died, err = agents.collect("died" + since); err != nil {
		return res, err
	}
	if res.retries.backoff, err = agents.collect("backoff" + since); err != nil {
		return res, err
	}
	res.notes = append(res.notes, fmt.Sprintf("first retries per %v after the kill, 0–2 s: %v", spreadWindow, res.retries.spread(c.agents).firstPerWindow))
	if n := len(res.retries.first); n != c.agents {
		res.notes = append(res.notes, fmt.Sprintf("%d of %d agents tried to connect after the kill", n, c.agents))
	}

	// The dead node stays in the agents' routes until its lease expires;
	// nodes that try it meanwhile fail over to the next route.
	if err := waitFor(c.storm, func() bool {
		var n int
		err := cp.pool.QueryRow(ctx, `SELECT count(*) FROM agent_routes WHERE node_id = 'node-a' AND state <> 'stale'`).Scan(&n)
		return err == nil && n == 0
	}); err != nil {
		res.notes = append(res.notes, "node A's routes did not expire: "+err.Error())
	}
	res.deadGone = time.Since(tKill)

	// Every agent must now resolve to node B, and only to it.
	res.notes = append(res.notes, fmt.Sprintf("control plane: %d connections accepted while %d agents reconnected", cp.conns.Load()-conns0, c.agents))
	resolveErrs, wrong := resolveAll(ctx, cp, creds, "node-b")
	nb, err := nodeB.callInts("stats", time.Minute)
	if err != nil {
		return res, err
	}
	cpErrs := cp.logs.errs.Load() - cpErrs0
	res.cpErrors = resolveErrs + cpErrs + nb[2]
	res.notes = append(res.notes, fmt.Sprintf("control plane: %d errors logged, %d failed ResolveAgent calls, %d agents resolved elsewhere than node B alone; node B: %d tunnels, %d warnings, %d errors logged",
		cpErrs, resolveErrs, wrong, nb[0], nb[1], nb[2]))
	if wrong > 0 {
		res.reconnect.complete = false
	}
	return res, nil
}

// rawMemory holds one plain WebSocket per agent on a raw server child and
// returns its memory before and after.
func rawMemory(ctx context.Context, c config, creds []cred) (memDelta, error) {
	fmt.Fprintf(os.Stderr, "raw WebSocket baseline: %d connections\n", len(creds))
	srv, f, err := startProc(ctx, "raw server", "raw", struct{}{}, "ready", time.Minute)
	if err != nil {
		return memDelta{}, err
	}
	defer srv.kill()
	fl, err := startFleet(ctx, c, creds, []string{f[0]}, true)
	if err != nil {
		return memDelta{}, err
	}
	defer fl.kill()
	d := memDelta{n: len(creds)}
	if d.before, err = readMem(srv); err != nil {
		return d, err
	}
	if err := fl.start(); err != nil {
		return d, err
	}
	if err := waitFor(c.storm, func() bool {
		v, err := srv.callInts("count", 10*time.Second)
		return err == nil && v[0] == int64(len(creds))
	}); err != nil {
		return d, fmt.Errorf("raw connections: %w", err)
	}
	d.after, err = readMem(srv)
	return d, err
}

// waitRouted waits until the control plane holds an open tunnel on node
// for n agents (or bound passes) and returns, from each agent's
// registration time (the control plane's clock), how long after start
// they were routed.
func waitRouted(ctx context.Context, cp *cpEnv, node string, n int, start time.Time, bound time.Duration, progress func(routed int)) (routing, error) {
	var r routing
	lastReport := time.Now()
	err := waitFor(bound, func() bool {
		var got int
		err := cp.pool.QueryRow(ctx, `SELECT count(DISTINCT agent_id) FROM tunnels WHERE node_id = $1 AND open`, node).Scan(&got)
		if time.Since(lastReport) >= 5*time.Second {
			lastReport = time.Now()
			progress(got)
		}
		return err == nil && got >= n
	})
	r.complete = err == nil
	rows, err := cp.pool.Query(ctx, `SELECT min(updated_at) FROM tunnels WHERE node_id = $1 AND open GROUP BY agent_id`, node)
	if err != nil {
		return r, fmt.Errorf("read routes: %w", err)
	}
	var ds []time.Duration
	for rows.Next() {
		var t time.Time
		if err := rows.Scan(&t); err != nil {
			return r, err
		}
		ds = append(ds, t.Sub(start))
	}
	if err := rows.Err(); err != nil {
		return r, err
	}
	if len(ds) == 0 {
		return r, fmt.Errorf("no agent routed to %s", node)
	}
	p := percentilesOf(ds)
	r.p50, r.p99, r.all = p.p50, p.p99, slices.Max(ds)
	if !r.complete {
		r.all = bound
	}
	return r, nil
}

// resolveAll asks the control plane where every agent is, as a node
// would, and counts failed calls and agents not resolved to node only.
func resolveAll(ctx context.Context, cp *cpEnv, creds []cred, node string) (errs, wrong int64) {
	var (
		next     atomic.Int64
		nErr, nW atomic.Int64
		wg       sync.WaitGroup
	)
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(creds) {
					return
				}
				resp, err := cp.nodes.ResolveAgent(ctx, &dpv1.ResolveAgentRequest{AgentId: creds[i].ID})
				switch {
				case err != nil:
					if nErr.Add(1) <= maxPrinted {
						fmt.Fprintln(os.Stderr, "ResolveAgent:", err)
					}
				case len(resp.GetNodes()) != 1 || resp.GetNodes()[0].GetNodeId() != node:
					nW.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return nErr.Load(), nW.Load()
}
