// Package agentserver accepts agentk's tunnels on the agent listener (port
// 8150) and keeps them.
//
// The handshake is a WebSocket upgrade of GET /api/tunnel/v1 offering the
// subprotocol kas.tunnel.v1, with the agent token in "Authorization: Bearer
// <token>" and the agent's version in Kas-Agent-Version. The token is checked
// before the upgrade: a refused token gets 401, a control plane that cannot
// answer gets 503 with Retry-After, a draining node 503 with Retry-After.
// Every response carries Kas-Node-Id, so an agent can spread its tunnels over
// different nodes. At most Options.MaxTokenChecks handshakes have their
// token checked at once; the others wait for a slot, so that the agents of
// a dead node, arriving all together, load the control plane evenly
// instead of in a burst it cannot answer in time.
//
// After the upgrade the connection is a tunnel.Session on which the node
// opens streams and the agent accepts them. The Server keeps a registry of
// open sessions by agent ID (Open picks the least loaded one), reports each
// session to the Registrar, rechecks the agent token while the session
// lives and closes it once the token is refused. Sessions are tracked with
// their own WaitGroup: http.Server.Shutdown does not wait for hijacked
// connections.
//
// Memory: a node holds 10,000 idle tunnels, so what one costs counts. The
// HTTP handler returns as soon as the session is handed over, which frees
// net/http's goroutine, request and buffers. Each tunnel then keeps two
// goroutines (its session's reader, and a small one that waits for the
// session to end and unregisters it) and no timer of its own: one loop
// per Server rechecks every open tunnel's token when it is due, from a
// queue ordered by due time.
package agentserver

import (
	"container/heap"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kas-project/kas/dataplane/discovery"
	"github.com/kas-project/kas/dataplane/tunnel"
	"github.com/kas-project/kas/internal/ratelimit"
	"github.com/kas-project/kas/internal/secret"
)

// The handshake contract between agentk and a node.
const (
	// Path is where agents open tunnels.
	Path = "/api/tunnel/v1"
	// HeaderAgentVersion is the request header carrying agentk's version.
	HeaderAgentVersion = "Kas-Agent-Version"
	// HeaderNodeID is the response header naming the node that answered.
	HeaderNodeID = "Kas-Node-Id"
)

// Errors of Open. They wrap no detail of their own; Open adds the agent
// and node.
var (
	// ErrNoTunnel: the node holds no tunnel of the agent.
	ErrNoTunnel = errors.New("no tunnel for the agent on this node")
	// ErrHandshaking: the agent's tunnel is being set up on this node
	// (its handshake passed authentication); retry shortly.
	ErrHandshaking = errors.New("the agent's tunnel on this node is still being set up")
	// ErrDraining: the node holds tunnels of the agent, but each is going
	// away (GOAWAY sent or received); the agent is moving elsewhere.
	ErrDraining = errors.New("the agent's tunnels on this node are going away")
	// ErrMoving comes with ErrNoTunnel when the agent's last tunnel here
	// closed within MovingWindow: the agent is likely moving to another
	// node, whose report of the new tunnel may not have reached the
	// control plane yet.
	ErrMoving = errors.New("its last tunnel here closed moments ago")
)

// Authenticator checks agent tokens; *discovery.AgentAuthenticator is one.
type Authenticator interface {
	// Valid reports who the token belongs to. An error wrapping
	// discovery.ErrUnauthenticated is a definite refusal; any other error
	// means the answer is unknown for now. The Server calls it for every
	// handshake and every recheck, so it should answer from a cache.
	Valid(ctx context.Context, token string) (discovery.AgentInfo, error)
}

// Registrar is told about tunnels; *discovery.Registrar is one. Neither
// method may block.
type Registrar interface {
	TunnelOpened(agentID int64, tunnelID, agentVersion string)
	TunnelClosed(tunnelID string)
}

