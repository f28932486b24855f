package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	mgmtv1 "github.com/kas-project/kas/gen/kas/management/v1"
)

// Phases of a scenario.
const (
	before = iota
	during
	after
	nPhases
)

var phaseNames = [nPhases]string{"before", "during", "after"}

// recorder collects what the load saw, by phase.
type recorder struct {
	phase atomic.Int32

	mu       sync.Mutex
	lat      [nPhases][]time.Duration
	sent, ok int
	causes   map[string]int
	lastFail time.Time

	reest         atomic.Int64 // watches re-established
	watchEvents   atomic.Int64
	watchOpenErrs map[string]int
	samples       map[string]string // cause: first body or error
}

func newRecorder() *recorder {
	return &recorder{causes: map[string]int{}, watchOpenErrs: map[string]int{}, samples: map[string]string{}}
}

// sample keeps the first answer of each failure cause, for the notes.
func (r *recorder) sample(cause, body string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.samples[cause]; !ok {
		r.samples[cause] = body
	}
}

func (r *recorder) record(d time.Duration, cause string) {
	ph := r.phase.Load()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent++
	if cause == "" {
		r.ok++
		r.lat[ph] = append(r.lat[ph], d)
		return
	}
	r.causes[cause]++
	r.lastFail = time.Now()
}

func (r *recorder) failed() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sent - r.ok
}

func (r *recorder) causeString() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return causeString(r.causes)
}

func causeString(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(out, ", ")
}

// cause names a failed request: its HTTP status or the kind of error.
func cause(err error, status int) string {
	switch {
	case err == nil && status == http.StatusOK:
		return ""
	case err == nil:
		return fmt.Sprintf("http %d", status)
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	s := err.Error()
	switch {
	case strings.Contains(s, "connection refused"):
		return "conn refused"
	case strings.Contains(s, "connection reset"):
		return "conn reset"
	case strings.Contains(s, "EOF"):
		return "EOF"
	}
	return "other"
}

// load is the steady traffic of a scenario: request/response loops and
// watches through the clients' balancer, spread over the agents.
type load struct {
	e      *env
	rec    *recorder
	cancel context.CancelFunc
	wg     sync.WaitGroup
	tr     *http.Transport
}

// clientTransport is a kubectl-like transport: kept-alive connections, the
// standard library's retry of idempotent requests on a connection that
// closed while idle, nothing more.
func clientTransport() *http.Transport {
	return &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second, DisableCompression: true}
}

