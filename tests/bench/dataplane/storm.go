package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"text/tabwriter"
	"time"
)

// Spread of the agents' retries after their node is killed.
const (
	// spreadWindow is the window in which the busiest share of first
	// retries is counted.
	spreadWindow = 100 * time.Millisecond
	// goalBusiestShare bounds that share. Full jitter draws an agent's
	// first retry uniformly from [0, 1 s) (agent.DefaultMinBackoff) after
	// it sees its tunnel die, so any 100 ms holds about 10% of them; a
	// thundering herd — every agent retrying at once, or after the same
	// fixed delay — puts nearly all of them into one window.
	goalBusiestShare = 0.25
	// histogramSeconds is how many seconds after the kill the per-second
	// histogram of attempts covers.
	histogramSeconds = 10
)

// retries are the agents' connection attempts after the kill, in µs
// after it: each agent's first one, and all of them; when each agent saw
// its tunnel end, in µs after the kill; and each agent's backoff, the µs
// from that to its first retry.
type retries struct {
	first, all    []int64
	died, backoff []int64
}

// spread summarises retries.
type spread struct {
	firsts           int
	p10, p50, p90    time.Duration    // of the first retries
	died, backoff    [3]time.Duration // p10, p50, p90
	busiest          int              // first retries in the busiest spreadWindow
	busiestShare     float64
	perSecond        []int // every attempt, by second after the kill
	firstPerWindow   []int // first retries, by spreadWindow after the kill, for 2 s
	total            int   // attempts after the kill
	ok               bool  // busiestShare within the goal, and every agent retried
	agentsNotRetried int
}

func (r retries) spread(agents int) spread {
	s := spread{firsts: len(r.first), total: len(r.all), perSecond: make([]int, histogramSeconds),
		firstPerWindow: make([]int, 2*time.Second/spreadWindow)}
	for _, us := range r.first {
		if i := us / spreadWindow.Microseconds(); i < int64(len(s.firstPerWindow)) {
			s.firstPerWindow[i]++
		}
	}
	for _, us := range r.all {
		if sec := us / 1e6; sec < histogramSeconds {
			s.perSecond[sec]++
		}
	}
	s.agentsNotRetried = agents - len(r.first)
	s.died, s.backoff = deciles(r.died), deciles(r.backoff)
	if len(r.first) == 0 {
		return s
	}
	f := slices.Clone(r.first)
	slices.Sort(f)
	d := deciles(f)
	s.p10, s.p50, s.p90 = d[0], d[1], d[2]
	// The busiest window, wherever it starts.
	win := spreadWindow.Microseconds()
	lo := 0
	for hi := range f {
		for f[hi]-f[lo] >= win {
			lo++
		}
		s.busiest = max(s.busiest, hi-lo+1)
	}
	s.busiestShare = float64(s.busiest) / float64(len(f))
	s.ok = s.busiestShare <= goalBusiestShare && s.agentsNotRetried == 0
	return s
}

// deciles returns the p10, p50 and p90 of µs.
func deciles(us []int64) (d [3]time.Duration) {
	if len(us) == 0 {
		return d
	}
	us = slices.Clone(us)
	slices.Sort(us)
	for i, p := range []float64{0.1, 0.5, 0.9} {
		d[i] = time.Duration(us[min(len(us)-1, int(p*float64(len(us))))]) * time.Microsecond
	}
	return d
}

// reportRetries prints the spread rows of the table.
func reportRetries(w io.Writer, s spread, verdict func(bool) string) {
	fmt.Fprintf(w, "  attempts/s after the kill, 0–%d s\t-\t%v\t-\n", histogramSeconds, s.perSecond)
	three := func(d [3]time.Duration) string {
		return fmt.Sprintf("%s / %s / %s", secs(d[0]), secs(d[1]), secs(d[2]))
	}
	fmt.Fprintf(w, "  agent saw its tunnel die, after the kill p10 / p50 / p90\t-\t%s\t-\n", three(s.died))
	fmt.Fprintf(w, "  then its first retry (backoff) p10 / p50 / p90\tuniform [0, 1 s) 0.10 / 0.50 / 0.90 s\t%s\t-\n", three(s.backoff))
	fmt.Fprintf(w, "  first retry after the kill p10 / p50 / p90\t-\t%s\t-\n", three([3]time.Duration{s.p10, s.p50, s.p90}))
	fmt.Fprintf(w, "  first retries in the busiest %v\therd ~100%%, jitter ~10%%\t%.1f%% (%d of %d)\t≤ %.0f%% %s\n",
		spreadWindow, 100*s.busiestShare, s.busiest, s.firsts, 100*goalBusiestShare, verdict(s.ok))
}

