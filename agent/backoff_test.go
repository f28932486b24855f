package agent

import (
	"net/http"
	"testing"
	"time"
)

// recordingRand returns a fixed fraction of n and records every n.
type recordingRand struct {
	frac float64
	ns   []int64
}

func (r *recordingRand) draw(n int64) int64 {
	r.ns = append(r.ns, n)
	return int64(float64(n-1) * r.frac)
}

func (r *recordingRand) last() time.Duration { return time.Duration(r.ns[len(r.ns)-1]) }

func TestBackoffIsExponentialWithFullJitter(t *testing.T) {
	ceilings := []time.Duration{1, 2, 4, 8, 16, 30, 30, 30}
	for i := range ceilings {
		ceilings[i] *= time.Second
	}
	for _, frac := range []float64{0, 0.5, 1} {
		r := &recordingRand{frac: frac}
		b := &backoff{base: time.Second, max: 30 * time.Second, healthy: 30 * time.Second, rand: r.draw}
		for i, ceil := range ceilings {
			d := b.next()
			if r.last() != ceil {
				t.Fatalf("attempt %d draws from [0, %v), want [0, %v)", i, r.last(), ceil)
			}
			if d < 0 || d >= ceil {
				t.Fatalf("attempt %d: delay %v outside [0, %v)", i, d, ceil)
			}
			if frac == 1 && d != ceil-1 {
				t.Errorf("attempt %d: top draw %v, want %v", i, d, ceil-1)
			}
		}
	}
	// Many attempts never overflow past the maximum.
	b := &backoff{base: time.Second, max: 30 * time.Second, rand: func(n int64) int64 { return n - 1 }}
	for range 200 {
		if d := b.next(); d < 0 || d >= 30*time.Second {
			t.Fatalf("delay %v after many attempts", d)
		}
	}
}

func TestBackoffResetsOnlyAfterTheHealthyPeriod(t *testing.T) {
	r := &recordingRand{}
	b := &backoff{base: time.Second, max: 30 * time.Second, healthy: 30 * time.Second, rand: r.draw}
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	b.next()
	b.next()
	b.next() // the next ceiling is 8s

	// A tunnel that lived 29s does not reset it.
	b.connected(t0)
	b.ended(t0.Add(29 * time.Second))
	b.next()
	if r.last() != 8*time.Second {
		t.Fatalf("after a short-lived tunnel the ceiling is %v, want 8s", r.last())
	}
	// ended without connected (a failed attempt) does not reset it either.
	b.ended(t0.Add(time.Hour))
	b.next()
	if r.last() != 16*time.Second {
		t.Fatalf("ceiling %v, want 16s", r.last())
	}
	// A tunnel that stayed up for 30s does.
	b.connected(t0)
	b.ended(t0.Add(30 * time.Second))
	b.next()
	if r.last() != time.Second {
		t.Fatalf("after a healthy tunnel the ceiling is %v, want 1s", r.last())
	}
}

func TestBackoffAfterRefusals(t *testing.T) {
	for _, frac := range []float64{0, 1} {
		r := &recordingRand{frac: frac}
		b := &backoff{base: time.Second, max: 30 * time.Second, rand: r.draw}
		if d := b.rejected(); d < 15*time.Second || d >= 30*time.Second {
			t.Errorf("after 401: %v, want in [15s, 30s)", d)
		}
		// The backoff stays at its maximum afterwards.
		b.next()
		if r.last() != 30*time.Second {
			t.Errorf("after 401 the next ceiling is %v, want 30s", r.last())
		}

		b = &backoff{base: time.Second, max: 30 * time.Second, rand: r.draw}
		if d := b.retryAfter(20 * time.Second); d < 20*time.Second || d > 25*time.Second {
			t.Errorf("Retry-After 20s: %v, want in [20s, 25s]", d)
		}
		if d := b.retryAfter(time.Hour); d < 30*time.Second || d > 37500*time.Millisecond {
			t.Errorf("Retry-After 1h: %v, want capped near the 30s maximum", d)
		}
		if d := b.retryAfter(0); d < 0 || d >= 8*time.Second {
			t.Errorf("no Retry-After: %v, want the backoff's own [0, 8s)", d)
		}
	}
}

func TestJitterBounds(t *testing.T) {
	for _, tc := range []struct {
		frac float64
		want time.Duration
	}{{0, 24 * time.Minute}, {0.5, 30 * time.Minute}, {1, 36 * time.Minute}} {
		r := &recordingRand{frac: tc.frac}
		d := jitter(30*time.Minute, 0.2, r.draw)
		if d < 24*time.Minute || d >= 36*time.Minute || (d-tc.want).Abs() > time.Microsecond {
			t.Errorf("jitter at %v = %v, want ≈%v within [24m, 36m)", tc.frac, d, tc.want)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"5", 5 * time.Second},
		{"-1", 0},
		{"soon", 0},
		{"999999", time.Hour},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
	} {
		if got := parseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
