package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
	"github.com/kas-project/kas/internal/impersonation"
	"github.com/kas-project/kas/internal/obs"
	"github.com/kas-project/kas/internal/ratelimit"
)

// Defaults and bounds.
const (
	DefaultPathPrefix = "/k8s-proxy/"
	// MaxAllowTTL and MaxDenyTTL bound how long a decision is cached,
	// whatever the control plane says: a revoked credential stops working
	// within MaxAllowTTL, a new one works within MaxDenyTTL.
	MaxAllowTTL            = 60 * time.Second
	MaxDenyTTL             = 10 * time.Second
	DefaultAuthTimeout     = 5 * time.Second
	DefaultMaxCacheEntries = 10000
)

// Options configure a Proxy. Validate checks the settings (prefix, cache)
// and reports every problem at once; New also needs Auth, Transport and
// WithAgent, which the node fills in.
type Options struct {
	// PathPrefix is where the proxy is served (dataplane.kubernetes_api.
	// path_prefix); it starts and ends with '/' and is stripped before the
	// request goes to the agent. Default DefaultPathPrefix.
	PathPrefix string
	// AllowedOrigins are the origins (scheme://host[:port]) whose browser
	// pages may use the proxy (dataplane.kubernetes_api.allowed_origins,
	// see ParseOrigins and cors.go); a request with another Origin, not
	// the proxy's own, is refused with 403. Validate normalises them.
	AllowedOrigins []string
	// Auth is the control plane's AuthService.
	Auth dataplanev1connect.AuthServiceClient
	// Transport carries a request to the agent that its context names
	// (through WithAgent): dataplane.Node.Transport. It must return the
	// upgraded connection as the body of a 101 response, as http.Transport
	// does.
	Transport http.RoundTripper
	// WithAgent returns a context naming the agent Transport must reach
	// (dataplane.WithAgent).
	WithAgent func(ctx context.Context, agentID int64) context.Context
	// Failure explains an error of Transport to the caller: the HTTP
	// status and a message that is safe to show. nil answers every error
	// with 502 Bad Gateway.
	Failure func(agentID int64, err error) (code int, message string)
	// AllowTTL and DenyTTL bound how long an allowed or refused decision is
	// cached (the control plane's cache_ttl applies when shorter). Defaults
	// and maxima MaxAllowTTL and MaxDenyTTL.
	AllowTTL, DenyTTL time.Duration
	// AuthTimeout bounds one call to the control plane. Default 5 s.
	AuthTimeout time.Duration
	// MaxCacheEntries bounds the decision cache. Default 10,000.
	MaxCacheEntries int
	// FailedAuth limits failed authentications per client: a client that
	// has used up its allowance is answered 429 with Retry-After, without
	// asking the control plane, unless the decision for its credential is
	// cached. Refusals by the control plane (401, 403, 404) count as
	// failures; cached decisions and malformed credentials, which cost no
	// call, do not. nil limits nothing.
	FailedAuth *ratelimit.Limiter
	// NodeID names the node in logs.
	NodeID string
	// Clock is the time source of the decision cache; default time.Now.
	Clock func() time.Time
	// Registry receives the proxy's metrics; nil means none.
	Registry prometheus.Registerer
	Logger   *slog.Logger
}

// Validate checks o and fills defaults, reporting every problem at once.
func (o *Options) Validate() error {
	var errs []error
	if o.PathPrefix == "" {
		o.PathPrefix = DefaultPathPrefix
	}
	if !strings.HasPrefix(o.PathPrefix, "/") || !strings.HasSuffix(o.PathPrefix, "/") {
		errs = append(errs, fmt.Errorf("dataplane.kubernetes_api.path_prefix: %q must start and end with /", o.PathPrefix))
	}
	if err := o.checkOrigins(); err != nil {
		errs = append(errs, err)
	}
	if o.AllowTTL <= 0 {
		o.AllowTTL = MaxAllowTTL
	}
	if o.DenyTTL <= 0 {
		o.DenyTTL = MaxDenyTTL
	}
	if o.AllowTTL > MaxAllowTTL || o.DenyTTL > MaxDenyTTL {
		errs = append(errs, fmt.Errorf("kubernetes API proxy: decision cache TTLs must not exceed %v (allowed) and %v (refused); got %v and %v",
			MaxAllowTTL, MaxDenyTTL, o.AllowTTL, o.DenyTTL))
	}
	if o.AuthTimeout <= 0 {
		o.AuthTimeout = DefaultAuthTimeout
	}
	if o.MaxCacheEntries <= 0 {
		o.MaxCacheEntries = DefaultMaxCacheEntries
	}
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return errors.Join(errs...)
}