func (e *env) startLoad(rec *recorder) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{e: e, rec: rec, cancel: cancel, tr: clientTransport()}
	hc := &http.Client{Transport: l.tr, Timeout: 10 * time.Second}
	base := "http://" + e.clientLB.addr() + "/k8s-proxy"
	for i := range e.cfg.loops {
		l.wg.Go(func() {
			tick := time.NewTicker(e.cfg.interval)
			defer tick.Stop()
			for n := i; ctx.Err() == nil; n += e.cfg.loops {
				ar := e.agents[1+n%(len(e.agents)-1)]
				start := time.Now()
				status, body, err := get(ctx, hc, base+"/api/v1/namespaces/default/pods", ar.token)
				if ctx.Err() != nil {
					return
				}
				c := cause(err, status)
				rec.record(time.Since(start), c)
				if c != "" {
					if err != nil {
						body = err.Error()
					}
					rec.sample(c, fmt.Sprintf("%s (agent %d)", strings.TrimSpace(body), ar.id))
				}
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	whc := &http.Client{Transport: l.tr}
	for i := range e.cfg.watches {
		ar := e.agents[1+i%(len(e.agents)-1)]
		l.wg.Go(func() { l.watch(ctx, whc, base+"/api/v1/namespaces/default/pods?watch=1", ar.token) })
	}
	return l
}

func get(ctx context.Context, hc *http.Client, url, token string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err == nil && resp.StatusCode == http.StatusOK && !strings.Contains(string(b), `"PodList"`) {
		return resp.StatusCode, string(b), errors.New("unexpected body")
	}
	if len(b) > 300 {
		b = b[:300]
	}
	return resp.StatusCode, string(b), err
}

// watch keeps a watch open, as a reflector does: when the stream ends, it
// is opened again (after 100 ms, then backing off to 1 s while opening
// fails); every end that was not asked for counts as a re-establishment.
func (l *load) watch(ctx context.Context, hc *http.Client, url, token string) {
	first := true
	delay := 100 * time.Millisecond
	for ctx.Err() == nil {
		if !first {
			l.rec.reest.Add(1)
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
		}
		first = false
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err == nil && resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			err = fmt.Errorf("http %d", resp.StatusCode)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c := cause(err, 0)
			if strings.HasPrefix(err.Error(), "http ") {
				c = err.Error()
			}
			l.rec.mu.Lock()
			l.rec.watchOpenErrs[c]++
			l.rec.mu.Unlock()
			delay = min(2*delay, time.Second)
			continue
		}
		delay = 100 * time.Millisecond
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			l.rec.watchEvents.Add(1)
		}
		resp.Body.Close()
	}
}

func (l *load) stop() {
	l.cancel()
	l.wg.Wait()
	l.tr.CloseIdleConnections()
}

// writes is a loop of management writes (agent tokens named
// <prefix>-<n>) through the control planes' balancer, each either done,
// refused with a Connect code from a server, or ambiguous (no answer).
type writes struct {
	prefix  string
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	ok      []string
	refused map[string]int
	unsure  []string
	causes  map[string]int // ambiguous, by cause
	samples map[string]string
}

// startWrites runs writers loops, each pausing pause between writes.
func (e *env) startWrites(prefix string, writers int, pause time.Duration) *writes {
	ctx, cancel := context.WithCancel(context.Background())
	w := &writes{prefix: prefix, cancel: cancel, done: make(chan struct{}), refused: map[string]int{}, causes: map[string]int{}, samples: map[string]string{}}
	var wg sync.WaitGroup
	for k := range writers {
		wg.Go(func() { w.loop(ctx, e, fmt.Sprintf("%s-%d", prefix, k), pause) })
	}
	go func() {
		wg.Wait()
		close(w.done)
	}()
	return w
}

func (w *writes) loop(ctx context.Context, e *env, prefix string, pause time.Duration) {
	tick := time.NewTicker(max(pause, time.Millisecond))
	defer tick.Stop()
	for i := 0; ctx.Err() == nil; i++ {
		name := fmt.Sprintf("%s-%d", prefix, i)
		answered := new(atomic.Bool)
		cctx, ccancel := context.WithTimeout(context.WithValue(ctx, answeredKey{}, answered), 5*time.Second)
		_, err := e.mgmtW.CreateAgentToken(cctx, &mgmtv1.CreateAgentTokenRequest{AgentId: e.writesTo, Name: name})
		ccancel()
		if ctx.Err() != nil && err != nil {
			w.mu.Lock()
			w.unsure = append(w.unsure, name)
			w.causes["stopped"]++
			w.mu.Unlock()
			return
		}
		w.mu.Lock()
		var ce *connect.Error
		switch {
		case err == nil:
			w.ok = append(w.ok, name)
		case answered.Load() && errors.As(err, &ce):
			// A server answered: the write was refused.
			w.refused[ce.Code().String()]++
		default:
			w.unsure = append(w.unsure, name)
			// By what the transport saw (connect-go calls a reset
			// "canceled").
			c := cause(err, 0)
			if c == "other" && errors.As(err, &ce) {
				c = ce.Code().String()
			}
			w.causes[c]++
		}
		if err != nil {
			k := "refused"
			if !answered.Load() {
				k = "no answer"
			}
			if _, ok := w.samples[k]; !ok {
				w.samples[k] = err.Error()
			}
		}
		w.mu.Unlock()
		if pause == 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (w *writes) stop() {
	w.cancel()
	<-w.done
}

// writeCheck is what the database holds of a write loop.
type writeCheck struct {
	ok, refused, unsure int
	lost, dup, phantom  int // done but absent; stored twice; refused but stored
	unsureStored        int
	refusedBy, unsureBy string
	samples             map[string]string
	err                 error
}

func (c writeCheck) String() string {
	if c.err != nil {
		return "check failed: " + c.err.Error()
	}
	s := fmt.Sprintf("writes: %d done, %d refused (%s), %d no answer (%s; %d of them stored); lost %d, duplicated %d, refused-but-stored %d",
		c.ok, c.refused, c.refusedBy, c.unsure, c.unsureBy, c.unsureStored, c.lost, c.dup, c.phantom)
	for _, k := range slices.Sorted(maps.Keys(c.samples)) {
		s += fmt.Sprintf("\n  first write %s: %s", k, c.samples[k])
	}
	return s
}

func (c writeCheck) clean() bool { return c.err == nil && c.lost == 0 && c.dup == 0 && c.phantom == 0 }

func (e *env) checkWrites(ctx context.Context, w *writes) writeCheck {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := writeCheck{ok: len(w.ok), unsure: len(w.unsure), refusedBy: causeString(w.refused), unsureBy: causeString(w.causes), samples: w.samples}
	for _, n := range w.refused {
		c.refused += n
	}
	stored := map[string]int{}
	err := poll(60*time.Second, 200*time.Millisecond, func() bool {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		rows, err := e.pool.Query(qctx, `SELECT name FROM agent_tokens WHERE agent_id = $1 AND name LIKE $2`, e.writesTo, w.prefix+"-%")
		if err != nil {
			c.err = err
			return false
		}
		defer rows.Close()
		clear(stored)
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				c.err = err
				return false
			}
			stored[n]++
		}
		c.err = rows.Err()
		return c.err == nil
	})
	if err != nil {
		return c
	}
	for _, n := range w.ok {
		if stored[n] == 0 {
			c.lost++
		}
	}
	for _, k := range stored {
		if k > 1 {
			c.dup++
		}
	}
	done := map[string]bool{}
	for _, n := range w.ok {
		done[n] = true
	}
	unsure := map[string]bool{}
	for _, n := range w.unsure {
		unsure[n] = true
		if stored[n] > 0 {
			c.unsureStored++
		}
	}
	for n := range stored {
		if !done[n] && !unsure[n] {
			c.phantom++
		}
	}
	return c
}

// answeredKey holds, in a request's context, an *atomic.Bool that
// answerTracker sets when a response (any status) came back: with it, a
// failed call is a refusal from a server, without it an ambiguous one.
type answeredKey struct{}

type answerTracker struct{ http.RoundTripper }

func (t answerTracker) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.RoundTripper.RoundTrip(r)
	if err == nil {
		if b, ok := r.Context().Value(answeredKey{}).(*atomic.Bool); ok {
			b.Store(true)
		}
	}
	return resp, err
}
