package discovery

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	dpv1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
)

// MaxRevocationDelay is how long a revoked agent token may keep its tunnels:
// AllowTTL + RecheckInterval must not exceed it.
const MaxRevocationDelay = 60 * time.Second

// ErrUnauthenticated means the control plane refused the agent token
// (unknown, malformed or revoked). Its text is safe to show the agent.
var ErrUnauthenticated = errors.New("agent token is not valid")

// AgentInfo is who an agent token belongs to.
type AgentInfo struct {
	AgentID   int64
	TokenID   int64
	AgentName string
	ProjectID int64
}

// AuthenticatorOptions configure an AgentAuthenticator.
type AuthenticatorOptions struct {
	// Auth is the control plane's AuthService.
	Auth dataplanev1connect.AuthServiceClient
	// AllowTTL is how long an accepted token is trusted without asking
	// again. Default 30 s.
	AllowTTL time.Duration
	// DenyTTL is how long a refused token is refused without asking again.
	// Default 5 s: a token minted a moment after a typo works quickly.
	DenyTTL time.Duration
	// RecheckInterval is how often Recheck asks about an open tunnel's
	// token. Default 20 s. AllowTTL + RecheckInterval ≤ MaxRevocationDelay.
	RecheckInterval time.Duration
	// StaleTTL is how long after it was confirmed an accepted token keeps
	// being accepted while the control plane cannot be reached, so an outage
	// neither closes tunnels nor refuses agents that reconnect. Default 10 min.
	StaleTTL time.Duration
	// RPCTimeout bounds one check. Default 5 s.
	RPCTimeout time.Duration
	Logger     *slog.Logger
	Clock      Clock
}

// Validate checks o and fills defaults, reporting every problem at once.
func (o *AuthenticatorOptions) Validate() error {
	var errs []error
	if o.Auth == nil {
		errs = append(errs, errors.New("agent authenticator: AuthService client is required"))
	}
	if o.AllowTTL <= 0 {
		o.AllowTTL = 30 * time.Second
	}
	if o.DenyTTL <= 0 {
		o.DenyTTL = 5 * time.Second
	}
	if o.RecheckInterval <= 0 {
		o.RecheckInterval = 20 * time.Second
	}
	if o.AllowTTL+o.RecheckInterval > MaxRevocationDelay {
		errs = append(errs, fmt.Errorf("agent authenticator: allow TTL (%v) + recheck interval (%v) must not exceed %v, the longest a revoked token may keep its tunnels",
			o.AllowTTL, o.RecheckInterval, MaxRevocationDelay))
	}
	if o.StaleTTL <= 0 {
		o.StaleTTL = 10 * time.Minute
	}
	if o.RPCTimeout <= 0 {
		o.RPCTimeout = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = SystemClock{}
	}
	return errors.Join(errs...)
}

// AuthStats are counters for metrics.
type AuthStats struct {
	// Hits were answered from the cache (accepted or refused).
	Hits uint64
	// Misses asked the control plane (or joined a check in flight).
	Misses uint64
	// Denied counts refusals, cached or not.
	Denied uint64
	// Stale counts failed checks answered with an earlier acceptance.
	Stale uint64
	// Errors counts failed checks with nothing to fall back on.
	Errors uint64
}

// AgentAuthenticator checks agent tokens with the control plane, caching
// answers briefly. The cache is keyed by the token's SHA-256; the token
// itself is never stored or logged.
type AgentAuthenticator struct {
	opts   AuthenticatorOptions
	clock  Clock
	flight *flightGroup[[sha256.Size]byte, authAnswer]

	hits, misses, denied, stale, errs atomic.Uint64

	mu        sync.Mutex
	cache     map[[sha256.Size]byte]*authEntry
	nextSweep time.Time
}

type authAnswer struct {
	info   AgentInfo
	denied bool
}

type authEntry struct {
	authAnswer
	checked time.Time // when the control plane answered
	expires time.Time
}

// NewAgentAuthenticator validates opts and returns an authenticator. Close it when done.
func NewAgentAuthenticator(opts AuthenticatorOptions) (*AgentAuthenticator, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	return &AgentAuthenticator{
		opts:      opts,
		clock:     opts.Clock,
		flight:    newFlightGroup[[sha256.Size]byte, authAnswer](opts.RPCTimeout),
		cache:     make(map[[sha256.Size]byte]*authEntry),
		nextSweep: opts.Clock.Now().Add(opts.StaleTTL),
	}, nil
}

// Close cancels checks in flight and waits for them.
func (a *AgentAuthenticator) Close() { a.flight.close() }

