package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// scenario is one fault. setup runs before the first phase, fault is the
// during phase (the fault and its repair), teardown after the last phase;
// judge sets the goal's verdict.
type scenario struct {
	fault, goal string
	writes      bool
	writers     int           // write loops (default 1)
	writePause  time.Duration // between a loop's writes (default 50 ms; <0: none)
	setup       func(ctx context.Context, e *env, x *trial) error
	faultFn     func(ctx context.Context, e *env, x *trial) error
	teardown    func(ctx context.Context, e *env, x *trial)
	judge       func(x *trial) bool
	// external scenarios (storm) replace the whole run.
	external func(ctx context.Context, e *env) result
}

// trial is a scenario in progress.
type trial struct {
	res   *result
	rec   *recorder
	start time.Time // of the during phase
	state any       // the scenario's own
	wc    *writeCheck
}

var scenarios = map[string]scenario{
	"rolling": {
		fault: "SIGTERM, drain, restart each node in turn",
		goal:  "0 failed",
		faultFn: func(ctx context.Context, e *env, x *trial) error {
			for _, n := range e.nodes {
				t0 := time.Now()
				if err := n.terminate(e.cfg.drainGrace + 20*time.Second); err != nil {
					return err
				}
				exited := time.Since(t0)
				if err := n.start(); err != nil {
					return err
				}
				if err := n.waitReady(60 * time.Second); err != nil {
					return err
				}
				x.res.notes = append(x.res.notes, fmt.Sprintf("%s: exited %.1f s after SIGTERM, ready again %.1f s after", n.id, exited.Seconds(), time.Since(t0).Seconds()))
			}
			return nil
		},
		judge: func(x *trial) bool { return x.res.sent > 0 && x.res.ok == x.res.sent },
	},
	"sigkill": {
		fault: "SIGKILL node-2; restart it after the phase",
		goal:  "ok again ≤ 5 s",
		faultFn: func(ctx context.Context, e *env, x *trial) error {
			n := e.nodes[1]
			affected := 0
			for _, ar := range e.agents {
				if slices.Contains(ar.a.Nodes(), n.id) {
					affected++
				}
			}
			n.kill()
			t0 := time.Now()
			back := make(chan time.Duration, 1)
			go func() {
				// Every tunnel up, none on the dead node.
				if poll(e.cfg.phase, 10*time.Millisecond, func() bool {
					if e.tunnelsUp() != e.tunnelsWanted() {
						return false
					}
					for _, ar := range e.agents {
						if slices.Contains(ar.a.Nodes(), n.id) {
							return false
						}
					}
					return true
				}) == nil {
					back <- time.Since(t0)
				}
				close(back)
			}()
			sleep(ctx, e.cfg.phase)
			if d, ok := <-back; ok {
				x.res.notes = append(x.res.notes, fmt.Sprintf("%d agents had a tunnel on %s; every agent had all its tunnels again %.2f s after the kill", affected, n.id, d.Seconds()))
			} else {
				x.res.notes = append(x.res.notes, fmt.Sprintf("%d agents had a tunnel on %s; not every agent had all its tunnels again within %v", affected, n.id, e.cfg.phase))
			}
			x.state = recoveryAfter(x.rec, x.start)
			if err := n.start(); err != nil {
				return err
			}
			return n.waitReady(60 * time.Second)
		},
		judge: func(x *trial) bool {
			d, _ := x.state.(time.Duration)
			x.res.recovery = fmt.Sprintf("%.2f s", d.Seconds())
			return d <= 5*time.Second
		},
	},
	"slow": {
		fault: "agent 0 (1 tunnel): 2 log -f streams read flat out; during, a 3rd never read",
		goal:  "busy ≥ 90%",
		setup: func(ctx context.Context, e *env, x *trial) error {
			s := &slowState{}
			x.state = s
			sctx, cancel := context.WithCancel(context.Background())
			s.cancel = cancel
			hc := &http.Client{Transport: clientTransport()}
			url := "http://" + e.clientLB.addr() + "/k8s-proxy/api/v1/namespaces/default/pods/a/log?follow=true"
			for range 2 {
				s.wg.Go(func() {
					buf := make([]byte, 64<<10)
					for sctx.Err() == nil {
						req, _ := http.NewRequestWithContext(sctx, http.MethodGet, url, nil)
						req.Header.Set("Authorization", "Bearer "+e.agents[0].token)
						resp, err := hc.Do(req)
						if err != nil {
							if sctx.Err() == nil {
								s.errs.Add(1)
							}
							continue
						}
						for {
							n, err := resp.Body.Read(buf)
							s.bytes[x.rec.phase.Load()].Add(int64(n))
							if err != nil {
								if sctx.Err() == nil {
									s.errs.Add(1)
								}
								break
							}
						}
						resp.Body.Close()
					}
				})
			}
			s.hc, s.url = hc, url
			return nil
		},
		faultFn: func(ctx context.Context, e *env, x *trial) error {
			s := x.state.(*slowState)
			sctx, cancel := context.WithCancel(ctx)
			defer cancel()
			req, _ := http.NewRequestWithContext(sctx, http.MethodGet, s.url, nil)
			req.Header.Set("Authorization", "Bearer "+e.agents[0].token)
			resp, err := s.hc.Do(req)
			if err != nil {
				return fmt.Errorf("stalled stream: %w", err)
			}
			defer resp.Body.Close()
			io.ReadFull(resp.Body, make([]byte, 1)) // then never again
			s.stallStart = time.Now()
			sleep(ctx, e.cfg.phase)
			s.stallFor = time.Since(s.stallStart)
			return nil
		},
		teardown: func(ctx context.Context, e *env, x *trial) {
			s := x.state.(*slowState)
			s.cancel()
			s.wg.Wait()
			s.hc.CloseIdleConnections()
			ph := e.cfg.phase.Seconds()
			mbs := func(p int) float64 { return float64(s.bytes[p].Load()) / ph / (1 << 20) }
			// The streams are CPU-bound on a shared 2-core machine, whose
			// drift between phases without any stall (after/before) is
			// ±15%: the stall must not cost more than 10% of the lower of
			// the unstalled phases on either side of it.
			base := min(mbs(before), mbs(after))
			x.state = mbs(during) / base
			x.res.notes = append(x.res.notes, fmt.Sprintf("busy streams: %.0f MiB/s before, %.0f during, %.0f after (drift after/before %.2f); during / min(before, after) = %.3f, during / mean(before, after) = %.3f; stream errors %d",
				mbs(before), mbs(during), mbs(after), mbs(after)/mbs(before), mbs(during)/base, 2*mbs(during)/(mbs(before)+mbs(after)), s.errs.Load()))
		},
		judge: func(x *trial) bool {
			r, _ := x.state.(float64)
			x.res.recovery = fmt.Sprintf("ratio %.3f", r)
			return r >= 0.9 && x.res.ok == x.res.sent
		},
	},
	"cpkill": {
		fault:  "SIGKILL control plane 1 with writes in flight (4 loops, back to back); restart it after the phase",
		goal:   "0 failed, writes clean",
		writes: true, writers: 4, writePause: -1,
		faultFn: func(ctx context.Context, e *env, x *trial) error {
			c := e.cps[0]
			c.kill()
			sleep(ctx, e.cfg.phase)
			if err := c.start(); err != nil {
				return err
			}
			return c.waitReady(60 * time.Second)
		},
		judge: func(x *trial) bool { return x.res.ok == x.res.sent && x.wc.clean() },
	},
	"netcut": {
		fault: "partition node-3's private API (relays to it hang), heal after the phase",
		goal:  "0 failed",
		faultFn: func(ctx context.Context, e *env, x *trial) error {
			p := e.nodes[2].private
			p.setMode(modePause)
			sleep(ctx, e.cfg.phase)
			p.setMode(modePass)
			return nil
		},
		judge: func(x *trial) bool { return x.res.ok == x.res.sent },
	},
	"pgrestart": {
		fault:  "stop Postgres (fast), start it again",
		goal:   "0 failed, writes clean",
		writes: true,
		faultFn: func(ctx context.Context, e *env, x *trial) error {
			t0 := time.Now()
			if err := e.restartPostgres(ctx); err != nil {
				return err
			}
			x.res.notes = append(x.res.notes, fmt.Sprintf("Postgres down for %.1f s", time.Since(t0).Seconds()))
			sleep(ctx, e.cfg.phase)
			return nil
		},
		judge: func(x *trial) bool { return x.res.ok == x.res.sent && x.wc.clean() },
	},
	"pgoutage": {
		fault:  "partition Postgres from the control planes, heal",
		goal:   "0 failed, writes clean",
		writes: true,
		faultFn: func(ctx context.Context, e *env, x *trial) error {
			e.pgProxy.setMode(modePause)
			sleep(ctx, e.cfg.outage)
			e.pgProxy.setMode(modePass)
			x.res.notes = append(x.res.notes, fmt.Sprintf("Postgres unreachable for %v", e.cfg.outage))
			sleep(ctx, e.cfg.phase)
			return nil
		},
		judge: func(x *trial) bool { return x.res.ok == x.res.sent && x.wc.clean() },
	},
	"storm": {
		goal:     "routed ≤ 60 s, 0 cp errors",
		external: runStorm,
	},
}

