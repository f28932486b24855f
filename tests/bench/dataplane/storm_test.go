package main

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestSpreadTellsJitterFromHerd(t *testing.T) {
	const agents = 1000
	r := rand.New(rand.NewPCG(1, 2))
	var jittered, herd retries
	for range agents {
		// Full jitter: uniform in [0, 1 s).
		us := r.Int64N(int64(time.Second / time.Microsecond))
		jittered.first = append(jittered.first, us)
		jittered.all = append(jittered.all, us)
		// A herd: everyone after the same 1 s, give or take 20 ms.
		us = 1_000_000 + r.Int64N(20_000)
		herd.first = append(herd.first, us)
		herd.all = append(herd.all, us, us+1_500_000)
	}

	j := jittered.spread(agents)
	if !j.ok || j.busiestShare > 0.15 {
		t.Errorf("full jitter: busiest share %.3f, ok %v; want about 0.1 and ok", j.busiestShare, j.ok)
	}
	if j.p50 < 400*time.Millisecond || j.p50 > 600*time.Millisecond {
		t.Errorf("full jitter: p50 %v, want about 500ms", j.p50)
	}
	if j.perSecond[0] != agents || j.total != agents {
		t.Errorf("full jitter: per second %v, total %d", j.perSecond, j.total)
	}

	h := herd.spread(agents)
	if h.ok || h.busiest != agents {
		t.Errorf("herd: busiest %d of %d, ok %v; want all and not ok", h.busiest, agents, h.ok)
	}
	if h.perSecond[1] != agents || h.perSecond[2] != agents || h.total != 2*agents {
		t.Errorf("herd: per second %v, total %d", h.perSecond, h.total)
	}
	if h.firstPerWindow[10] != agents {
		t.Errorf("herd: first retries per window %v, want all in the 11th", h.firstPerWindow)
	}

	// An agent that never retried fails the goal however spread the rest.
	if s := jittered.spread(agents + 1); s.ok || s.agentsNotRetried != 1 {
		t.Errorf("one agent missing: ok %v, not retried %d", s.ok, s.agentsNotRetried)
	}
}