// Options configure a Server.
type Options struct {
	// NodeID names this node in Kas-Node-Id and in logs.
	NodeID string
	Auth   Authenticator
	// Registrar is told about every tunnel opened and closed.
	Registrar Registrar
	// Tunnel tunes every session.
	Tunnel tunnel.Config
	// AuthTimeout bounds the token check of one handshake (waiting for a
	// slot included, see MaxTokenChecks) or recheck. Default 10 s.
	AuthTimeout time.Duration
	// MaxTokenChecks bounds the handshakes whose token is being checked at
	// once; more wait for a slot (within AuthTimeout, else 503 with
	// Retry-After). It keeps a reconnect storm — thousands of agents of a
	// dead node arriving together, each token new to this node's cache —
	// from opening a connection to the control plane per handshake and
	// piling up more checks than it answers before they time out.
	// Default 32.
	MaxTokenChecks int
	// RecheckInterval is how often the token of an open tunnel is checked
	// again; the first recheck comes after a random part of it, so that
	// tunnels opened together spread their checks. A refused token closes
	// the tunnel; a check that cannot be answered keeps it. Default 20 s,
	// at most discovery.MaxRevocationDelay. A revoked token keeps its
	// tunnels for at most the authenticator's cache TTL plus this (see
	// discovery.AuthenticatorOptions).
	RecheckInterval time.Duration
	// RetryAfter is sent with 503 answers. Default 5 s.
	RetryAfter time.Duration
	// FailedAuth limits failed handshakes per client: a client that has
	// used up its allowance is answered 429 with Retry-After before its
	// token is checked (the check may cost a control-plane call), unless
	// the token is that of a tunnel open on this node. Only refused tokens
	// count. nil limits nothing.
	FailedAuth *ratelimit.Limiter
	Logger     *slog.Logger
}

// Validate checks o and fills defaults, reporting every problem at once.
func (o *Options) Validate() error {
	var errs []error
	if o.NodeID == "" {
		errs = append(errs, errors.New("agent server: node ID is required"))
	}
	if o.Auth == nil {
		errs = append(errs, errors.New("agent server: authenticator is required"))
	}
	if o.Registrar == nil {
		errs = append(errs, errors.New("agent server: registrar is required"))
	}
	if err := o.Tunnel.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("agent server: tunnel config: %w", err))
	}
	if o.AuthTimeout <= 0 {
		o.AuthTimeout = 10 * time.Second
	}
	if o.RecheckInterval <= 0 {
		o.RecheckInterval = DefaultRecheckInterval
	}
	if o.MaxTokenChecks <= 0 {
		o.MaxTokenChecks = DefaultMaxTokenChecks
	}
	if o.RecheckInterval > discovery.MaxRevocationDelay {
		errs = append(errs, fmt.Errorf("agent server: recheck interval (%v) must not exceed %v, the longest a revoked token may keep its tunnels",
			o.RecheckInterval, discovery.MaxRevocationDelay))
	}
	if o.RetryAfter <= 0 {
		o.RetryAfter = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return errors.Join(errs...)
}

// DefaultRecheckInterval is Options.RecheckInterval's default, the same
// as discovery's.
const DefaultRecheckInterval = 20 * time.Second

// DefaultMaxTokenChecks is Options.MaxTokenChecks's default.
const DefaultMaxTokenChecks = 32

// maxRechecks bounds the token rechecks in flight at once. Most are
// answered from the authenticator's cache.
const maxRechecks = 16

// Server is the agent endpoint and the registry of the node's tunnels.
type Server struct {
	opts Options
	log  *slog.Logger

	ctx    context.Context // ends on Close: rechecks stop, sessions close
	cancel context.CancelFunc
	// wg counts each tunnel's watch goroutine, the recheck loop and the
	// rechecks in flight.
	wg sync.WaitGroup
	// checks holds a token per handshake whose token is being checked.
	checks chan struct{}

	// shutdown is closed by Shutdown: every tunnel's watch then shuts
	// its session down gracefully, bounded by shutdownCtx.
	shutdown     chan struct{}
	shutdownCtx  context.Context
	shutdownStop context.CancelFunc

	mu      sync.Mutex
	byAgent map[int64][]*entry
	// handshaking counts, per agent, handshakes whose token was accepted
	// but whose tunnel is not in byAgent yet: the agent already sees the
	// tunnel up, so a dial in that window waits instead of failing.
	handshaking map[int64]int
	// left holds when each agent's last tunnel here closed, for
	// MovingWindow; leftOrder the same in closing order, to forget them.
	left      map[int64]time.Time
	leftOrder []departure
	count     int
	draining  bool
	closed    bool
	changed   chan struct{} // closed and replaced when a tunnel comes or goes
	rechecks  recheckQueue  // open tunnels by due recheck, earliest first
	looping   bool          // the recheck loop runs
	wake      chan struct{} // cap 1: the earliest recheck moved

	stats counters
}

