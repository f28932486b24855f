package ratelimit

import (
	"context"
	"net/http"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time      { return c.t }
func (c *clock) add(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock               { return &clock{t: time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)} }
func addr(s string) netip.Addr       { return netip.MustParseAddr(s) }
func mustNew(t *testing.T, o Options) *Limiter {
	t.Helper()
	l, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// fail makes a failed attempt; it reports whether it was allowed.
func fail(l *Limiter, a netip.Addr) (bool, time.Duration) {
	ok, wait := l.Take(context.Background(), a)
	if ok {
		l.Done(a, true)
	}
	return ok, wait
}

// succeed makes a good attempt; it reports whether it was allowed.
func succeed(l *Limiter, a netip.Addr) bool {
	ok, _ := l.Take(context.Background(), a)
	if ok {
		l.Done(a, false)
	}
	return ok
}

func TestBurstThenRefill(t *testing.T) {
	c := newClock()
	l := mustNew(t, Options{Burst: 3, Refill: time.Second, Clock: c.now})
	a, b := addr("192.0.2.1"), addr("192.0.2.2")
	for i := range 3 {
		if ok, _ := fail(l, a); !ok {
			t.Fatalf("failure %d: limited within the burst", i)
		}
	}
	ok, wait := fail(l, a)
	if ok || wait != time.Second {
		t.Fatalf("after the burst: ok=%v retry after %v, want limited for 1s", ok, wait)
	}
	if !succeed(l, b) {
		t.Fatal("another client is limited too")
	}
	c.add(999 * time.Millisecond)
	if ok, _ := fail(l, a); ok {
		t.Fatal("allowed before a token came back")
	}
	c.add(time.Millisecond)
	if ok, _ := fail(l, a); !ok {
		t.Fatal("still limited after one refill")
	}
	if ok, _ := fail(l, a); ok {
		t.Fatal("the refilled token was not taken")
	}
	// Successes take nothing: attempts that are refunded never limit.
	for range 100 {
		if !succeed(l, b) {
			t.Fatal("good attempts limited the client")
		}
	}
	if s := l.Stats(); s.Limited != 3 || s.Failures != 4 || s.Clients != 1 {
		t.Fatalf("stats %+v, want 3 limited, 4 failures, 1 client", s)
	}
	// A full bucket is forgotten.
	c.add(time.Minute)
	succeed(l, a)
	if s := l.Stats(); s.Clients != 0 {
		t.Fatalf("%d clients tracked after their buckets refilled", s.Clients)
	}
}

func TestRetryAfterRoundsToSeconds(t *testing.T) {
	c := newClock()
	l := mustNew(t, Options{Burst: 1, Refill: 10 * time.Second, Clock: c.now})
	a := addr("192.0.2.1")
	fail(l, a)
	c.add(2400 * time.Millisecond)
	if _, wait := fail(l, a); wait != 8*time.Second {
		t.Fatalf("retry after %v, want 8s", wait)
	}
}

func TestMemoryIsBounded(t *testing.T) {
	c := newClock()
	l := mustNew(t, Options{Burst: 2, Refill: time.Hour, MaxClients: 100, Clock: c.now})
	for i := range 10_000 {
		fail(l, netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
	if n := l.Stats().Clients; n != 100 {
		t.Fatalf("%d clients tracked, want the bound 100", n)
	}
	// The most recent ones are kept.
	last := netip.AddrFrom4([4]byte{10, 0, byte(9999 >> 8), byte(9999 & 0xff)})
	fail(l, last)
	if ok, _ := fail(l, last); ok {
		t.Fatal("the most recent client was forgotten")
	}
	// Expired entries go as new ones come, before the bound is reached.
	l2 := mustNew(t, Options{Burst: 1, Refill: time.Second, MaxClients: 1000, Clock: c.now})
	for i := range 500 {
		fail(l2, netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}))
		c.add(100 * time.Millisecond)
	}
	if n := l2.Stats().Clients; n > 30 {
		t.Fatalf("%d clients tracked, most of them long refilled", n)
	}
}

func TestNilLimiterLimitsNothing(t *testing.T) {
	var l *Limiter
	l.Done(addr("192.0.2.1"), true)
	if ok, _ := fail(l, addr("192.0.2.1")); !ok {
		t.Fatal("nil limiter limited")
	}
	r, _ := http.NewRequest("GET", "/", nil)
	r.RemoteAddr = "192.0.2.1:1234"
	if got := l.Client(r); got != addr("192.0.2.1") {
		t.Fatalf("client %v", got)
	}
}

// TestAttemptsInFlightWaitForTokens: attempts in flight reserve tokens,
// so that a flood sent at once asks at most Burst questions; further
// attempts wait for an answer instead of being refused, and go through
// when the answers are good (many users behind one address).
func TestAttemptsInFlightWaitForTokens(t *testing.T) {
	synctest.Test(t, testAttemptsInFlightWaitForTokens)
}

func testAttemptsInFlightWaitForTokens(t *testing.T) {
	c := newClock()
	l := mustNew(t, Options{Burst: 2, Refill: time.Hour, Clock: c.now})
	a := addr("192.0.2.1")
	ctx := context.Background()
	for range 2 {
		if ok, _ := l.Take(ctx, a); !ok {
			t.Fatal("limited within the burst")
		}
	}
	third := make(chan bool, 1)
	go func() {
		ok, _ := l.Take(ctx, a)
		third <- ok
	}()
	synctest.Wait() // it must be waiting, not refused
	select {
	case <-third:
		t.Fatal("a third attempt did not wait with both tokens reserved")
	default:
	}
	l.Done(a, false) // a good credential: its token comes back
	if !<-third {
		t.Fatal("the waiting attempt was refused after a token came back")
	}
	l.Done(a, false)
	l.Done(a, false)

	// A flood: two questions in flight, the rest wait; both fail, and the
	// waiting ones are refused without asking.
	for range 2 {
		if ok, _ := l.Take(ctx, a); !ok {
			t.Fatal("limited within the burst")
		}
	}
	waiting := make(chan bool, 5)
	for range 5 {
		go func() {
			ok, _ := l.Take(ctx, a)
			waiting <- ok
		}()
	}
	l.Done(a, true)
	l.Done(a, true)
	for range 5 {
		if <-waiting {
			t.Fatal("an attempt of the flood was allowed after the burst failed")
		}
	}
	// A waiting attempt whose context ends is refused.
	l2 := mustNew(t, Options{Burst: 1, Refill: time.Hour, Clock: c.now})
	l2.Take(ctx, a)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if ok, _ := l2.Take(cctx, a); ok {
		t.Fatal("an attempt whose context ended was allowed")
	}
}

func TestClient(t *testing.T) {
	trusted, err := ParsePrefixes(" 10.0.0.0/8, 192.0.2.7 ,::ffff:172.16.0.0/108")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParsePrefixes("10.0.0.0/8,nonsense"); err == nil || err.Error() != `"nonsense" is not an IP address or CIDR (for example 10.0.0.0/8 or 2001:db8::/64)` {
		t.Fatalf("ParsePrefixes: %v", err)
	}
	plain := mustNew(t, Options{})
	behind := mustNew(t, Options{TrustedProxies: trusted})
	for _, tc := range []struct {
		remote string
		xff    []string
		plain  string // the client without trusted proxies
		behind string // with them
	}{
		{"203.0.113.9:5000", nil, "203.0.113.9", "203.0.113.9"},
		// X-Forwarded-For from an untrusted peer is the peer's own word.
		{"203.0.113.9:5000", []string{"198.51.100.1"}, "203.0.113.9", "203.0.113.9"},
		{"10.1.2.3:5000", []string{"198.51.100.1"}, "10.1.2.3", "198.51.100.1"},
		// The leftmost entries are the client's: the rightmost untrusted wins.
		{"10.1.2.3:5000", []string{"1.1.1.1, 198.51.100.1, 192.0.2.7"}, "10.1.2.3", "198.51.100.1"},
		{"10.1.2.3:5000", []string{"1.1.1.1", "198.51.100.1,10.9.9.9"}, "10.1.2.3", "198.51.100.1"},
		// Garbage ends the walk at the last address believed.
		{"10.1.2.3:5000", []string{"198.51.100.1, junk, 10.9.9.9"}, "10.1.2.3", "10.9.9.9"},
		// Only trusted proxies: the leftmost of them.
		{"10.1.2.3:5000", []string{"10.4.4.4"}, "10.1.2.3", "10.4.4.4"},
		{"[::ffff:10.1.2.3]:5000", []string{"198.51.100.1"}, "10.1.2.3", "198.51.100.1"},
		{"[::ffff:172.16.1.1]:5000", []string{"198.51.100.2"}, "172.16.1.1", "198.51.100.2"},
		// IPv6 clients are their /64.
		{"[2001:db8:1:2:3:4:5:6]:443", nil, "2001:db8:1:2::", "2001:db8:1:2::"},
		{"10.1.2.3:5000", []string{"2001:db8::1"}, "10.1.2.3", "2001:db8::"},
		// A unix socket peer: one client.
		{"@", nil, "invalid IP", "invalid IP"},
	} {
		r, _ := http.NewRequest("GET", "/", nil)
		r.RemoteAddr = tc.remote
		for _, v := range tc.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		if got := plain.Client(r).String(); got != tc.plain {
			t.Errorf("%s %q without trusted proxies: %s, want %s", tc.remote, tc.xff, got, tc.plain)
		}
		if got := behind.Client(r).String(); got != tc.behind {
			t.Errorf("%s %q behind trusted proxies: %s, want %s", tc.remote, tc.xff, got, tc.behind)
		}
	}
}

func TestValidate(t *testing.T) {
	if _, err := New(Options{Burst: -1}); err == nil {
		t.Fatal("negative burst accepted")
	}
	l := mustNew(t, Options{})
	if l.opts.Burst != DefaultBurst || l.opts.Refill != DefaultRefill || l.opts.MaxClients != DefaultMaxClients {
		t.Fatalf("defaults %+v", l.opts)
	}
}