// stormResult is the JSON line -storm-json prints last.
type stormResult struct {
	Agents            int      `json:"agents"`
	ConnectS          float64  `json:"connect_s"`
	RerouteS          *float64 `json:"reroute_s"` // null unless every agent was rerouted within the bound
	RerouteP50S       float64  `json:"reroute_p50_s"`
	RerouteP99S       float64  `json:"reroute_p99_s"`
	CPErrors          int64    `json:"cp_errors"`
	AttemptsPerSecond []int    `json:"attempts_per_second"`
	SpreadOK          bool     `json:"spread_ok"`

	// Rerouted: every agent routed to the surviving node, and only to it,
	// within the bound; RerouteOK: that, within 60 s.
	Rerouted  bool `json:"rerouted"`
	RerouteOK bool `json:"reroute_ok"`
	// The first connection attempt of each agent after the kill.
	FirstRetries   int     `json:"first_retries"`
	FirstRetryP10S float64 `json:"first_retry_p10_s"`
	FirstRetryP50S float64 `json:"first_retry_p50_s"`
	FirstRetryP90S float64 `json:"first_retry_p90_s"`
	// When agents saw their tunnel die after the kill, and their backoff
	// from then to their first retry: p10, p50, p90 in seconds.
	TunnelDiedS          []float64 `json:"tunnel_died_s"`
	BackoffS             []float64 `json:"backoff_s"`
	FirstRetriesPer100ms []int     `json:"first_retries_per_100ms"` // 0–2 s after the kill
	BusiestWindowS       float64   `json:"busiest_window_s"`
	BusiestShare         float64   `json:"busiest_share"`
	BusiestShareGoal     float64   `json:"busiest_share_goal"`
	AttemptsTotal        int       `json:"attempts_total"`
	HandshakesRefused    int64     `json:"handshakes_refused"` // 503 after the kill
	HandshakesFailed     int64     `json:"handshakes_failed"`  // other failures after the kill
	DeadNodeGoneS        float64   `json:"dead_node_gone_s"`
	Short                bool      `json:"short"`
	Notes                []string  `json:"notes,omitempty"`
	Error                string    `json:"error,omitempty"`
}

func roundS(d time.Duration) float64 { return math.Round(d.Seconds()*1000) / 1000 }

func stormJSON(c config, fl fleetResult) stormResult {
	s := fl.retries.spread(c.agents)
	rerouteOK := fl.reconnect.complete && fl.reconnect.all <= goalReconnect
	var reroute *float64
	if fl.reconnect.complete {
		v := roundS(fl.reconnect.all)
		reroute = &v
	}
	return stormResult{
		Agents: c.agents, ConnectS: roundS(fl.initial.all),
		RerouteS: reroute, RerouteP50S: roundS(fl.reconnect.p50), RerouteP99S: roundS(fl.reconnect.p99),
		CPErrors: fl.cpErrors, AttemptsPerSecond: s.perSecond, SpreadOK: s.ok,
		Rerouted: fl.reconnect.complete, RerouteOK: rerouteOK,
		FirstRetries: s.firsts, FirstRetriesPer100ms: s.firstPerWindow, FirstRetryP10S: roundS(s.p10), FirstRetryP50S: roundS(s.p50), FirstRetryP90S: roundS(s.p90),
		TunnelDiedS:    []float64{roundS(s.died[0]), roundS(s.died[1]), roundS(s.died[2])},
		BackoffS:       []float64{roundS(s.backoff[0]), roundS(s.backoff[1]), roundS(s.backoff[2])},
		BusiestWindowS: spreadWindow.Seconds(), BusiestShare: math.Round(s.busiestShare*1000) / 1000, BusiestShareGoal: goalBusiestShare,
		AttemptsTotal: s.total, HandshakesRefused: fl.reconnect.refused, HandshakesFailed: fl.reconnect.failed,
		DeadNodeGoneS: roundS(fl.deadGone), Short: c.short, Notes: fl.notes,
	}
}

// runStorm is -storm-json: the fleet connects to node A, A is killed, the
// agents reconnect to node B. It prints the fleet rows of the table and,
// as the last line, the stormResult. Failing, it prints a stormResult
// with Error set and returns the error.
func runStorm(ctx context.Context, c config, out io.Writer) (goalsMet bool, err error) {
	var fl fleetResult
	defer func() {
		if err != nil {
			r := stormResult{Agents: c.agents, Short: c.short, AttemptsPerSecond: []int{}, Error: err.Error(), Notes: fl.notes}
			b, _ := json.Marshal(r)
			fmt.Fprintf(out, "%s\n", b)
		}
	}()
	cp, err := startControlPlane(ctx)
	if err != nil {
		return false, err
	}
	defer cp.close()
	if fl, err = measureFleet(ctx, cp, c); err != nil {
		return false, fmt.Errorf("fleet: %w", err)
	}
	met := true
	verdict := goalVerdict(&met)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "dataplane reconnect storm: %d agents, short=%v\n", c.agents, c.short)
	fmt.Fprintln(w, "metric\tbaseline\tkas\tgoal")
	reportReconnect(w, c, fl, verdict)
	w.Flush()
	for _, n := range fl.notes {
		fmt.Fprintln(out, "note:", n)
	}
	r := stormJSON(c, fl)
	b, err := json.Marshal(r)
	if err != nil {
		return false, err
	}
	fmt.Fprintf(out, "%s\n", b)
	return met, nil
}
