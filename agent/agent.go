package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kas-project/kas/dataplane/tunnel"
	"github.com/kas-project/kas/internal/agentconfig"
	"github.com/kas-project/kas/internal/obs"
)

// Agent is agentk: a pool of tunnels to the dataplane and the proxy to the
// Kubernetes API server behind them. Create it with New, serve with Run.
type Agent struct {
	o      *resolved
	log    *slog.Logger
	logCtx context.Context // carries the agent ID into every record
	clock  Clock
	dialer *dialer
	proxy  http.Handler // the Kubernetes API proxy, instrumented
	reg    *prometheus.Registry
	m      *metrics
	obs    http.Handler
	obsLn  net.Listener

	nextID  atomic.Uint64
	running atomic.Bool

	// mu guards the tunnel set and what is derived from it.
	mu       sync.Mutex
	tunnels  map[*tun]struct{} // every tunnel not yet ended
	changed  chan struct{}     // closed and replaced whenever the set changes
	ready    chan struct{}     // closed when the first tunnel came up
	finished tunnel.Stats      // counters of ended tunnels

	// wg tracks every tunnel's goroutines (serve, watch, drain).
	wg sync.WaitGroup
	// hardStop cuts every drain short; Run calls it ShutdownTimeout after
	// its context ended.
	hardCtx  context.Context
	hardStop context.CancelFunc

	cfg configState // the configuration delivered last
}

// tun is one tunnel of the pool.
type tun struct {
	id          uint64
	nodeID      string
	sess        *tunnel.Session
	srv         *http.Server
	ctx         context.Context // logging context: agent and node IDs
	log         *slog.Logger    // with tunnel_id
	connectedAt time.Time
	expires     time.Time // connectedAt + jittered MaxConnectionAge

	// Guarded by Agent.mu.
	draining bool // GOAWAY sent or received: no new streams
	retiring bool // a drain goroutine owns the shutdown
}

// New validates o, prepares the Kubernetes API transport and opens the
// observability listener, so its address is known before Run.
func New(o Options) (*Agent, error) {
	r, err := o.resolve()
	if err != nil {
		return nil, fmt.Errorf("invalid agent options:\n%w", err)
	}
	a := &Agent{
		o:       r,
		log:     r.Logger,
		logCtx:  context.Background(),
		clock:   r.Clock,
		dialer:  newDialer(r),
		reg:     r.Registry,
		tunnels: make(map[*tun]struct{}),
		changed: make(chan struct{}),
		ready:   make(chan struct{}),
	}
	a.cfg.version = -1
	if r.LogLevel != nil {
		a.cfg.baseLevel = r.LogLevel.Level()
	}
	a.hardCtx, a.hardStop = context.WithCancel(context.Background())
	if r.agentID != 0 {
		a.logCtx = obs.WithAgentID(a.logCtx, r.agentID)
	}
	if a.reg == nil {
		a.reg = obs.NewRegistry()
	}
	a.m = newMetrics(a)
	if err := a.reg.Register(a.m); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	proxy, target, err := newProxy(r.kube, a.log)
	if err != nil {
		return nil, err
	}
	metered := obs.HTTPMetrics(a.reg, "agentk", proxy)
	a.proxy = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if agentconfig.IsDelivery(r) {
			a.serveConfig(w, r)
			return
		}
		// Requests and responses stream both ways at once (the HTTP/1
		// server would otherwise read the whole request body before the
		// response starts).
		http.NewResponseController(w).EnableFullDuplex()
		metered.ServeHTTP(w, r)
	})
	a.obs = obs.Handler(obs.Options{Registry: a.reg, Ready: a.readyErr})
	if r.ObservabilityListen != "" {
		a.obsLn, err = net.Listen("tcp", r.ObservabilityListen)
		if err != nil {
			return nil, fmt.Errorf("observability listener (--observability-listen): %w", err)
		}
	}
	if r.tokenShape != nil {
		a.log.WarnContext(a.logCtx, "agent token: "+r.tokenShape.Error()+"; the node will likely refuse it", "token_file", r.TokenFile)
	}
	a.log.InfoContext(a.logCtx, "agent configured", "kas_address", r.tunnelURL, "tunnels", r.Tunnels,
		"kubernetes_api", target.String(), "version", r.Version)
	return a, nil
}