// Proxy is the Kubernetes API proxy's HTTP handler.
type Proxy struct {
	opts    Options
	log     *slog.Logger
	auth    *authorizer
	rp      *httputil.ReverseProxy
	handler http.Handler
	m       *metrics

	ctx    context.Context // ends on Close: every request in flight is cancelled
	cancel context.CancelFunc

	mu       sync.RWMutex // guards closed against inflight.Add
	closed   bool
	inflight sync.WaitGroup // requests being served, upgraded ones included
}

// New validates opts and returns the proxy. Close it when done.
func New(opts Options) (*Proxy, error) {
	err := opts.Validate()
	if opts.Auth == nil {
		err = errors.Join(err, errors.New("kubernetes API proxy: AuthService client is required"))
	}
	if opts.Transport == nil || opts.WithAgent == nil {
		err = errors.Join(err, errors.New("kubernetes API proxy: a transport to agents and WithAgent are required"))
	}
	if err != nil {
		return nil, err
	}
	p := &Proxy{opts: opts, log: opts.Logger}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.auth = newAuthorizer(&p.opts)
	p.m = newMetrics(p)
	if opts.Registry != nil {
		if err := opts.Registry.Register(p.m); err != nil {
			return nil, fmt.Errorf("register kubernetes API proxy metrics: %w", err)
		}
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:   p.rewrite,
		Transport: opts.Transport,
		// Zero, not -1: ReverseProxy flushes every write of a response
		// without Content-Length (watch, logs -f, chunked lists) at once
		// anyway, and -1 would also make each response with one (most
		// GETs) flush its headers from a timer goroutine, in a write (and
		// tunnel frame) of their own.
		FlushInterval:  0,
		BufferPool:     bufferPool{},
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.transportError,
		ErrorLog:       slog.NewLogLogger(opts.Logger.Handler(), slog.LevelDebug),
	}
	p.handler = obs.RequestIDs(http.HandlerFunc(p.serve))
	return p, nil
}

// ServeHTTP serves one request of the proxy listener.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) { p.handler.ServeHTTP(w, r) }

// Close cancels every request in flight (watches and upgraded streams
// included), waits for them, and refuses new ones with 503. Use it after
// the listener's http.Server has shut down, which does not wait for
// upgraded connections. Idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	p.inflight.Wait()
	p.auth.close()
	return nil
}

// Wait blocks until no request is in flight or ctx ends. (After ctx ends,
// a goroutine waits on until the requests end, which Close ensures.)
func (p *Proxy) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		p.inflight.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stats are the proxy's counters.
type Stats struct {
	// AuthHits were answered from the decision cache; AuthMisses asked the
	// control plane (AuthShared of them joined a call in flight).
	AuthHits, AuthMisses, AuthShared uint64
	// AuthErrors are control-plane calls that failed.
	AuthErrors uint64
	// AuthEntries is the number of cached decisions.
	AuthEntries int
	// RateLimited counts requests refused with 429 by Options.FailedAuth.
	RateLimited uint64
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	return Stats{
		AuthHits: p.auth.hits.Load(), AuthMisses: p.auth.misses.Load(), AuthShared: p.auth.shared.Load(),
		AuthErrors: p.auth.errs.Load(), AuthEntries: p.auth.entries(), RateLimited: p.opts.FailedAuth.Stats().Limited,
	}
}

// call is the state of one request, shared by serve, rewrite and the
// ReverseProxy callbacks through the request's context.
type call struct {
	agentID int64
	dec     *decision
	origin  string // the allowed Origin of a browser's request; "" for none
	code    int    // the status answered, for metrics and logs
}

