package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	dpv1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	"github.com/kas-project/kas/internal/impersonation"
	"github.com/kas-project/kas/internal/kascookie"
)

// Where the browser mode finds the agent and the CSRF token, as KAS.
const (
	AgentIDHeader = "Gitlab-Agent-Id"
	AgentIDQuery  = "gitlab-agent-id"
	CSRFHeader    = "X-Csrf-Token"
	CSRFQuery     = "gitlab-csrf-token"
)

// Token prefixes of the Authorization: Bearer modes.
const (
	patPrefix = "pat:"
	ciPrefix  = "ci:"
)

// credential kinds.
const (
	kindPAT byte = iota + 1
	kindCI
	kindCookie
)

// credential is what a caller presented, parsed but not checked.
type credential struct {
	kind    byte
	agentID int64
	secret  string // the token, or the raw cookie value
	csrf    string // cookies on unsafe methods only
	unsafe  bool
}

// errNoCredential is a request without any credential.
var errNoCredential = errors.New("no credentials: send Authorization: Bearer pat:<agent-id>:<token> or Bearer ci:<agent-id>:<job-token>, or the " +
	kascookie.Name + " cookie with the " + AgentIDHeader + " header")

// parseCredential reads the caller's credential, as KAS: an Authorization
// header (exactly one) wins over the cookie. Its errors are safe to show.
func parseCredential(r *http.Request) (credential, error) {
	switch auth := r.Header.Values("Authorization"); len(auth) {
	case 0:
	case 1:
		return parseBearer(auth[0])
	default:
		return credential{}, errors.New("more than one Authorization header")
	}
	c, err := r.Cookie(kascookie.Name)
	if err != nil {
		return credential{}, errNoCredential
	}
	cred := credential{kind: kindCookie, secret: c.Value, unsafe: unsafeMethod(r.Method)}
	var q map[string][]string
	query := func() map[string][]string {
		if q == nil {
			q = r.URL.Query()
		}
		return q
	}
	ids := r.Header.Values(AgentIDHeader)
	if len(ids) == 0 {
		ids = query()[AgentIDQuery]
	}
	if len(ids) != 1 {
		return credential{}, fmt.Errorf("the %s cookie needs exactly one %s header (or %s query parameter)", kascookie.Name, AgentIDHeader, AgentIDQuery)
	}
	if cred.agentID, err = parseAgentID(ids[0]); err != nil {
		return credential{}, fmt.Errorf("%s: %w", AgentIDHeader, err)
	}
	if cred.unsafe {
		cred.csrf = r.Header.Get(CSRFHeader)
		if cred.csrf == "" {
			if v := query()[CSRFQuery]; len(v) > 0 {
				cred.csrf = v[0]
			}
		}
	}
	return cred, nil
}

func parseBearer(v string) (credential, error) {
	scheme, tok, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return credential{}, errors.New("the Authorization header must be Bearer pat:<agent-id>:<token> or Bearer ci:<agent-id>:<job-token>")
	}
	tok = strings.TrimSpace(tok)
	var cred credential
	switch {
	case strings.HasPrefix(tok, patPrefix):
		cred.kind, tok = kindPAT, tok[len(patPrefix):]
	case strings.HasPrefix(tok, ciPrefix):
		cred.kind, tok = kindCI, tok[len(ciPrefix):]
	default:
		return credential{}, errors.New("unknown token type: the bearer token must start with pat: or ci:")
	}
	id, secret, ok := strings.Cut(tok, ":")
	if !ok || secret == "" {
		return credential{}, errors.New("the bearer token must read pat:<agent-id>:<token> or ci:<agent-id>:<job-token>")
	}
	var err error
	if cred.agentID, err = parseAgentID(id); err != nil {
		return credential{}, fmt.Errorf("bearer token: %w", err)
	}
	cred.secret = secret
	return cred, nil
}

func parseAgentID(s string) (int64, error) {
	id, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || id <= 0 {
		return 0, errors.New("the agent ID must be a positive integer")
	}
	return id, nil
}

// unsafeMethod reports whether a method may change state (CSRF applies).
func unsafeMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