// Run keeps the tunnels open and serves them until ctx ends. Then it sends
// GOAWAY on every tunnel, lets their streams finish for up to
// ShutdownTimeout, closes them and returns nil. It fails only if the
// observability server does. Run may be called once.
func (a *Agent) Run(ctx context.Context) error {
	if !a.running.CompareAndSwap(false, true) {
		return errors.New("agent: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var obsErr error
	var obsWG sync.WaitGroup
	var obsSrv *http.Server
	if a.obsLn != nil {
		obsSrv = &http.Server{Handler: a.obs, ReadHeaderTimeout: 10 * time.Second,
			ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelDebug)}
		a.log.InfoContext(a.logCtx, "listening", "listener", "observability", "address", a.obsLn.Addr().String())
		obsWG.Go(func() {
			if err := obsSrv.Serve(a.obsLn); !errors.Is(err, http.ErrServerClosed) {
				obsErr = fmt.Errorf("observability server: %w", err)
				cancel()
			}
		})
	}

	var slots sync.WaitGroup
	for i := range a.o.Tunnels {
		slots.Go(func() { a.runSlot(ctx, i) })
	}
	slots.Wait()

	// Drain: no slot opens tunnels any more.
	a.mu.Lock()
	live := make([]*tun, 0, len(a.tunnels))
	for t := range a.tunnels {
		live = append(live, t)
	}
	a.mu.Unlock()
	a.log.InfoContext(a.logCtx, "stopping: draining tunnels", "tunnels", len(live), "timeout", a.o.ShutdownTimeout)
	for _, t := range live {
		a.retire(t, "shutdown")
	}
	done := make(chan struct{})
	go func() {
		a.wg.Wait()
		close(done)
	}()
	if !waitOrTimeout(done, a.clock, a.o.ShutdownTimeout) {
		a.log.WarnContext(a.logCtx, "shutdown timeout: closing tunnels with streams still open")
		a.hardStop()
		<-done
	}
	a.hardStop()

	if obsSrv != nil {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		obsSrv.Shutdown(sctx)
		scancel()
		obsWG.Wait()
	}
	a.log.InfoContext(a.logCtx, "stopped")
	return obsErr
}

func waitOrTimeout(done <-chan struct{}, c Clock, d time.Duration) bool {
	t := c.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C():
		return false
	}
}

// Close releases what New acquired when Run is never called.
func (a *Agent) Close() error {
	if a.obsLn != nil && !a.running.Load() {
		return a.obsLn.Close()
	}
	return nil
}

// ObservabilityAddr is the address of the observability listener, or nil.
func (a *Agent) ObservabilityAddr() net.Addr {
	if a.obsLn == nil {
		return nil
	}
	return a.obsLn.Addr()
}

// Handler serves /livez, /readyz (ready while a tunnel is up), /metrics and
// /debug/pprof/, as the observability listener does.
func (a *Agent) Handler() http.Handler { return a.obs }

// Ready is closed once the first tunnel is up.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Tunnels returns how many tunnels are up and taking new streams (not
// draining).
func (a *Agent) Tunnels() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.activeLocked()
}

// Nodes returns the node IDs of the tunnels that are up and taking new
// streams, sorted, one per tunnel ("" when a node sent no Kas-Node-Id).
func (a *Agent) Nodes() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ns []string
	for t := range a.tunnels {
		if !t.draining {
			ns = append(ns, t.nodeID)
		}
	}
	sort.Strings(ns)
	return ns
}

// WaitTunnels waits until at least n tunnels are up and taking new
// streams, or ctx ends.
func (a *Agent) WaitTunnels(ctx context.Context, n int) error {
	for {
		a.mu.Lock()
		got, ch := a.activeLocked(), a.changed
		a.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for %d tunnels (%d up): %w", n, got, ctx.Err())
		}
	}
}

func (a *Agent) activeLocked() int {
	n := 0
	for t := range a.tunnels {
		if !t.draining {
			n++
		}
	}
	return n
}

func (a *Agent) readyErr(context.Context) error {
	if a.Tunnels() == 0 {
		return errors.New("no tunnel to the dataplane is up")
	}
	return nil
}

// notifyLocked wakes WaitTunnels callers.
func (a *Agent) notifyLocked() {
	close(a.changed)
	a.changed = make(chan struct{})
}
