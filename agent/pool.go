package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/kas-project/kas/dataplane/tunnel"
	"github.com/kas-project/kas/internal/obs"
)

// Why a slot's tunnel needs attention.
type event int

const (
	evStop      event = iota // Run's context ended
	evEnded                  // the tunnel died
	evGoneAway               // the node sent GOAWAY
	evMaxAge                 // the tunnel reached its maximum age
	evNodeRetry              // time to try again for a node of its own
)

// Replacement reasons (metric label and log value).
const (
	reasonMaxAge   = "max_age"
	reasonGoneAway = "goaway"
	reasonNode     = "node"
)

// runSlot keeps one tunnel of the pool open until ctx ends: it connects
// with backoff, replaces the tunnel make-before-break at its maximum age
// or on GOAWAY, and moves it when it shares a node with an older tunnel of
// this agent. Run drains whatever tunnel the slot holds when it returns.
func (a *Agent) runSlot(ctx context.Context, slot int) {
	b := &backoff{base: a.o.MinBackoff, max: a.o.MaxBackoff, healthy: a.o.HealthyAfter, rand: a.o.Rand}
	log := a.log.With("slot", slot)
	cur := a.connect(ctx, b, log, true)
	if cur == nil {
		return
	}
	tries := 0
	retryAt := a.nodeRetryAt(cur, tries)
	for {
		ev := a.watch(ctx, cur, retryAt)
		now := a.clock.Now()
		switch ev {
		case evStop:
			return
		case evEnded:
			b.ended(now)
			cur = a.connect(ctx, b, log, false)
		case evGoneAway, evMaxAge:
			reason := reasonMaxAge
			if ev == evGoneAway {
				reason = reasonGoneAway
			}
			cur.log.InfoContext(cur.ctx, "replacing tunnel", "reason", reason, "age", now.Sub(cur.connectedAt))
			b.ended(now)
			next := a.connect(ctx, b, log, false)
			if next == nil {
				return // Run drains cur
			}
			a.m.replacements.WithLabelValues(reason).Inc()
			a.retire(cur, reason)
			cur = next
		case evNodeRetry:
			tries++
			if probe := a.tryOtherNode(ctx, cur, tries); probe != nil {
				b.ended(now)
				b.connected(probe.connectedAt)
				a.m.replacements.WithLabelValues(reasonNode).Inc()
				a.retire(cur, reasonNode)
				cur = probe
			}
		}
		if cur == nil {
			return
		}
		if ev != evNodeRetry {
			tries = 0
		}
		retryAt = a.nodeRetryAt(cur, tries)
	}
}

// connect opens a tunnel, retrying with backoff until it succeeds (it
// returns the tunnel) or ctx ends (it returns nil). The first attempt of
// the slot's life goes out at once, every later one after a backoff delay.
func (a *Agent) connect(ctx context.Context, b *backoff, log *slog.Logger, first bool) *tun {
	var delay time.Duration
	if !first {
		delay = b.next()
	}
	for {
		if !sleep(ctx, a.clock, delay) {
			return nil
		}
		t, err := a.open(ctx)
		if err == nil {
			// The time it came up, not now: it is counted up (and may
			// have served) before this line runs.
			b.connected(t.connectedAt)
			return t
		}
		if ctx.Err() != nil {
			return nil
		}
		var de *dialError
		errors.As(err, &de)
		switch {
		case de != nil && (de.status == http.StatusUnauthorized || de.status == http.StatusForbidden):
			delay = b.rejected()
			log.ErrorContext(a.logCtx, "the dataplane refused the agent token; check --token-file (KAS_TOKEN_FILE)",
				"status", de.status, "retry_in", delay.Round(time.Millisecond), "err", err)
		case de != nil && (de.status == http.StatusServiceUnavailable || de.status == http.StatusTooManyRequests):
			delay = b.retryAfter(de.retryAfter)
			log.WarnContext(a.logCtx, "the dataplane cannot take the tunnel now", "status", de.status,
				"retry_after", de.retryAfter, "retry_in", delay.Round(time.Millisecond), "err", err)
		default:
			delay = b.next()
			log.WarnContext(a.logCtx, "could not open a tunnel", "retry_in", delay.Round(time.Millisecond), "err", err)
		}
	}
}