type callKey struct{}

func (p *Proxy) begin() bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return false
	}
	p.inflight.Add(1)
	return true
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ctx := r.Context()
	if p.opts.NodeID != "" {
		ctx = obs.WithNodeID(ctx, p.opts.NodeID)
	}
	origin, hasOrigin := requestOrigin(r)
	if hasOrigin && p.cors(w, r, origin) {
		return // refused, or a preflight answered
	}
	if !p.begin() {
		p.refuse(ctx, w, r, http.StatusServiceUnavailable, "kas: this dataplane node is shutting down; retry", nil)
		return
	}
	defer p.inflight.Done()

	if !strings.HasPrefix(r.URL.Path, p.opts.PathPrefix) {
		p.refuse(ctx, w, r, http.StatusNotFound, fmt.Sprintf("kas: the Kubernetes API proxy is served under %s", p.opts.PathPrefix), nil)
		return
	}
	cred, err := parseCredential(r)
	if err != nil {
		msg := "kas: unauthorized: " + err.Error()
		if errors.Is(err, errNoCredential) && r.TLS == nil {
			msg += " (kubectl and client-go send no credentials to an http:// server URL)"
		}
		p.refuse(ctx, w, r, http.StatusUnauthorized, msg, nil)
		return
	}
	ctx = obs.WithAgentID(ctx, cred.agentID)
	dec, cached := p.auth.cached(cred)
	if !cached {
		// Only here is the control plane asked: a limited client is
		// refused before it is, and only refusals use up its allowance.
		client := p.opts.FailedAuth.Client(r)
		if ok, wait := p.opts.FailedAuth.Take(ctx, client); !ok {
			w.Header().Set("Retry-After", strconv.Itoa(int(wait/time.Second)))
			p.refuse(ctx, w, r, http.StatusTooManyRequests,
				"kas: too many failed authentications from this address; retry later", nil)
			return
		}
		dec, err = p.auth.authorize(ctx, cred)
		p.opts.FailedAuth.Done(client, err == nil && dec.code != 0)
	}
	if err != nil {
		var cpErr *errControlPlane
		code := http.StatusServiceUnavailable
		if errors.As(err, &cpErr) {
			code = cpErr.code
		}
		if r.Context().Err() != nil {
			p.m.count(0)
			return // the caller went away while we asked
		}
		msg := "kas: cannot authorize the request: the control plane is unavailable; retry"
		if code != http.StatusServiceUnavailable {
			msg = "kas: cannot authorize the request: internal error"
		}
		p.log.WarnContext(ctx, "proxy authorization failed", "err", err)
		p.refuse(ctx, w, r, code, msg, nil)
		return
	}
	if dec.code != 0 {
		msg := dec.message
		switch dec.code {
		case http.StatusUnauthorized:
			msg = "kas: unauthorized: " + msg
		case http.StatusForbidden:
			msg = "kas: forbidden: " + msg
		default:
			msg = "kas: " + msg
		}
		p.refuse(ctx, w, r, dec.code, msg, dec)
		return
	}

	c := &call{agentID: cred.agentID, dec: dec, origin: origin}
	ctx, cancel := context.WithCancel(context.WithValue(p.opts.WithAgent(ctx, cred.agentID), callKey{}, c))
	stop := context.AfterFunc(p.ctx, cancel) // Close ends watches and upgraded streams
	defer func() {
		stop()
		cancel()
	}()
	p.rp.ServeHTTP(w, r.WithContext(ctx))
	p.m.count(c.code)
	if p.log.Enabled(ctx, slog.LevelDebug) {
		p.log.DebugContext(ctx, "proxied", "method", r.Method, "path", r.URL.Path, "code", c.code,
			"principal", dec.principal, "took", time.Since(start))
	}
}