// entry is one open tunnel. Guarded by Server.mu: next, hidx, gone.
type entry struct {
	id         string
	agentID    int64
	version    string
	remoteAddr string
	// token stays in memory for the tunnel's life: it is rechecked.
	token  string
	sess   *tunnel.Session
	opened time.Time

	next time.Time // when the token is due for a recheck
	hidx int       // index in Server.rechecks; -1 while out of it
	gone bool      // removed from the registry
}

// logger returns the Server's logger with the tunnel's IDs. It is built
// when something is logged, so that an idle tunnel holds no logger.
func (s *Server) logger(e *entry) *slog.Logger {
	return s.log.With("remote_addr", e.remoteAddr, "agent_id", e.agentID, "tunnel_id", e.id)
}

// counters are the Server's statistics; ended accumulates the stream
// counters of sessions that are gone.
type counters struct {
	accepted, refusedAuth, refusedUnavailable, refusedDraining, refusedBad atomic.Uint64
	refusedRateLimited                                                     atomic.Uint64
	revoked, closed                                                        atomic.Uint64

	mu    sync.Mutex
	ended tunnel.Stats
}

// New validates opts and returns a Server.
func New(opts Options) (*Server, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	sctx, sstop := context.WithCancel(ctx)
	return &Server{
		opts:         opts,
		log:          opts.Logger.With("node_id", opts.NodeID),
		ctx:          ctx,
		cancel:       cancel,
		shutdown:     make(chan struct{}),
		shutdownCtx:  sctx,
		shutdownStop: sstop,
		byAgent:      make(map[int64][]*entry),
		left:         make(map[int64]time.Time),
		changed:      make(chan struct{}),
		wake:         make(chan struct{}, 1),
		checks:       make(chan struct{}, opts.MaxTokenChecks),
	}, nil
}

// ServeHTTP serves the tunnel endpoint at Path and 404 elsewhere.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set(HeaderNodeID, s.opts.NodeID)
	if r.URL.Path != Path {
		http.Error(w, "not found: agents open tunnels at "+Path, http.StatusNotFound)
		return
	}
	s.serveTunnel(w, r)
}

func (s *Server) isDraining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining || s.closed
}

// unavailable prepares a 503 with Retry-After. It also closes the
// connection after the answer: an agent's next handshake must go through
// the load balancer again to find another node, not over this kept-alive
// connection to a node that is draining or busy.
func (s *Server) unavailable(w http.ResponseWriter, msg string) *tunnel.HTTPError {
	retry := int((s.opts.RetryAfter + time.Second - 1) / time.Second)
	if msg == msgDraining {
		// Another node can take the agent now: the connection closes, so
		// its next try goes through the load balancer, which stops
		// sending to this node within a readiness period. Waiting the
		// long Retry-After would leave an agent that had both tunnels
		// here without any for that long.
		retry = 1
	}
	w.Header().Set("Retry-After", strconv.Itoa(retry))
	w.Header().Set("Connection", "close")
	return &tunnel.HTTPError{Status: http.StatusServiceUnavailable, Message: msg}
}

const (
	msgDraining    = "this node is draining: connect to another node"
	msgNoToken     = "missing agent token: send \"Authorization: Bearer <agent token>\""
	msgBadToken    = "agent token is not valid (unknown, malformed or revoked)"
	msgAuthPending = "cannot verify the agent token now (control plane unavailable): retry later"
	msgBusy        = "too many agents are connecting to this node now: retry later"
	msgRateLimited = "too many failed authentications from this address: retry later"
)

