package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	dpv1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
)

// Node is another dataplane node that holds tunnels of an agent.
type Node struct {
	ID         string
	PrivateURL string
	Draining   bool
	// Tunnels is how many of the agent's tunnels the node holds.
	Tunnels int
}

// ResolverOptions configure a Resolver.
type ResolverOptions struct {
	// Nodes is the control plane's NodeService.
	Nodes dataplanev1connect.NodeServiceClient
	// SelfID is this node's ID; it is never returned as a relay candidate.
	SelfID string
	// PositiveTTL is how long a non-empty answer is served from the cache.
	// Default 5 s: a new route elsewhere is found at most that late, and a
	// vanished one costs one failed relay and an Invalidate.
	PositiveTTL time.Duration
	// NegativeTTL is how long "no node has this agent" is cached, and how
	// long a stale answer is reused after a failed lookup before asking
	// again. Default 1 s: an agent that just connected is found quickly.
	NegativeTTL time.Duration
	// StaleTTL is how long after it was fetched an answer may still be
	// served when the control plane cannot be reached, so tunnels already
	// open keep serving through an outage. Default 10 min.
	StaleTTL time.Duration
	// RPCTimeout bounds one lookup. Default 5 s.
	RPCTimeout time.Duration
	// StaleWait is how long a caller holding an expired answer (up to
	// StaleTTL old) waits for a lookup before it is given that answer
	// instead: a control plane that hangs (its database unreachable)
	// costs the requests of connected agents this much, not RPCTimeout.
	// The lookup goes on and refreshes the cache when it answers.
	// Default 500 ms.
	StaleWait time.Duration
	Logger    *slog.Logger
	Clock     Clock
}

// Validate checks o and fills defaults, reporting every problem at once.
func (o *ResolverOptions) Validate() error {
	var errs []error
	if o.Nodes == nil {
		errs = append(errs, errors.New("resolver: NodeService client is required"))
	}
	if o.SelfID == "" {
		errs = append(errs, errors.New("resolver: own node ID is required"))
	}
	if o.PositiveTTL <= 0 {
		o.PositiveTTL = 5 * time.Second
	}
	if o.NegativeTTL <= 0 {
		o.NegativeTTL = time.Second
	}
	if o.StaleTTL <= 0 {
		o.StaleTTL = 10 * time.Minute
	}
	if o.StaleTTL < o.PositiveTTL {
		errs = append(errs, errors.New("resolver: stale TTL must not be below the positive TTL"))
	}
	if o.RPCTimeout <= 0 {
		o.RPCTimeout = 5 * time.Second
	}
	if o.StaleWait <= 0 {
		o.StaleWait = 500 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = SystemClock{}
	}
	return errors.Join(errs...)
}

// ResolverStats are counters for metrics.
type ResolverStats struct {
	// Hits were answered from a fresh cache entry (including "no node").
	Hits uint64
	// Misses went to the control plane (or joined a lookup in flight).
	Misses uint64
	// Stale counts failed or slow lookups answered with an expired entry
	// instead.
	Stale uint64
	// Errors counts failed lookups with nothing to fall back on.
	Errors uint64
	// Invalidations counts routes dropped by Invalidate.
	Invalidations uint64
	// Entries is the number of agents cached now.
	Entries int
}

// Resolver finds the nodes that hold an agent's tunnels, for relaying.
type Resolver struct {
	opts   ResolverOptions
	clock  Clock
	flight *flightGroup[int64, []Node]

	hits, misses, stale, errs, invalidations atomic.Uint64

	mu        sync.Mutex
	cache     map[int64]*routeEntry
	nextSweep time.Time
}

type routeEntry struct {
	nodes   []Node // never this node; never modified in place
	fetched time.Time
	expires time.Time
}

// NewResolver validates opts and returns a Resolver. Close it when done.
func NewResolver(opts ResolverOptions) (*Resolver, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	return &Resolver{
		opts:      opts,
		clock:     opts.Clock,
		flight:    newFlightGroup[int64, []Node](opts.RPCTimeout),
		cache:     make(map[int64]*routeEntry),
		nextSweep: opts.Clock.Now().Add(opts.StaleTTL),
	}, nil
}

// Close cancels lookups in flight and waits for them.
func (r *Resolver) Close() { r.flight.close() }