// refuse answers with a Status the proxy made itself.
func (p *Proxy) refuse(ctx context.Context, w http.ResponseWriter, r *http.Request, code int, msg string, dec *decision) {
	p.m.count(code)
	level := slog.LevelInfo
	switch {
	case code >= 500:
		level = slog.LevelWarn
	case code == http.StatusTooManyRequests:
		level = slog.LevelDebug // a flood: one line each would be one too many
	}
	attrs := []any{"method", r.Method, "path", r.URL.Path, "code", code, "reason", msg}
	if dec != nil && dec.principal != "" {
		attrs = append(attrs, "principal", dec.principal)
	}
	p.log.Log(ctx, level, "refused proxy request", attrs...)
	setCORS(w.Header(), p.allowedOrigin(r))
	WriteStatus(w, code, msg)
}

// rewrite turns the caller's request into the agent's: the path prefix
// goes, everything that could authenticate or impersonate goes, and the
// decision's identity is added in the one header agentk trusts.
// ReverseProxy has already removed hop-by-hop headers (and restores
// Upgrade for protocol switches) and Forwarded/X-Forwarded-*.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	c := pr.In.Context().Value(callKey{}).(*call)
	out := pr.Out
	u := out.URL
	u.Scheme, u.Host = "http", "kubernetes"
	u.Path = "/" + strings.TrimPrefix(u.Path, p.opts.PathPrefix)
	if u.RawPath != "" {
		u.RawPath = "/" + strings.TrimPrefix(u.RawPath, p.opts.PathPrefix)
		if u.EscapedPath() != u.RawPath {
			u.RawPath = ""
		}
	}
	if strings.Contains(u.RawQuery, "gitlab-") {
		q := u.Query()
		q.Del(AgentIDQuery)
		q.Del(CSRFQuery)
		u.RawQuery = q.Encode()
	}
	out.Host = ""
	for k := range out.Header {
		if strippedHeader(k) {
			delete(out.Header, k)
		}
	}
	if c.dec.imp != "" {
		out.Header[impersonation.Header] = []string{c.dec.imp}
	}
}

// strippedHeader reports whether the caller's header k must not reach the
// agent: credentials (Authorization, Cookie, the browser mode's agent and
// CSRF headers), impersonation, and every Kas-* header (kas's own
// headers towards the agent; only the proxy sets them).
func strippedHeader(k string) bool {
	if len(k) < 4 {
		return false
	}
	switch k[0] | 0x20 {
	case 'a':
		return strings.EqualFold(k, "Authorization")
	case 'c':
		return strings.EqualFold(k, "Cookie")
	case 'g':
		return strings.EqualFold(k, AgentIDHeader)
	case 'x':
		return strings.EqualFold(k, CSRFHeader)
	case 'k':
		return strings.EqualFold(k[:4], "Kas-")
	case 'i':
		return impersonation.IsImpersonateHeader(k)
	}
	return false
}

// modifyResponse records the agent's status and makes kas the only CORS
// authority: the upstream's Access-Control-* headers go, and kas's own are
// added for an allowed origin.
func (p *Proxy) modifyResponse(resp *http.Response) error {
	stripUpstreamCORS(resp.Header)
	if c, ok := resp.Request.Context().Value(callKey{}).(*call); ok {
		c.code = resp.StatusCode
		setCORS(resp.Header, c.origin)
	}
	return nil
}

// transportError answers a request the agent could not be asked, with a
// Status naming the side that failed.
func (p *Proxy) transportError(w http.ResponseWriter, r *http.Request, err error) {
	c, _ := r.Context().Value(callKey{}).(*call)
	if c == nil {
		c = &call{}
	}
	if r.Context().Err() != nil {
		c.code = 0 // the caller went away, or Close cut the request
		return
	}
	code, msg := http.StatusBadGateway, fmt.Sprintf("kas: the request to agent %d failed", c.agentID)
	if p.opts.Failure != nil {
		code, msg = p.opts.Failure(c.agentID, err)
	}
	c.code = code
	p.log.WarnContext(r.Context(), "proxy request to the agent failed", "method", r.Method, "path", r.URL.Path,
		"code", code, "principal", c.dec.principalOrEmpty(), "err", err)
	setCORS(w.Header(), c.origin)
	WriteStatus(w, code, msg)
}

func (d *decision) principalOrEmpty() string {
	if d == nil {
		return ""
	}
	return d.principal
}

// bufferPool reuses ReverseProxy's copy buffers.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *buffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }
