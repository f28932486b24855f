// Command faults is the load-and-fault harness: it starts real kas roles,
// puts steady load on them, injects one fault per scenario, and prints one
// table of what the load saw before, during and after each fault.
//
//	go run ./tests/bench/faults                 # full run, ~12 minutes
//	go run ./tests/bench/faults -short          # CI (make bench; also KAS_BENCH_SHORT=1), ~3 minutes
//	go run ./tests/bench/faults -scenario rolling,sigkill -check
//
// -check makes a missed goal exit 1; -duration sets the phases (20 s, 4 s
// with -short); -keep keeps the temporary directory with the children's
// logs (agents.log, node-N.log, controlplane-N.log, postgres.log), which
// is also kept, and its path printed, when a goal is missed.
//
// The topology, all on loopback, all real code:
//
//   - Postgres (internal/pglocal, fsync off), reached by the control planes
//     through a cutting TCP proxy (so that "unreachable" is a partition at
//     the proxy: nothing forwarded, nothing closed, TCP waits);
//   - two control-plane replicas, each the real `kas controlplane` (this
//     binary re-executed, running app.CLI with KAS_* settings), behind a
//     round-robin balancer that follows their /readyz;
//   - three dataplane nodes, each the real `kas dataplane` (drain grace
//     10 s), whose registered private URL (OWN_PRIVATE_API_URL) is a cutting
//     proxy in front of its private API;
//   - agents (package agent, production defaults but a 2 s retry for a
//     second node; two tunnels each, one for agent 0) reaching the nodes'
//     agent ports through a balancer, and clients reaching the nodes'
//     Kubernetes API proxy through another; both balancers are a Service:
//     new connections go round robin to the nodes whose /readyz answers 200
//     (probed every 500 ms), skipping a node that refuses;
//   - the agents' Kubernetes API, an in-process fake: a small pod list, a
//     watch with an event every 100 ms, and a log that follows as fast as
//     it is read.
//
// The load of every scenario: request/response loops (GET pods, each loop
// one request per 50 ms, a kubectl-like http.Transport with no retry but
// the standard library's own) and watches that re-establish when they end,
// each with its agent's access token (Bearer pat:<agent>:<token>). The
// Postgres and control-plane scenarios add management writes
// (CreateAgentToken with a unique name, 5 s timeout): one loop at 20 per
// second, four back to back for cpkill. Each write is done, refused (a
// server answered with an error) or has no answer; afterwards the database
// must hold every done write exactly once and no refused one; how many of
// the unanswered ones were stored is counted.
//
// A scenario runs three phases: before (load only), during (the fault and
// its repair) and after (load only). Then the load stops and the topology
// must settle within a bound: every agent has its tunnels, the nodes count
// as many, and the database agrees (node_status: every node live, no row
// of a dead node; as many open tunnels rows as the nodes hold). In the
// full run each scenario must moreover return to its own baseline: the
// nodes' live tunnel streams (kas_dataplane_tunnel_streams_total opened +
// accepted - closed) and goroutines (go_goroutines, within 10% + 50). The
// nodes keep idle pooled connections to agents, one stream each, for 30 s,
// so this takes 30 s; the short run checks it once, after the last
// scenario, against the first baseline (row "(all)").
//
// Scenarios (-scenario, comma separated; default all):
//
//	rolling   SIGTERM each node in turn, wait for its exit, start it again,
//	          wait for /readyz. Goal: zero failed requests.
//	sigkill   SIGKILL one node; restart it after the phase. Goal: requests
//	          succeed again within 5 s of the kill (figure: last failure -
//	          kill; 0 when none failed).
//	slow      on agent 0 (one tunnel), two log -f streams read flat out;
//	          during, one more log -f stream that is never read. Goal: the
//	          busy streams' throughput during ≥ 90% of the lower of before
//	          and after (figure: that ratio; the notes give the drift
//	          between before and after, which has no stall).
//	cpkill    SIGKILL one control-plane replica with writes in flight;
//	          restart it after the phase. Goal: no failed request, no
//	          write lost, duplicated or stored after a refusal.
//	netcut    partition node-3's private API from the other nodes (relays
//	          to it hang), then heal. Goal: zero failed requests.
//	pgrestart stop Postgres (fast shutdown) and start it again. Goal:
//	          established tunnels keep serving (no failed request), writes
//	          clean.
//	pgoutage  partition Postgres for 30 s (10 s with -short), then heal.
//	          Goal: as pgrestart.
//	storm     builds and runs `tests/bench/dataplane -storm-json` (10,000
//	          agents, 1,000 with -short, reconnect at once after SIGKILL of
//	          their node) and reports its figures. Goal: all routed again
//	          within 60 s, no control-plane errors, backoff spread.
//
// Figures of the latest full run (go run ./tests/bench/faults, 12 min 10 s,
// on the 2-core VM), the table as printed, then a digest of the notes
// printed under it:
//
//	fault harness: 2 cores, 3 nodes, 2 control planes, 300 agents, 16 request loops (1 per 50ms), 50 watches, phases of 20s, short=false
//	scenario   sent   ok     failed  watch re-est.  p50/p99 before  during       after         recovery     lost/dup  baseline   goal                        verdict
//	rolling    26240  26236  4       108            5.2ms/29ms      6.2ms/22ms   3.4ms/7.4ms   -            -         ok 30.2 s  0 failed                    MISSED
//	sigkill    19232  19232  0       18             4.2ms/17ms      3.6ms/6.9ms  4.1ms/6.6ms   0.00 s       -         ok 30.2 s  ok again ≤ 5 s              ok
//	slow       19183  19183  0       0              15ms/72ms       16ms/44ms    16ms/42ms     ratio 0.951  -         ok 30.2 s  busy ≥ 90%                  ok
//	cpkill     19232  19232  0       0              5.7ms/23ms      4.8ms/13ms   4.8ms/12ms    -            0/0       ok 29.9 s  0 failed, writes clean      ok
//	netcut     19195  19195  0       0              4.4ms/17ms      4.2ms/7.6ms  6.0ms/13ms    -            -         ok 30.1 s  0 failed                    ok
//	pgrestart  19264  19264  0       0              5.5ms/17ms      4.3ms/11ms   4.5ms/10.0ms  -            0/0       ok 30.0 s  0 failed, writes clean      ok
//	pgoutage   28798  28798  0       0              5.1ms/20ms      4.4ms/11ms   4.7ms/10ms    -            0/0       ok 30.2 s  0 failed, writes clean      ok
//	storm      10000  10000  0       0              -               -            -             7.3 s        -         -          routed ≤ 60 s, 0 cp errors  ok
//
//	rolling   4 × 502: requests at the draining node for agents whose
//	          replacement tunnel was not up within the 5 s dial timeout
//	          ("tunnels did not take the request in time"): the agent's
//	          replacement handshake had met the draining node (the balancer
//	          learns of the drain within a readiness period) and waited its
//	          5 s Retry-After. Fixed after this run (a draining node now
//	          answers Retry-After: 1); the rolling scenario alone, run again
//	          (go run ./tests/bench/faults -scenario rolling): 1 failed of
//	          26,846, cause (b) below. Nodes exit 15 s after SIGTERM.
//	sigkill   241 agents had a tunnel on node-2; every agent had all its
//	          tunnels again 1.01 s after the kill; no request failed
//	slow      busy streams 149 / 142 / 153 MiB/s before / during / after
//	cpkill    94,415 writes done, 6 unanswered (2 cut by the kill, 1 of
//	          them stored; 4 cut by the end of the run), none lost,
//	          duplicated or stored after a refusal
//	pgrestart Postgres down 0.2 s; 4 writes refused (internal), none stored
//	pgoutage  30 s partition: 0 failed requests; 503 writes unanswered
//	          (both control planes unready: the Service resets), none stored
//	storm     connect 8.5 s; all re-routed 7.3 s (p50 5.0 s, p99 7.3 s);
//	          0 control-plane errors; attempts per second 4851 5125 764 113
//
// Reading it (what the harness found, what was fixed, what is left):
//
//   - Rolling restart, zero failed requests: not yet; 1 failure in 26,846
//     in the last run. Fixed along the way: (a) a draining node whose
//     last tunnel of an agent had just closed answered 503 "not
//     connected" for the ~0.2 s until the agent's new route reached the
//     control plane (now it waits: agentserver.ErrMoving); a refused
//     handshake was retried over its kept-alive connection to the same
//     draining node (now every handshake has a connection of its own, and
//     a refusal closes it) and waited a 5 s Retry-After (now 1 s); a
//     stream the agent refused while retiring a tunnel failed (now opened
//     again elsewhere, and the agent acknowledges GOAWAY before it
//     closes). Left: (b) a request sent in the instant the agent closes a
//     retired tunnel's kept-alive stream ends with EOF: 502 "broke before
//     the agent answered".
//   - 429 with no failed authentication: more than 20 concurrent cache
//     misses from one address were refused; fixed (attempts in flight now
//     wait for a reserved token instead).
//   - Postgres unreachable: tunnels keep serving from cached routes and
//     decisions; a request whose route lookup hung on the control plane
//     failed at its deadline although a cached route existed (fixed: the
//     cached route is used after 500 ms). A request that needs a decision
//     not cached gets 503 (an earlier short run: 91 of 3,520; 0 in the
//     last full run): the control plane cannot decide without its
//     database, and decisions are not served past their TTL. Writes are
//     never lost, duplicated or stored after a refusal; an unanswered one
//     is ambiguous to the client (1 of 6 in the control-plane kill was
//     stored), and CreateAgentToken has no idempotency key, so a client
//     that retries one may create two.
//   - A partitioned node's relays hang until the relay's timeout (3 s):
//     requests fail over, but some take 3-4 s.
//   - The baseline column is 30 s everywhere: the nodes keep idle pooled
//     connections to agents (one tunnel stream each) for 30 s after the
//     load stops; no goroutine, stream or database row is left after that.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