// Resolve returns the other nodes holding tunnels of agentID, best first
// (non-draining, then most tunnels), or none when the agent is not
// connected elsewhere. Concurrent misses for one agent share one lookup.
// When the control plane fails, a previous answer up to StaleTTL old is
// returned instead of the error; when it is slow, that answer is returned
// after StaleWait.
func (r *Resolver) Resolve(ctx context.Context, agentID int64) ([]Node, error) {
	now := r.clock.Now()
	r.mu.Lock()
	var stale []Node
	if e := r.cache[agentID]; e != nil {
		if now.Before(e.expires) {
			nodes := slices.Clone(e.nodes)
			r.mu.Unlock()
			r.hits.Add(1)
			return nodes, nil
		}
		if len(e.nodes) > 0 && now.Sub(e.fetched) < r.opts.StaleTTL {
			stale = slices.Clone(e.nodes)
		}
	}
	r.mu.Unlock()
	r.misses.Add(1)
	wait := ctx
	if stale != nil {
		var cancel context.CancelFunc
		wait, cancel = context.WithTimeout(ctx, r.opts.StaleWait)
		defer cancel()
	}
	nodes, err := r.flight.do(wait, agentID, func(ctx context.Context) ([]Node, error) {
		return r.lookup(ctx, agentID)
	})
	switch {
	case err != nil && stale != nil && ctx.Err() == nil:
		r.stale.Add(1)
		r.opts.Logger.Debug("control plane lookup slow; using routes cached earlier", "agent_id", agentID, "wait", r.opts.StaleWait)
		return stale, nil
	case err != nil:
		return nil, fmt.Errorf("resolve agent %d: %w", agentID, err)
	}
	return slices.Clone(nodes), nil
}

func (r *Resolver) lookup(ctx context.Context, agentID int64) ([]Node, error) {
	resp, err := r.opts.Nodes.ResolveAgent(ctx, &dpv1.ResolveAgentRequest{AgentId: agentID})
	now := r.clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		if e := r.cache[agentID]; e != nil && len(e.nodes) > 0 && now.Sub(e.fetched) < r.opts.StaleTTL {
			// Serve the old answer, and keep serving it for NegativeTTL
			// before asking the control plane again.
			e.expires = now.Add(r.opts.NegativeTTL)
			r.stale.Add(1)
			r.opts.Logger.Warn("control plane lookup failed; using routes cached earlier",
				"agent_id", agentID, "age", now.Sub(e.fetched), "err", err)
			return e.nodes, nil
		}
		r.errs.Add(1)
		return nil, err
	}
	nodes := make([]Node, 0, len(resp.GetNodes()))
	for _, n := range resp.GetNodes() {
		if n.GetNodeId() == r.opts.SelfID {
			continue
		}
		nodes = append(nodes, Node{ID: n.GetNodeId(), PrivateURL: n.GetPrivateUrl(), Draining: n.GetDraining(), Tunnels: int(n.GetTunnels())})
	}
	ttl := r.opts.PositiveTTL
	if len(nodes) == 0 {
		ttl = r.opts.NegativeTTL
	}
	r.cache[agentID] = &routeEntry{nodes: nodes, fetched: now, expires: now.Add(ttl)}
	r.sweepLocked(now)
	return nodes, nil
}

// sweepLocked forgets entries too old to serve even when stale.
func (r *Resolver) sweepLocked(now time.Time) {
	if now.Before(r.nextSweep) {
		return
	}
	r.nextSweep = now.Add(r.opts.StaleTTL)
	for id, e := range r.cache {
		if now.Sub(e.fetched) >= r.opts.StaleTTL {
			delete(r.cache, id)
		}
	}
}

// Invalidate drops nodeID from agentID's cached routes, for when a relay
// found the agent's tunnel gone there. Other cached nodes stay; when none
// is left the next Resolve asks the control plane.
func (r *Resolver) Invalidate(agentID int64, nodeID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := r.cache[agentID]
	if e == nil {
		return
	}
	kept := slices.DeleteFunc(slices.Clone(e.nodes), func(n Node) bool { return n.ID == nodeID })
	if len(kept) == len(e.nodes) {
		return
	}
	r.invalidations.Add(1)
	if len(kept) == 0 {
		delete(r.cache, agentID)
		return
	}
	r.cache[agentID] = &routeEntry{nodes: kept, fetched: e.fetched, expires: e.expires}
}

// Stats returns the counters.
func (r *Resolver) Stats() ResolverStats {
	r.mu.Lock()
	n := len(r.cache)
	r.mu.Unlock()
	return ResolverStats{
		Hits: r.hits.Load(), Misses: r.misses.Load(), Stale: r.stale.Load(), Errors: r.errs.Load(),
		Invalidations: r.invalidations.Load(), Entries: n,
	}
}