func (s *Server) serveTunnel(w http.ResponseWriter, r *http.Request) {
	log := s.log.With("remote_addr", r.RemoteAddr)
	if s.isDraining() {
		he := s.unavailable(w, msgDraining)
		s.stats.refusedDraining.Add(1)
		http.Error(w, he.Message, he.Status)
		log.Debug("tunnel refused: node draining")
		return
	}
	var (
		info        discovery.AgentInfo
		token       string
		handshaking bool
	)
	sess, err := tunnel.Accept(w, r, tunnel.AcceptOptions{
		Config: s.opts.Tunnel,
		Authorize: func(r *http.Request) error {
			tok, ok := tunnel.BearerToken(r)
			if !ok {
				s.stats.refusedAuth.Add(1)
				return &tunnel.HTTPError{Status: http.StatusUnauthorized, Message: msgNoToken}
			}
			// A limited client is refused before its token is checked;
			// only refused tokens use up its allowance.
			client, known := s.opts.FailedAuth.Client(r), s.openToken(tok)
			if !known {
				ok, wait := s.opts.FailedAuth.Take(r.Context(), client)
				if !ok {
					s.stats.refusedRateLimited.Add(1)
					w.Header().Set("Retry-After", strconv.Itoa(int(wait/time.Second)))
					return &tunnel.HTTPError{Status: http.StatusTooManyRequests, Message: msgRateLimited}
				}
			}
			refused := false
			defer func() {
				if !known {
					s.opts.FailedAuth.Done(client, refused)
				}
			}()
			ctx, cancel := context.WithTimeout(r.Context(), s.opts.AuthTimeout)
			defer cancel()
			select {
			case s.checks <- struct{}{}:
			case <-ctx.Done():
				s.stats.refusedUnavailable.Add(1)
				he := s.unavailable(w, msgBusy)
				he.Err = fmt.Errorf("wait for one of %d token checks in flight: %w", cap(s.checks), ctx.Err())
				return he
			}
			var err error
			info, err = s.opts.Auth.Valid(ctx, tok)
			<-s.checks
			switch {
			case errors.Is(err, discovery.ErrUnauthenticated):
				refused = true
				s.stats.refusedAuth.Add(1)
				return &tunnel.HTTPError{Status: http.StatusUnauthorized, Message: msgBadToken, Err: err}
			case err != nil:
				s.stats.refusedUnavailable.Add(1)
				he := s.unavailable(w, msgAuthPending)
				he.Err = err
				return he
			case s.isDraining():
				s.stats.refusedDraining.Add(1)
				return s.unavailable(w, msgDraining)
			}
			token = tok
			s.setHandshaking(info.AgentID, +1)
			handshaking = true
			return nil
		},
	})
	if handshaking {
		// Until add (below) or the failure: in both cases the window ends.
		defer s.setHandshaking(info.AgentID, -1)
	}
	if err != nil {
		var he *tunnel.HTTPError
		switch {
		case errors.As(err, &he) && he.Status == http.StatusServiceUnavailable:
			log.Warn("tunnel refused", "agent_id", info.AgentID, "err", err)
		case errors.As(err, &he) && he.Status == http.StatusTooManyRequests:
			log.Debug("tunnel refused", "err", err) // a flood: one line each would be one too many
		case errors.As(err, &he):
			log.Info("tunnel refused", "err", err)
		default:
			s.stats.refusedBad.Add(1)
			log.Info("tunnel handshake failed", "err", err)
		}
		return
	}

	e := &entry{id: newTunnelID(), agentID: info.AgentID, version: agentVersion(r), remoteAddr: r.RemoteAddr,
		token: token, sess: sess, opened: time.Now(), hidx: -1}
	if !s.add(e) {
		s.stats.refusedDraining.Add(1)
		sess.Close()
		log.Info("tunnel closed at once: node draining", "agent_id", info.AgentID)
		return
	}
	s.stats.accepted.Add(1)
	s.opts.Registrar.TunnelOpened(e.agentID, e.id, e.version)
	log.Info("tunnel opened", "agent_id", e.agentID, "tunnel_id", e.id, "agent_version", e.version, "agent_name", info.AgentName)
	// The handler returns now, and with it net/http's goroutine, the
	// request and its buffers; watch owns the tunnel from here.
	go s.watch(e)
}