type config struct {
	short      bool
	phase      time.Duration // length of the before and after phases, and of a timed fault
	outage     time.Duration // Postgres partition
	agents     int
	loops      int           // request/response loops
	interval   time.Duration // between a loop's requests
	watches    int
	nodes      int
	drainGrace time.Duration
	probe      time.Duration // balancers' readiness period
	settle     time.Duration // bound on the return to baseline
	keep       bool
	scenarios  []string
}

var allScenarios = []string{"rolling", "sigkill", "slow", "cpkill", "netcut", "pgrestart", "pgoutage", "storm"}

func main() {
	if os.Getenv(roleEnv) != "" {
		os.Exit(runChild())
	}
	var c config
	flag.BoolVar(&c.short, "short", os.Getenv("KAS_BENCH_SHORT") == "1", "CI run: fewer agents, shorter phases (also KAS_BENCH_SHORT=1)")
	flag.DurationVar(&c.phase, "duration", 0, "length of each phase (default 20s; 4s with -short)")
	scen := flag.String("scenario", strings.Join(allScenarios, ","), "scenarios to run, comma separated: "+strings.Join(allScenarios, ","))
	flag.BoolVar(&c.keep, "keep", false, "keep the temporary directory (children's logs, Postgres data)")
	check := flag.Bool("check", false, "exit with status 1 when a goal is missed")
	flag.Parse()
	c.scenarios = strings.Split(*scen, ",")
	for _, s := range c.scenarios {
		if !slices.Contains(allScenarios, s) {
			fmt.Fprintf(os.Stderr, "faults: unknown scenario %q (have %s)\n", s, strings.Join(allScenarios, ","))
			os.Exit(2)
		}
	}
	c.nodes, c.drainGrace, c.probe, c.interval = 3, 10*time.Second, 500*time.Millisecond, 50*time.Millisecond
	if c.short {
		c.agents, c.loops, c.watches, c.outage, c.settle = 30, 8, 8, 10*time.Second, 45*time.Second
		if c.phase == 0 {
			c.phase = 4 * time.Second
		}
	} else {
		c.agents, c.loops, c.watches, c.outage, c.settle = 300, 16, 50, 30*time.Second, 90*time.Second
		if c.phase == 0 {
			c.phase = 20 * time.Second
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	met, err := run(ctx, c, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		os.Exit(2)
	}
	fmt.Fprintf(os.Stderr, "took %v\n", time.Since(start).Round(time.Second))
	if !met {
		fmt.Fprintln(os.Stderr, "some goals were missed (see the table)")
		if *check {
			os.Exit(1)
		}
	}
}

func run(ctx context.Context, c config, out io.Writer) (bool, error) {
	t0 := time.Now()
	e, err := startEnv(ctx, c)
	if err != nil {
		return false, err
	}
	defer e.close()
	fmt.Fprintf(os.Stderr, "faults: topology up in %v (logs in %s)\n", time.Since(t0).Round(100*time.Millisecond), e.dir)
	// Start from a settled state.
	var snap snapshot
	if err := poll(c.settle, 250*time.Millisecond, func() bool {
		snap = e.snapshot(ctx)
		return e.atBaseline(snap, snap)
	}); err != nil {
		return false, fmt.Errorf("topology did not settle: %s (logs in %s)", snap, e.dir)
	}
	first := snap
	var results []result
	for _, name := range c.scenarios {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		fmt.Fprintf(os.Stderr, "faults: %s...\n", name)
		r := runScenario(ctx, e, name)
		fmt.Fprintf(os.Stderr, "faults: %s: %s\n", name, r.verdict())
		results = append(results, r)
	}
	if c.short && len(results) > 0 {
		// The short run checks streams and goroutines once, at the end.
		r := result{name: "(all)", fault: "after the last scenario, against the first baseline", goal: "streams, goroutines back", recovery: "-", lost: "-", met: true}
		r.baseline, r.baselineOK = e.backToBaseline(ctx, first, true, &r.notes)
		results = append(results, r)
	}
	met := report(out, c, results)
	if !met {
		fmt.Fprintf(os.Stderr, "faults: children's logs: %s\n", e.dir)
		e.cfg.keep = true
	}
	return met, nil
}

// result is one scenario's row.
type result struct {
	name, fault, goal string
	sent, ok          int
	causes            string
	reest             int64
	watchOpenErrs     string
	watchEvents       int64
	pct               [nPhases]percentiles
	recovery          string
	lost              string
	baseline          string
	baselineOK        bool
	met               bool
	skipped           string
	notes             []string
}

func (r result) verdict() string {
	switch {
	case r.skipped != "":
		return "skipped"
	case r.met && r.baselineOK:
		return "ok"
	case r.met:
		return "MISSED (baseline)"
	}
	return "MISSED"
}

func report(out io.Writer, c config, results []result) bool {
	met := true
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "fault harness: %d cores, %d nodes, 2 control planes, %d agents, %d request loops (1 per %v), %d watches, phases of %v, short=%v\n",
		runtime.NumCPU(), c.nodes, c.agents, c.loops, c.interval, c.watches, c.phase, c.short)
	fmt.Fprintln(w, "scenario\tsent\tok\tfailed\twatch re-est.\tp50/p99 before\tduring\tafter\trecovery\tlost/dup\tbaseline\tgoal\tverdict")
	for _, r := range results {
		if r.skipped != "" {
			fmt.Fprintf(w, "%s\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t%s\tskipped: %s\n", r.name, r.goal, r.skipped)
			continue
		}
		if r.name == "(all)" {
			fmt.Fprintf(w, "%s\t-\t-\t-\t-\t-\t-\t-\t-\t-\t%s\t%s\t%s\n", r.name, r.baseline, r.goal, r.verdict())
			if r.verdict() != "ok" {
				met = false
			}
			continue
		}
		v := r.verdict()
		if v != "ok" {
			met = false
		}
		pp := func(p percentiles) string {
			if p.n == 0 {
				return "-"
			}
			return ms(p.p50) + "/" + ms(p.p99)
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.name, r.sent, r.ok, r.sent-r.ok, r.reest,
			pp(r.pct[before]), pp(r.pct[during]), pp(r.pct[after]), r.recovery, r.lost, r.baseline, r.goal, v)
	}
	w.Flush()
	for _, r := range results {
		if r.skipped != "" {
			continue
		}
		if r.name == "(all)" || r.name == "storm" {
			fmt.Fprintf(out, "%s: %s\n", r.name, r.fault)
		} else {
			fmt.Fprintf(out, "%s: %s; failed by cause: %s; watch events %d, watch opens failed: %s\n", r.name, r.fault, r.causes, r.watchEvents, r.watchOpenErrs)
		}
		for _, n := range r.notes {
			fmt.Fprintf(out, "  %s\n", n)
		}
	}
	return met
}

func ms(d time.Duration) string {
	if d < 10*time.Millisecond {
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.0fms", float64(d)/1e6)
}

type percentiles struct {
	n             int
	p50, p99, max time.Duration
}

func percentilesOf(d []time.Duration) percentiles {
	if len(d) == 0 {
		return percentiles{}
	}
	d = slices.Clone(d)
	slices.Sort(d)
	return percentiles{n: len(d), p50: d[len(d)/2], p99: d[min(len(d)-1, len(d)*99/100)], max: d[len(d)-1]}
}

// sleep waits d or until ctx ends (time-driven phases, not conditions).
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