// Valid reports who token belongs to. It answers from the cache when it
// can (accepted tokens for AllowTTL, refused ones for DenyTTL), else asks
// the control plane; concurrent checks of one token share one call.
//
// An error wrapping ErrUnauthenticated is a definite refusal: refuse the
// handshake, or close the tunnel. Any other error means the control plane
// could not answer and the token was not accepted within StaleTTL: refuse
// a new tunnel (retryable), but keep an open one.
func (a *AgentAuthenticator) Valid(ctx context.Context, token string) (AgentInfo, error) {
	if token == "" {
		a.denied.Add(1)
		return AgentInfo{}, ErrUnauthenticated
	}
	key := sha256.Sum256([]byte(token))
	now := a.clock.Now()
	a.mu.Lock()
	if e := a.cache[key]; e != nil && now.Before(e.expires) {
		ans := e.authAnswer
		a.mu.Unlock()
		a.hits.Add(1)
		return a.result(ans)
	}
	a.mu.Unlock()
	a.misses.Add(1)
	ans, err := a.flight.do(ctx, key, func(ctx context.Context) (authAnswer, error) {
		return a.check(ctx, key, token)
	})
	if err != nil {
		return AgentInfo{}, fmt.Errorf("authenticate agent: %w", err)
	}
	return a.result(ans)
}

func (a *AgentAuthenticator) result(ans authAnswer) (AgentInfo, error) {
	if ans.denied {
		a.denied.Add(1)
		return AgentInfo{}, ErrUnauthenticated
	}
	return ans.info, nil
}

// isRefusal reports whether a control-plane error is a definite answer
// about the token rather than a failure to give one.
func isRefusal(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnauthenticated, connect.CodePermissionDenied, connect.CodeNotFound, connect.CodeInvalidArgument:
		return true
	}
	return false
}

func (a *AgentAuthenticator) check(ctx context.Context, key [sha256.Size]byte, token string) (authAnswer, error) {
	resp, err := a.opts.Auth.AuthenticateAgent(ctx, &dpv1.AuthenticateAgentRequest{Token: token})
	now := a.clock.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	var ans authAnswer
	ttl := a.opts.AllowTTL
	switch {
	case err == nil:
		ans.info = AgentInfo{AgentID: resp.GetAgentId(), TokenID: resp.GetTokenId(), AgentName: resp.GetAgentName(), ProjectID: resp.GetProjectId()}
	case isRefusal(err):
		ans.denied, ttl = true, a.opts.DenyTTL
	default:
		if e := a.cache[key]; e != nil && !e.denied && now.Sub(e.checked) < a.opts.StaleTTL {
			// Keep trusting the last acceptance, and ask again only after
			// DenyTTL so an outage does not turn into a call per tunnel.
			e.expires = now.Add(a.opts.DenyTTL)
			a.stale.Add(1)
			a.opts.Logger.Warn("control plane cannot check an agent token; trusting its last answer",
				"agent_id", e.info.AgentID, "age", now.Sub(e.checked), "err", err)
			return e.authAnswer, nil
		}
		a.errs.Add(1)
		return ans, err
	}
	a.cache[key] = &authEntry{authAnswer: ans, checked: now, expires: now.Add(ttl)}
	a.sweepLocked(now)
	return ans, nil
}

// sweepLocked forgets entries too old to serve even when stale.
func (a *AgentAuthenticator) sweepLocked(now time.Time) {
	if now.Before(a.nextSweep) {
		return
	}
	a.nextSweep = now.Add(a.opts.StaleTTL)
	for k, e := range a.cache {
		if now.After(e.expires) && now.Sub(e.checked) >= a.opts.StaleTTL {
			delete(a.cache, k)
		}
	}
}

// Recheck re-validates an open tunnel's token every RecheckInterval (the
// first time after a random part of it, to spread the load). It returns an
// error wrapping ErrUnauthenticated as soon as the token is refused (close
// the tunnel then), or nil when ctx is done. Failures to reach the control
// plane are logged and do not end it. With the defaults, a revoked token
// is noticed within AllowTTL + RecheckInterval = 50 s.
func (a *AgentAuthenticator) Recheck(ctx context.Context, token string) error {
	d := a.opts.RecheckInterval/2 + rand.N(a.opts.RecheckInterval/2+1)
	t := a.clock.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		}
		_, err := a.Valid(ctx, token)
		switch {
		case errors.Is(err, ErrUnauthenticated):
			return err
		case err != nil && ctx.Err() == nil:
			a.opts.Logger.Warn("cannot recheck an agent token; keeping the tunnel", "err", err)
		}
		t.Reset(a.opts.RecheckInterval)
	}
}

// Stats returns the counters.
func (a *AgentAuthenticator) Stats() AuthStats {
	return AuthStats{Hits: a.hits.Load(), Misses: a.misses.Load(), Denied: a.denied.Load(),
		Stale: a.stale.Load(), Errors: a.errs.Load()}
}