type slowState struct {
	cancel     context.CancelFunc
	wg         sync.WaitGroup
	bytes      [nPhases]atomic.Int64
	errs       atomic.Int64
	hc         *http.Client
	url        string
	stallStart time.Time
	stallFor   time.Duration
}

// recoveryAfter is how long after t the last failed request came (0: none failed).
func recoveryAfter(rec *recorder, t time.Time) time.Duration {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.lastFail.Before(t) {
		return 0
	}
	return rec.lastFail.Sub(t)
}

func runScenario(ctx context.Context, e *env, name string) result {
	s := scenarios[name]
	if s.external != nil {
		r := s.external(ctx, e)
		r.name = name
		return r
	}
	res := &result{name: name, fault: s.fault, goal: s.goal}
	x := &trial{res: res, rec: newRecorder()}
	base := e.snapshot(ctx)
	if s.setup != nil {
		if err := s.setup(ctx, e, x); err != nil {
			res.notes = append(res.notes, "setup failed: "+err.Error())
			return *res
		}
	}
	ld := e.startLoad(x.rec)
	var w *writes
	if s.writes {
		n, pause := max(s.writers, 1), s.writePause
		if pause == 0 {
			pause = 50 * time.Millisecond
		}
		w = e.startWrites(fmt.Sprintf("w%s%d", name, time.Now().Unix()%100000), n, max(pause, 0))
	}
	sleep(ctx, e.cfg.phase)
	x.rec.phase.Store(during)
	x.start = time.Now()
	faultErr := s.faultFn(ctx, e, x)
	res.notes = append(res.notes, fmt.Sprintf("during phase %.1f s", time.Since(x.start).Seconds()))
	x.rec.phase.Store(after)
	sleep(ctx, e.cfg.phase)
	ld.stop()
	if w != nil {
		w.stop()
	}
	if s.teardown != nil {
		s.teardown(ctx, e, x)
	}
	r := x.rec
	r.mu.Lock()
	res.sent, res.ok, res.causes = r.sent, r.ok, causeString(r.causes)
	var maxes []string
	for p := range nPhases {
		res.pct[p] = percentilesOf(r.lat[p])
		maxes = append(maxes, ms(res.pct[p].max))
	}
	res.notes = append(res.notes, "max latency before/during/after: "+strings.Join(maxes, "/"))
	res.watchOpenErrs = causeString(r.watchOpenErrs)
	for _, c := range slices.Sorted(maps.Keys(r.samples)) {
		res.notes = append(res.notes, fmt.Sprintf("first %s: %s", c, r.samples[c]))
	}
	r.mu.Unlock()
	res.reest, res.watchEvents = r.reest.Load(), r.watchEvents.Load()
	res.lost = "-"
	if w != nil {
		wc := e.checkWrites(ctx, w)
		x.wc = &wc
		res.lost = fmt.Sprintf("%d/%d", wc.lost, wc.dup)
		res.notes = append(res.notes, wc.String())
	}
	if res.recovery == "" {
		res.recovery = "-"
	}
	res.met = faultErr == nil && s.judge(x)
	if faultErr != nil {
		res.notes = append(res.notes, "fault failed: "+faultErr.Error())
	}

	// Back to baseline? (With -short, only settled here; the streams and
	// goroutines are checked once, after the last scenario.)
	res.baseline, res.baselineOK = e.backToBaseline(ctx, base, !e.cfg.short, &res.notes)
	return *res
}

// backToBaseline waits until the topology has settled (full: and is at
// base) and says how long it took.
func (e *env) backToBaseline(ctx context.Context, base snapshot, full bool, notes *[]string) (string, bool) {
	t0 := time.Now()
	var now snapshot
	checks := 0
	ok := func(now snapshot) bool {
		if full {
			return e.atBaseline(base, now)
		}
		return e.settled(now)
	}
	err := poll(e.cfg.settle, 250*time.Millisecond, func() bool {
		now = e.snapshot(ctx)
		if checks++; checks == 1 && !ok(now) {
			*notes = append(*notes, fmt.Sprintf("baseline: before %s; when the load stopped %s", base, now))
		}
		return ok(now)
	})
	what := "ok"
	if !full {
		what = "settled"
	}
	if err != nil {
		*notes = append(*notes, fmt.Sprintf("not back to baseline after %v: before %s; now %s", e.cfg.settle, base, now))
		return "NOT", false
	}
	return fmt.Sprintf("%s %.1f s", what, time.Since(t0).Seconds()), true
}