// openToken reports whether token is that of a tunnel open on this node
// (an agent's second tunnel, or one reconnecting): such a handshake is
// not rate limited.
func (s *Server) openToken(token string) bool {
	id, _, ok := secret.Parse(secret.AgentToken, token)
	if !ok {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.byAgent[id] {
		if subtle.ConstantTimeCompare([]byte(e.token), []byte(token)) == 1 {
			return true
		}
	}
	return false
}

// setHandshaking adjusts the count of accepted handshakes not yet added.
func (s *Server) setHandshaking(agentID int64, delta int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.handshaking == nil {
		s.handshaking = make(map[int64]int)
	}
	s.handshaking[agentID] += delta
	if s.handshaking[agentID] <= 0 {
		delete(s.handshaking, agentID)
	}
}

// watch waits for the tunnel's end (or the Server's shutdown or close,
// which it carries out on the tunnel), then unregisters it. add took its
// WaitGroup slot.
func (s *Server) watch(e *entry) {
	defer s.wg.Done()
	select {
	case <-e.sess.Done():
	case <-s.shutdown:
		if err := e.sess.Shutdown(s.shutdownCtx); err != nil {
			s.logger(e).Info("tunnel closed with streams still open at the end of the drain", "err", err)
		}
	case <-s.ctx.Done():
	}
	e.sess.Close() // no-op unless shutdown left it open
	s.remove(e)
	s.opts.Registrar.TunnelClosed(e.id)
	st := e.sess.Stats()
	s.stats.closed.Add(1)
	s.stats.mu.Lock()
	addStats(&s.stats.ended, st)
	s.stats.mu.Unlock()
	s.logger(e).Info("tunnel closed", "reason", e.sess.Err(), "duration", time.Since(e.opened).Round(time.Millisecond),
		"streams", st.StreamsOpened+st.StreamsAccepted, "bytes_in", st.BytesIn, "bytes_out", st.BytesOut)
}

// agentVersion returns the Kas-Agent-Version header, bounded for logs (the
// registrar cleans it further for the control plane).
func agentVersion(r *http.Request) string {
	v := r.Header.Get(HeaderAgentVersion)
	if len(v) > maxAgentVersion {
		v = v[:maxAgentVersion]
	}
	return strings.ToValidUTF8(v, "")
}

const maxAgentVersion = 128

func newTunnelID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // never fails
	return hex.EncodeToString(b[:])
}

// add registers e and schedules its first recheck, unless the node is
// draining or closed; it takes a WaitGroup slot for the tunnel's watch.
func (s *Server) add(e *entry) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining || s.closed {
		return false
	}
	s.wg.Add(1)
	s.byAgent[e.agentID] = append(s.byAgent[e.agentID], e)
	s.count++
	s.notifyLocked()
	half := s.opts.RecheckInterval / 2
	s.scheduleLocked(e, e.opened.Add(half+mrand.N(half+1)))
	if !s.looping {
		s.looping = true
		s.wg.Add(1)
		go s.recheckLoop()
	}
	return true
}

func (s *Server) remove(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e.gone = true
	if e.hidx >= 0 {
		heap.Remove(&s.rechecks, e.hidx)
	}
	list := s.byAgent[e.agentID]
	i := slices.Index(list, e)
	if i < 0 {
		return
	}
	list = slices.Delete(slices.Clone(list), i, i+1)
	if len(list) == 0 {
		delete(s.byAgent, e.agentID)
		s.departedLocked(e.agentID, time.Now())
	} else {
		s.byAgent[e.agentID] = list
	}
	s.count--
	s.notifyLocked()
}

