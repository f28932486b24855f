// Package framework starts kas's real parts for end-to-end scenarios: a
// control plane on a fresh Postgres database, dataplane nodes on port 0,
// agentk (package agent) with a fake Kubernetes API server behind it, and
// the network in between — load balancers, and links that can go down or
// silently drop everything. Helpers take testing.TB, call Helper and
// register their own Cleanup.
package framework

import (
	"bytes"
	"context"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kas-project/kas/internal/obs"
)

// Guard bounds every wait in real time, so that a broken part fails the
// test instead of hanging it. Nothing waits for it to pass.
const Guard = 30 * time.Second

// Eventually waits until cond holds, checking it every few milliseconds,
// and fails the test after Guard. Use it for conditions that span
// processes and have no event to wait on (a lease expiring in the control
// plane, a goroutine count); it never lets time pass for its own sake.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !Within(Guard, cond) {
		t.Fatalf("timed out after %v waiting for %s", Guard, what)
	}
}

// Within reports whether cond held within d.
func Within(d time.Duration, cond func() bool) bool {
	if cond() {
		return true
	}
	guard := time.NewTimer(d)
	defer guard.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if cond() {
				return true
			}
		case <-guard.C:
			return cond()
		}
	}
}

// Context returns a context that ends when the test does, bounded by Guard.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), Guard)
	t.Cleanup(cancel)
	return ctx
}

// Logs records a part's log lines (text format, IDs from the context
// included) for assertions, and prints them if the test fails.
type Logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
	h   slog.Handler
}

// NewLogs returns a recorder whose lines are printed, prefixed with name,
// when t fails.
func NewLogs(t testing.TB, name string) *Logs {
	l := &Logs{}
	l.h = slog.NewTextHandler(lockedWriter{l}, &slog.HandlerOptions{Level: slog.LevelDebug})
	t.Cleanup(func() {
		if t.Failed() {
			for _, line := range l.Lines() {
				t.Logf("%s: %s", name, line)
			}
		}
	})
	return l
}

type lockedWriter struct{ l *Logs }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.l.mu.Lock()
	defer w.l.mu.Unlock()
	return w.l.buf.Write(p)
}

// Logger returns a logger writing to the recorder.
func (l *Logs) Logger() *slog.Logger { return slog.New(obs.ContextHandler{Handler: l.h}) }

// Lines returns every line logged so far.
func (l *Logs) Lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := strings.TrimRight(l.buf.String(), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// Count returns how many lines contain every one of parts.
func (l *Logs) Count(parts ...string) int {
	n := 0
next:
	for _, line := range l.Lines() {
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue next
			}
		}
		n++
	}
	return n
}

// Goroutines counts the process's goroutines, leaving out those of idle
// HTTP keep-alive connections (a client's pooled connection, a server
// waiting for the next request on one) and of test TCP proxies: how many
// of those exist depends on how calls happened to overlap, not on leaks.
// Compare it against a baseline taken the same way.
func Goroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		switch {
		case strings.Contains(g, "net/http.(*persistConn).readLoop"),
			strings.Contains(g, "net/http.(*persistConn).writeLoop"),
			strings.Contains(g, "tests/framework.(*Proxy)"),
			idleServerConn(g):
			continue
		}
		count++
	}
	return count
}

// idleServerConn reports whether the goroutine stack g is an HTTP server
// connection waiting for its next request: conn.serve peeking at the
// connection, no handler running.
func idleServerConn(g string) bool {
	lines := strings.Split(g, "\n")
	for k, l := range lines {
		if strings.HasPrefix(l, "bufio.(*Reader).Peek(") {
			return k+2 < len(lines) && strings.HasPrefix(lines[k+2], "net/http.(*conn).serve(")
		}
	}
	return false
}