// cacheKey identifies a decision: the SHA-256 of the credential, its agent
// and, for cookies, the method's safety and the CSRF token (which only
// matter there). The secret itself is never kept.
func (c credential) cacheKey() [sha256.Size]byte {
	h := sha256.New()
	var b [10]byte
	b[0] = c.kind
	binary.BigEndian.PutUint64(b[1:9], uint64(c.agentID))
	if c.kind == kindCookie && c.unsafe {
		b[9] = 1
	}
	h.Write(b[:])
	h.Write([]byte(c.secret))
	if b[9] == 1 {
		h.Write([]byte{0})
		h.Write([]byte(c.csrf))
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

func (c credential) request() *dpv1.AuthorizeProxyRequest {
	req := &dpv1.AuthorizeProxyRequest{AgentId: c.agentID}
	switch c.kind {
	case kindPAT:
		req.Credential = &dpv1.AuthorizeProxyRequest_AccessToken{AccessToken: c.secret}
	case kindCI:
		req.Credential = &dpv1.AuthorizeProxyRequest_CiJobToken{CiJobToken: c.secret}
	case kindCookie:
		req.Credential = &dpv1.AuthorizeProxyRequest_SessionCookie{SessionCookie: c.secret}
		req.CsrfToken, req.UnsafeMethod = c.csrf, c.unsafe
	}
	return req
}

// decision is the control plane's answer, as the proxy uses it.
type decision struct {
	code      int    // 0: allowed; else the HTTP status of the refusal
	message   string // for refusals, safe to show the caller
	principal string // "user:<name>" or "ci_job:<id>", for logs
	imp       string // encoded Kas-Impersonation; "" for none
	expires   time.Time
}

// errControlPlane is a decision the control plane could not give.
type errControlPlane struct {
	code int // 503 (unavailable) or 500
	err  error
}

func (e *errControlPlane) Error() string { return "authorize: " + e.err.Error() }
func (e *errControlPlane) Unwrap() error { return e.err }

// authorizer asks the control plane whether a credential may reach an
// agent, caching each answer for the TTL the control plane gives, bounded
// by AllowTTL and DenyTTL, and sharing one call between concurrent misses.
type authorizer struct {
	opts   *Options
	ctx    context.Context // ends on close: calls in flight are cancelled
	cancel context.CancelFunc
	wg     sync.WaitGroup // calls in flight

	hits, misses, shared, errs atomic.Uint64

	mu     sync.RWMutex
	cache  map[[sha256.Size]byte]*decision
	calls  map[[sha256.Size]byte]*authCall
	closed bool
}

// authCall is one AuthorizeProxy call that concurrent misses share.
type authCall struct {
	done chan struct{}
	d    *decision
	err  error
}

func newAuthorizer(o *Options) *authorizer {
	ctx, cancel := context.WithCancel(context.Background())
	return &authorizer{opts: o, ctx: ctx, cancel: cancel,
		cache: make(map[[sha256.Size]byte]*decision), calls: make(map[[sha256.Size]byte]*authCall)}
}

// cached returns the cached decision for cred, if there is one in force.
func (a *authorizer) cached(cred credential) (*decision, bool) {
	key := cred.cacheKey()
	a.mu.RLock()
	d, ok := a.cache[key]
	a.mu.RUnlock()
	if ok && a.opts.Clock().Before(d.expires) {
		a.hits.Add(1)
		return d, true
	}
	return nil, false
}

// authorize returns the decision for cred. Errors are *errControlPlane.
func (a *authorizer) authorize(ctx context.Context, cred credential) (*decision, error) {
	key := cred.cacheKey()
	now := a.opts.Clock()
	a.mu.RLock()
	d, ok := a.cache[key]
	a.mu.RUnlock()
	if ok && now.Before(d.expires) {
		a.hits.Add(1)
		return d, nil
	}
	a.mu.Lock()
	if d, ok := a.cache[key]; ok && now.Before(d.expires) { // filled meanwhile
		a.mu.Unlock()
		a.hits.Add(1)
		return d, nil
	}
	a.misses.Add(1)
	if a.closed {
		a.mu.Unlock()
		return nil, &errControlPlane{code: http.StatusServiceUnavailable, err: errors.New("node shutting down")}
	}
	c, ok := a.calls[key]
	if ok {
		a.shared.Add(1)
	} else {
		c = &authCall{done: make(chan struct{})}
		a.calls[key] = c
		a.wg.Add(1)
		// The call outlives a caller that gives up: others may share it.
		// It keeps the caller's context values (request ID) for logs.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.opts.AuthTimeout)
		stop := context.AfterFunc(a.ctx, cancel)
		go func() {
			defer a.wg.Done()
			defer cancel()
			defer stop()
			c.d, c.err = a.ask(cctx, cred)
			a.mu.Lock()
			delete(a.calls, key)
			if c.err == nil && !c.d.expires.IsZero() {
				a.putLocked(key, c.d)
			}
			a.mu.Unlock()
			if c.err != nil {
				a.errs.Add(1)
			}
			close(c.done)
		}()
	}
	a.mu.Unlock()
	select {
	case <-c.done:
		return c.d, c.err
	case <-ctx.Done():
		return nil, &errControlPlane{code: http.StatusServiceUnavailable, err: ctx.Err()}
	}
}

// close cancels the calls in flight and waits for them.
func (a *authorizer) close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.cancel()
	a.wg.Wait()
}

// ask calls the control plane and turns its answer into a decision.
func (a *authorizer) ask(ctx context.Context, cred credential) (*decision, error) {
	resp, err := a.opts.Auth.AuthorizeProxy(ctx, cred.request())
	now := a.opts.Clock()
	if err != nil {
		switch connect.CodeOf(err) {
		case connect.CodeNotFound:
			return &decision{code: http.StatusNotFound, message: fmt.Sprintf("agent %d not found", cred.agentID),
				expires: now.Add(a.opts.DenyTTL)}, nil
		case connect.CodeInvalidArgument:
			return &decision{code: http.StatusBadRequest, message: "the control plane refused the request as malformed"}, nil
		case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeCanceled, connect.CodeResourceExhausted, connect.CodeUnknown:
			return nil, &errControlPlane{code: http.StatusServiceUnavailable, err: err}
		}
		return nil, &errControlPlane{code: http.StatusInternalServerError, err: err}
	}
	d := &decision{principal: resp.GetPrincipal(), message: resp.GetReason()}
	bound := a.opts.DenyTTL
	switch resp.GetDecision() {
	case dpv1.AuthorizeProxyResponse_DECISION_ALLOWED:
		bound = a.opts.AllowTTL
		if imp := resp.GetImpersonation(); imp.GetUsername() != "" {
			id := impersonation.Identity{Username: imp.GetUsername(), Groups: imp.GetGroups(), UID: imp.GetUid()}
			if len(imp.GetExtra()) > 0 {
				id.Extra = make(map[string][]string, len(imp.GetExtra()))
				for k, v := range imp.GetExtra() {
					id.Extra[k] = v.GetValues()
				}
			}
			if d.imp, err = impersonation.Encode(id); err != nil {
				return nil, &errControlPlane{code: http.StatusInternalServerError, err: err}
			}
		}
	case dpv1.AuthorizeProxyResponse_DECISION_UNAUTHENTICATED:
		d.code = http.StatusUnauthorized
	case dpv1.AuthorizeProxyResponse_DECISION_FORBIDDEN:
		d.code = http.StatusForbidden
	default:
		return nil, &errControlPlane{code: http.StatusInternalServerError,
			err: fmt.Errorf("unknown decision %v", resp.GetDecision())}
	}
	if ttl := min(resp.GetCacheTtl().AsDuration(), bound); resp.GetCacheTtl() != nil && ttl > 0 {
		d.expires = now.Add(ttl)
	}
	return d, nil
}

// putLocked caches d under key; a.mu is held.
func (a *authorizer) putLocked(key [sha256.Size]byte, d *decision) {
	if len(a.cache) >= a.opts.MaxCacheEntries {
		now := a.opts.Clock()
		for k, e := range a.cache {
			if !now.Before(e.expires) {
				delete(a.cache, k)
			}
		}
		if len(a.cache) >= a.opts.MaxCacheEntries {
			clear(a.cache) // a flood of distinct credentials: start over
		}
	}
	a.cache[key] = d
}

func (a *authorizer) entries() int {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return len(a.cache)
}