func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// scheduleLocked queues e's next recheck at t, waking the loop when it
// is now the earliest.
func (s *Server) scheduleLocked(e *entry, t time.Time) {
	e.next = t
	heap.Push(&s.rechecks, e)
	if e.hidx == 0 {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// recheckLoop starts the rechecks that are due, at most maxRechecks at a
// time, and sleeps until the next one; it runs from the first tunnel
// until Close.
func (s *Server) recheckLoop() {
	defer s.wg.Done()
	sem := make(chan struct{}, maxRechecks)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		now := time.Now()
		var due []*entry
		for len(s.rechecks) > 0 && !s.rechecks[0].next.After(now) {
			due = append(due, heap.Pop(&s.rechecks).(*entry))
		}
		wait := time.Hour
		if len(s.rechecks) > 0 {
			wait = s.rechecks[0].next.Sub(now)
		}
		s.mu.Unlock()
		for _, e := range due {
			select {
			case sem <- struct{}{}:
			case <-s.ctx.Done():
				return
			}
			s.wg.Go(func() {
				defer func() { <-sem }()
				s.recheck(e)
			})
		}
		if len(due) > 0 {
			continue // time passed while starting them
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-s.wake:
		case <-s.ctx.Done():
			return
		}
	}
}

// recheck asks whether e's token is still valid: a refusal closes the
// tunnel (watch unregisters it), anything else schedules the next check.
func (s *Server) recheck(e *entry) {
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.AuthTimeout)
	_, err := s.opts.Auth.Valid(ctx, e.token)
	cancel()
	switch {
	case errors.Is(err, discovery.ErrUnauthenticated):
		s.stats.revoked.Add(1)
		s.logger(e).Warn("agent token no longer valid: closing tunnel", "err", err)
		e.sess.Close()
		return
	case err != nil && s.ctx.Err() == nil:
		s.logger(e).Warn("cannot recheck the agent token; keeping the tunnel", "err", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !e.gone {
		s.scheduleLocked(e, time.Now().Add(s.opts.RecheckInterval))
	}
}

// recheckQueue is a min-heap of tunnels by due recheck (container/heap).
type recheckQueue []*entry

func (q recheckQueue) Len() int           { return len(q) }
func (q recheckQueue) Less(i, j int) bool { return q[i].next.Before(q[j].next) }
func (q recheckQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].hidx, q[j].hidx = i, j
}

func (q *recheckQueue) Push(x any) {
	e := x.(*entry)
	e.hidx = len(*q)
	*q = append(*q, e)
}

func (q *recheckQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	old[len(old)-1] = nil
	e.hidx = -1
	*q = old[:len(old)-1]
	return e
}

// Open opens a stream to the agent on one of its tunnels here: the one with
// the fewest streams among those not going away. The stream is ready for
// writing at once (see tunnel.Session.Open). Errors wrap ErrNoTunnel,
// ErrDraining, or the tunnel's error when every session refused.
func (s *Server) Open(ctx context.Context, agentID int64) (net.Conn, error) {
	s.mu.Lock()
	list := s.byAgent[agentID] // never modified in place
	pending := s.handshaking[agentID]
	s.mu.Unlock()
	if len(list) == 0 && pending > 0 {
		return nil, fmt.Errorf("open stream to agent %d on node %s: %w", agentID, s.opts.NodeID, ErrHandshaking)
	}
	if len(list) == 0 {
		if s.moving(agentID, time.Now()) {
			return nil, fmt.Errorf("open stream to agent %d on node %s: %w: %w", agentID, s.opts.NodeID, ErrNoTunnel, ErrMoving)
		}
		return nil, fmt.Errorf("open stream to agent %d on node %s: %w", agentID, s.opts.NodeID, ErrNoTunnel)
	}
	type cand struct {
		e       *entry
		away    bool
		streams int
	}
	cands := make([]cand, len(list))
	for i, e := range list {
		cands[i] = cand{e: e, away: goneAway(e.sess), streams: e.sess.NumStreams()}
	}
	slices.SortStableFunc(cands, func(a, b cand) int {
		if a.away != b.away {
			if a.away {
				return 1
			}
			return -1
		}
		return a.streams - b.streams
	})
	var lastErr error
	allAway := true
	for _, c := range cands {
		st, err := c.e.sess.Open(ctx)
		if err == nil {
			return st, nil
		}
		lastErr = err
		if !errors.Is(err, tunnel.ErrGoingAway) && !errors.Is(err, tunnel.ErrClosed) && !errors.Is(err, tunnel.ErrPeerClosed) {
			allAway = false
		}
		if ctx.Err() != nil {
			break
		}
	}
	if allAway {
		return nil, fmt.Errorf("open stream to agent %d on node %s: %w", agentID, s.opts.NodeID, ErrDraining)
	}
	return nil, fmt.Errorf("open stream to agent %d on node %s: %w", agentID, s.opts.NodeID, lastErr)
}

func goneAway(s *tunnel.Session) bool {
	select {
	case <-s.GoneAway():
		return true
	default:
		return false
	}
}

// Refuse makes the endpoint refuse new tunnels (503 with Retry-After);
// open ones carry on. Drain does it too.
func (s *Server) Refuse() {
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
}

// Drain refuses new tunnels (503) and sends GOAWAY on every open one:
// agents open replacements elsewhere, then close these. Streams already
// open carry on; Open fails with ErrDraining from now on.
func (s *Server) Drain() {
	s.mu.Lock()
	s.draining = true
	var all []*tunnel.Session
	for _, list := range s.byAgent {
		for _, e := range list {
			all = append(all, e.sess)
		}
	}
	s.mu.Unlock()
	for _, sess := range all {
		sess.GoAway()
	}
	s.log.Info("draining: GOAWAY sent to every tunnel", "tunnels", len(all))
}

// Shutdown drains (see Drain) and then closes each tunnel as soon as it
// has no streams left, waiting until every tunnel is gone or ctx ends; the
// tunnels left then are closed at once. It returns ctx's error in that
// case.
func (s *Server) Shutdown(ctx context.Context) error {
	s.Drain()
	s.mu.Lock()
	select {
	case <-s.shutdown:
	default:
		close(s.shutdown)
	}
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, s.shutdownStop)
	defer stop()
	err := s.Wait(ctx)
	if err != nil {
		s.Close()
	}
	return err
}