// watch waits until the slot's tunnel needs attention.
func (a *Agent) watch(ctx context.Context, t *tun, retryAt time.Time) event {
	now := a.clock.Now()
	age := a.clock.NewTimer(t.expires.Sub(now))
	defer age.Stop()
	var retry <-chan time.Time
	if !retryAt.IsZero() {
		rt := a.clock.NewTimer(retryAt.Sub(now))
		defer rt.Stop()
		retry = rt.C()
	}
	select {
	case <-ctx.Done():
		return evStop
	case <-t.sess.Done():
		return evEnded
	case <-t.sess.GoneAway():
		return evGoneAway
	case <-age.C():
		return evMaxAge
	case <-retry:
		return evNodeRetry
	}
}

// nodeRetryAt returns when t, which shares its node with an older tunnel
// of this agent, should try for another node; zero when it should not
// (its node is its own, the node is unknown, or the tries are used up).
func (a *Agent) nodeRetryAt(t *tun, tries int) time.Time {
	if tries >= a.o.NodeRetries || !a.sharesNode(t) {
		return time.Time{}
	}
	return a.clock.Now().Add(jitter(a.o.NodeRetry<<tries, 0.2, a.o.Rand))
}

// sharesNode reports whether an older tunnel of this agent that takes new
// streams is on t's node. The older one stays; t is the one to move.
func (a *Agent) sharesNode(t *tun) bool {
	if t.nodeID == "" {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for o := range a.tunnels {
		if o != t && !o.draining && o.nodeID == t.nodeID && o.id < t.id {
			return true
		}
	}
	return false
}

// tryOtherNode opens one more tunnel hoping the load balancer picks
// another node for it. It returns the new tunnel if it landed on a node of
// its own (or cur died meanwhile), and nil otherwise, after dropping it.
func (a *Agent) tryOtherNode(ctx context.Context, cur *tun, tries int) *tun {
	if !a.sharesNode(cur) {
		return nil
	}
	probe, err := a.open(ctx)
	if err != nil {
		cur.log.InfoContext(cur.ctx, "could not open a tunnel to look for another node", "try", tries, "err", err)
		return nil
	}
	if !a.sharesNode(probe) || isDone(cur.sess.Done()) {
		cur.log.InfoContext(cur.ctx, "moving to another node", "new_node_id", probe.nodeID, "new_tunnel_id", probe.id)
		return probe
	}
	probe.log.DebugContext(probe.ctx, "landed on a node this agent already uses; dropping it", "try", tries)
	a.retire(probe, "same_node")
	return nil
}

func isDone(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// open dials one tunnel and starts serving it.
func (a *Agent) open(ctx context.Context) (*tun, error) {
	c, err := a.dialer.dial(ctx)
	if err != nil {
		result := "error"
		if de, ok := errors.AsType[*dialError](err); ok {
			result = de.result()
		}
		a.m.connects.WithLabelValues(result).Inc()
		return nil, err
	}
	a.m.connects.WithLabelValues("ok").Inc()
	now := a.clock.Now()
	t := &tun{
		id:          a.nextID.Add(1),
		nodeID:      c.nodeID,
		sess:        c.sess,
		ctx:         obs.WithNodeID(a.logCtx, c.nodeID),
		connectedAt: now,
		expires:     now.Add(jitter(a.o.MaxConnectionAge, maxConnectionAgeJitter, a.o.Rand)),
	}
	t.log = a.log.With("tunnel_id", t.id)
	ln := &streamListener{sess: t.sess, id: t.id}
	ln.ctx, ln.cancel = context.WithCancel(context.Background())
	t.srv = &http.Server{
		Handler:           a.proxy,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          slog.NewLogLogger(t.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return t.ctx },
	}

	a.mu.Lock()
	a.tunnels[t] = struct{}{}
	active := a.activeLocked()
	a.notifyLocked()
	select {
	case <-a.ready:
	default:
		close(a.ready)
	}
	a.mu.Unlock()

	t.log.InfoContext(t.ctx, "tunnel connected", "active_tunnels", active)
	a.wg.Go(func() { t.srv.Serve(ln) })
	a.wg.Go(func() { a.follow(t) })
	return t, nil
}

// follow marks t draining when its node sends GOAWAY and forgets it when
// its session ends.
func (a *Agent) follow(t *tun) {
	select {
	case <-t.sess.GoneAway():
		a.mu.Lock()
		t.draining = true
		a.notifyLocked()
		a.mu.Unlock()
		t.log.InfoContext(t.ctx, "the node is draining the tunnel (GOAWAY)")
		<-t.sess.Done()
	case <-t.sess.Done():
	}
	t.srv.Close()
	st := t.sess.Stats()
	a.mu.Lock()
	delete(a.tunnels, t)
	a.finished.StreamsAccepted += st.StreamsAccepted
	a.finished.BytesIn += st.BytesIn
	a.finished.BytesOut += st.BytesOut
	active := a.activeLocked()
	a.notifyLocked()
	a.mu.Unlock()
	err := t.sess.Err()
	lvl := slog.LevelWarn
	if errors.Is(err, tunnel.ErrClosed) || errors.Is(err, tunnel.ErrPeerClosed) {
		lvl = slog.LevelInfo
	}
	t.log.Log(t.ctx, lvl, "tunnel closed", "reason", err.Error(), "lived", a.clock.Now().Sub(t.connectedAt).Round(time.Millisecond),
		"streams", st.StreamsAccepted, "active_tunnels", active)
}

// retire drains t: GOAWAY, then its HTTP connections and streams finish
// (for up to DrainTimeout, or until Run's shutdown timeout), then it
// closes. It does not wait.
func (a *Agent) retire(t *tun, reason string) {
	a.mu.Lock()
	if t.retiring {
		a.mu.Unlock()
		return
	}
	t.retiring = true
	t.draining = true
	a.notifyLocked()
	a.mu.Unlock()
	t.log.DebugContext(t.ctx, "draining tunnel", "reason", reason)
	t.sess.GoAway()
	a.wg.Go(func() {
		ctx, cancel := withTimeout(a.hardCtx, a.clock, a.o.DrainTimeout)
		defer cancel()
		err := t.srv.Shutdown(ctx) // idle connections close, requests finish
		if err == nil {
			err = t.sess.Shutdown(ctx) // upgraded streams finish
		}
		if err != nil {
			t.log.WarnContext(t.ctx, "drain timeout: closing the tunnel with streams still open", "reason", reason, "streams", t.sess.NumStreams())
		}
		t.srv.Close()
		t.sess.Close()
	})
}

// streamListener hands the streams a node opens on a tunnel to an
// http.Server, one HTTP/1.1 connection each.
type streamListener struct {
	sess   *tunnel.Session
	id     uint64
	ctx    context.Context
	cancel context.CancelFunc
}

func (l *streamListener) Accept() (net.Conn, error) {
	st, err := l.sess.Accept(l.ctx)
	if err != nil {
		if l.ctx.Err() != nil {
			return nil, net.ErrClosed
		}
		return nil, err
	}
	return st, nil
}

func (l *streamListener) Close() error {
	l.cancel()
	return nil
}

func (l *streamListener) Addr() net.Addr { return tunnelAddr(fmt.Sprintf("tunnel-%d", l.id)) }

type tunnelAddr string

func (a tunnelAddr) Network() string { return "kas-tunnel" }
func (a tunnelAddr) String() string  { return string(a) }
