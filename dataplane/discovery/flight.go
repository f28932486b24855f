package discovery

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// errClosed is returned by lookups after Close.
var errClosed = errors.New("closed")

// flightGroup runs at most one lookup per key at a time; concurrent callers
// share its result. A caller that gives up (its ctx ends) does not cancel
// the lookup for the others: lookups run on the group's own goroutines,
// bounded by a timeout and waited for by Close.
type flightGroup[K comparable, V any] struct {
	timeout time.Duration
	ctx     context.Context
	cancel  context.CancelFunc
	onJoin  func() // test hook: a caller joined a lookup

	mu     sync.Mutex
	calls  map[K]*flight[V]
	closed bool
	wg     sync.WaitGroup
}

type flight[V any] struct {
	waiters int // callers sharing it (for tests)
	done    chan struct{}
	val     V
	err     error
}

func newFlightGroup[K comparable, V any](timeout time.Duration) *flightGroup[K, V] {
	ctx, cancel := context.WithCancel(context.Background())
	return &flightGroup[K, V]{timeout: timeout, ctx: ctx, cancel: cancel, calls: make(map[K]*flight[V])}
}

// do returns fn's result for key, starting fn unless a call is in flight.
func (g *flightGroup[K, V]) do(ctx context.Context, key K, fn func(context.Context) (V, error)) (V, error) {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		var zero V
		return zero, errClosed
	}
	f, ok := g.calls[key]
	if !ok {
		f = &flight[V]{done: make(chan struct{})}
		g.calls[key] = f
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			cctx, cancel := context.WithTimeout(g.ctx, g.timeout)
			defer cancel()
			f.val, f.err = fn(cctx)
			g.mu.Lock()
			delete(g.calls, key)
			g.mu.Unlock()
			close(f.done)
		}()
	}
	f.waiters++
	g.mu.Unlock()
	if g.onJoin != nil {
		g.onJoin()
	}
	select {
	case <-f.done:
		return f.val, f.err
	case <-ctx.Done():
		var zero V
		return zero, fmt.Errorf("wait for lookup: %w", ctx.Err())
	}
}

// close cancels lookups in flight and waits for them.
// waiters returns how many callers wait on key's lookup in flight.
func (g *flightGroup[K, V]) waiters(key K) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f := g.calls[key]; f != nil {
		return f.waiters
	}
	return 0
}

func (g *flightGroup[K, V]) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.cancel()
	g.wg.Wait()
}
