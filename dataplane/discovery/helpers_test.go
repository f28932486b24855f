package discovery

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// waitGuard bounds how long a test waits for a condition before failing. It
// is a failure guard, never a way to let time pass.
const waitGuard = 30 * time.Second

// broadcaster lets tests wait on conditions: Notify wakes every waiter.
type broadcaster struct {
	mu sync.Mutex
	ch chan struct{}
}

func (b *broadcaster) chanLocked() chan struct{} {
	if b.ch == nil {
		b.ch = make(chan struct{})
	}
	return b.ch
}

func (b *broadcaster) Notify() {
	b.mu.Lock()
	if b.ch != nil {
		close(b.ch)
		b.ch = nil
	}
	b.mu.Unlock()
}

// WaitFor waits until cond is true, re-checking on every Notify.
func (b *broadcaster) WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	guard := time.NewTimer(waitGuard)
	defer guard.Stop()
	for {
		b.mu.Lock()
		ch := b.chanLocked()
		b.mu.Unlock()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-guard.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// fakeClock is a manual clock: time moves only on Advance.
type fakeClock struct {
	bc     broadcaster
	mu     sync.Mutex
	now    time.Time
	timers map[*fakeTimer]struct{}
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Now().UTC().Truncate(time.Microsecond), timers: make(map[*fakeTimer]struct{})}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	t := &fakeTimer{c: c, ch: make(chan time.Time, 1)}
	t.Reset(d)
	return t
}

// Advance moves time forward and fires every timer that is due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	for t := range c.timers {
		if !t.when.After(c.now) {
			delete(c.timers, t)
			t.fire(c.now)
		}
	}
	c.mu.Unlock()
	c.bc.Notify()
}

// Timers is the number of armed timers.
func (c *fakeClock) Timers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// WaitTimers waits until at least n timers are armed.
func (c *fakeClock) WaitTimers(t testing.TB, n int) {
	t.Helper()
	c.bc.WaitFor(t, "armed timers", func() bool { return c.Timers() >= n })
}

type fakeTimer struct {
	c    *fakeClock
	ch   chan time.Time
	when time.Time
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) fire(now time.Time) {
	select {
	case t.ch <- now:
	default:
	}
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	_, armed := t.c.timers[t]
	delete(t.c.timers, t)
	t.c.mu.Unlock()
	t.c.bc.Notify()
	return armed
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.c.mu.Lock()
	_, armed := t.c.timers[t]
	select { // like Go ≥ 1.23 timers: no stale value after Reset
	case <-t.ch:
	default:
	}
	t.when = t.c.now.Add(d)
	if d <= 0 {
		delete(t.c.timers, t)
		t.fire(t.c.now)
	} else {
		t.c.timers[t] = struct{}{}
	}
	t.c.mu.Unlock()
	t.c.bc.Notify()
	return armed
}

// logRecorder is a slog.Handler that keeps records for assertions.
type logRecorder struct {
	bc   broadcaster
	mu   sync.Mutex
	recs []string // "LEVEL msg key=value ..."
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	l.mu.Lock()
	l.recs = append(l.recs, b.String())
	l.mu.Unlock()
	l.bc.Notify()
	return nil
}

// Count returns how many records contain every one of parts.
func (l *logRecorder) Count(parts ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
next:
	for _, r := range l.recs {
		for _, p := range parts {
			if !strings.Contains(r, p) {
				continue next
			}
		}
		n++
	}
	return n
}

// WaitCount waits until at least n records contain every one of parts.
func (l *logRecorder) WaitCount(t testing.TB, n int, parts ...string) {
	t.Helper()
	l.bc.WaitFor(t, "log "+strings.Join(parts, " "), func() bool { return l.Count(parts...) >= n })
}

func (l *logRecorder) Dump(t testing.TB) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.recs {
		t.Log(r)
	}
}

func TestFakeClock(t *testing.T) {
	c := newFakeClock()
	start := c.Now()
	a := c.NewTimer(time.Second)
	b := c.NewTimer(3 * time.Second)
	if c.Timers() != 2 {
		t.Fatalf("timers = %d", c.Timers())
	}
	c.Advance(time.Second)
	select {
	case got := <-a.C():
		if !got.Equal(start.Add(time.Second)) {
			t.Fatalf("fired at %v", got)
		}
	default:
		t.Fatal("timer a did not fire")
	}
	select {
	case <-b.C():
		t.Fatal("timer b fired early")
	default:
	}
	if !b.Stop() || b.Stop() {
		t.Fatal("Stop reports armed wrong")
	}
	b.Reset(0)
	select {
	case <-b.C():
	default:
		t.Fatal("Reset(0) did not fire at once")
	}
	if c.Timers() != 0 {
		t.Fatalf("timers = %d", c.Timers())
	}
}

func TestSystemClock(t *testing.T) {
	var c Clock = SystemClock{}
	before := time.Now()
	if c.Now().Before(before) {
		t.Fatal("Now went backwards")
	}
	tm := c.NewTimer(time.Hour)
	if !tm.Stop() {
		t.Fatal("Stop of an armed timer reported false")
	}
	tm.Reset(0)
	<-tm.C() // fires at once
}