// Wait blocks until no tunnel is open or ctx ends.
func (s *Server) Wait(ctx context.Context) error {
	for {
		s.mu.Lock()
		n, ch := s.count, s.changed
		s.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for %d tunnels to close: %w", n, ctx.Err())
		}
	}
}

// Close refuses new tunnels, closes every open one at once and waits for
// them to be unregistered and for rechecks in flight. It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return nil
}

// Tunnels returns the number of open tunnels.
func (s *Server) Tunnels() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// AgentTunnels returns the number of open tunnels of agentID.
func (s *Server) AgentTunnels(agentID int64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byAgent[agentID])
}

// Stats are the Server's counters since New.
type Stats struct {
	// Tunnels is the number open now.
	Tunnels int
	// Accepted counts tunnels opened.
	Accepted uint64
	// RefusedUnauthenticated counts handshakes without a valid token (401).
	RefusedUnauthenticated uint64
	// RefusedUnavailable counts handshakes refused because the token could
	// not be checked in time: the control plane did not answer, or too many
	// handshakes were waiting for a check (503).
	RefusedUnavailable uint64
	// RefusedDraining counts handshakes refused while draining (503).
	RefusedDraining uint64
	// RefusedRateLimited counts handshakes refused, before their token
	// was checked, because their client had too many failures (429).
	RefusedRateLimited uint64
	// Failed counts other failed handshakes (not a WebSocket, wrong
	// subprotocol).
	Failed uint64
	// Revoked counts tunnels closed because their token was refused later.
	Revoked uint64
	// Closed counts tunnels that ended, any way.
	Closed uint64
	// Streams sums the session counters of every tunnel, open or closed
	// (RTT is the largest among open tunnels).
	Streams tunnel.Stats
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	var live []*tunnel.Session
	for _, list := range s.byAgent {
		for _, e := range list {
			live = append(live, e.sess)
		}
	}
	n := s.count
	s.mu.Unlock()
	s.stats.mu.Lock()
	sum := s.stats.ended
	s.stats.mu.Unlock()
	sum.RTT = 0
	for _, sess := range live {
		st := sess.Stats()
		addStats(&sum, st)
		sum.RTT = max(sum.RTT, st.RTT)
	}
	return Stats{
		Tunnels:                n,
		Accepted:               s.stats.accepted.Load(),
		RefusedUnauthenticated: s.stats.refusedAuth.Load(),
		RefusedUnavailable:     s.stats.refusedUnavailable.Load(),
		RefusedDraining:        s.stats.refusedDraining.Load(),
		RefusedRateLimited:     s.stats.refusedRateLimited.Load(),
		Failed:                 s.stats.refusedBad.Load(),
		Revoked:                s.stats.revoked.Load(),
		Closed:                 s.stats.closed.Load(),
		Streams:                sum,
	}
}

func addStats(sum *tunnel.Stats, st tunnel.Stats) {
	sum.StreamsOpened += st.StreamsOpened
	sum.StreamsAccepted += st.StreamsAccepted
	sum.StreamsClosed += st.StreamsClosed
	sum.StreamsRefused += st.StreamsRefused
	sum.StreamsReset += st.StreamsReset
	sum.BytesIn += st.BytesIn
	sum.BytesOut += st.BytesOut
}
