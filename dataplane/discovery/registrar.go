package discovery

import (
	"cmp"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	dpv1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
)

// MaxBatch is the most tunnels sent in one RegisterTunnels or
// UnregisterTunnels call.
const MaxBatch = 1000

// RegistrarOptions configure a Registrar.
type RegistrarOptions struct {
	// NodeID names the node; stable across restarts (the pod name).
	NodeID string
	// BootID identifies this process start; random when empty.
	BootID string
	// PrivateURL is where other nodes reach this one (see PrivateURL).
	PrivateURL string
	// Version is the node's software version, for operators.
	Version string
	// Nodes is the control plane's NodeService.
	Nodes dataplanev1connect.NodeServiceClient
	// ControlPlaneURL and ControlPlaneSetting (the name of the setting the
	// URL came from; default dataplane.controlplane_url) make "cannot reach
	// the control plane" logs actionable.
	ControlPlaneURL     string
	ControlPlaneSetting string
	Logger              *slog.Logger
	// Clock defaults to the system clock.
	Clock Clock
	// MinBackoff and MaxBackoff bound the retry delay (exponential, full
	// jitter) while the control plane fails. Defaults 250 ms and 15 s.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// BatchSize is the most tunnels per call; default and at most MaxBatch.
	BatchSize int
	// RPCTimeout bounds each call to the control plane. Default 10 s.
	RPCTimeout time.Duration
}

// Validate checks o and fills defaults, reporting every problem at once.
func (o *RegistrarOptions) Validate() error {
	var errs []error
	if o.NodeID == "" || len(o.NodeID) > 253 {
		errs = append(errs, errors.New("registrar: node ID must be 1 to 253 characters"))
	}
	if o.PrivateURL == "" {
		errs = append(errs, errors.New("registrar: private URL is required"))
	}
	if o.Nodes == nil {
		errs = append(errs, errors.New("registrar: NodeService client is required"))
	}
	if o.BootID == "" {
		var b [16]byte
		_, _ = crand.Read(b[:]) // never fails
		o.BootID = hex.EncodeToString(b[:])
	}
	if o.ControlPlaneSetting == "" {
		o.ControlPlaneSetting = "dataplane.controlplane_url (KAS_DATAPLANE_CONTROLPLANE_URL)"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = SystemClock{}
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 250 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 15 * time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		errs = append(errs, errors.New("registrar: max backoff must not be below min backoff"))
	}
	if o.BatchSize <= 0 || o.BatchSize > MaxBatch {
		o.BatchSize = MaxBatch
	}
	if o.RPCTimeout <= 0 {
		o.RPCTimeout = 10 * time.Second
	}
	return errors.Join(errs...)
}

// Registrar keeps the node registered with the control plane and tells it
// which tunnels the node holds.
//
// Run registers (retrying with backoff while the control plane is
// unreachable), heartbeats at the interval the control plane asks for, and
// flushes tunnel events. Whenever the control plane has lost the node
// (NotFound on a heartbeat, NotFound or FailedPrecondition on a tunnel
// write) it registers again and re-sends every open tunnel. The node keeps
// serving meanwhile: nothing here blocks a tunnel.
//
// TunnelOpened and TunnelClosed never block. Each event gets a node-wide,
// strictly increasing sequence number, which the control plane uses to fence
// writes, so a close always wins over the open before it. Events are queued
// per tunnel (only the latest state of each tunnel is kept) and sent as soon
// as possible, in batches of at most MaxBatch, coalescing whatever arrived
// while the previous call was in flight. Failed calls are retried; an open
// followed by a close before anything was sent costs no call at all.
type Registrar struct {
	opts  RegistrarOptions
	log   *slog.Logger
	clock Clock
	kick  chan struct{} // buffered(1): events are pending

	registered atomic.Bool

	mu        sync.Mutex
	seq       int64
	tunnels   map[string]*tunnelState // open, or closed but not yet confirmed
	pending   map[string]*tunnelState // latest state not yet confirmed
	draining  bool
	lastBeat  time.Time
	changed   chan struct{} // closed and replaced on every state change
	running   bool
	closed    bool
	runCancel context.CancelFunc
	runDone   chan struct{}
}

type tunnelState struct {
	id          string
	agentID     int64
	version     string
	connectedAt time.Time
	seq         int64 // of the latest event
	open        bool
	sent        bool // an open was sent: a close must be too
}

// NewRegistrar validates opts and returns a Registrar; call Run.
func NewRegistrar(opts RegistrarOptions) (*Registrar, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	return &Registrar{
		opts:     opts,
		log:      opts.Logger.With("node_id", opts.NodeID, "boot_id", opts.BootID),
		clock:    opts.Clock,
		kick:     make(chan struct{}, 1),
		tunnels:  make(map[string]*tunnelState),
		pending:  make(map[string]*tunnelState),
		lastBeat: opts.Clock.Now(),
		changed:  make(chan struct{}),
	}, nil
}

// NodeID returns the node's ID.
func (r *Registrar) NodeID() string { return r.opts.NodeID }

// BootID returns this process start's boot ID.
func (r *Registrar) BootID() string { return r.opts.BootID }

// Registered reports whether the control plane knows the node: it has
// registered and has not since been told that its registration is gone. A
// control plane that is merely unreachable does not change it; see
// HeartbeatAge.
func (r *Registrar) Registered() bool { return r.registered.Load() }

// HeartbeatAge is the time since the control plane last renewed the node's
// lease (registration or heartbeat), or since NewRegistrar if it never has.
func (r *Registrar) HeartbeatAge() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.clock.Now().Sub(r.lastBeat)
}

// Pending is the number of tunnels whose latest state the control plane has
// not confirmed yet.
func (r *Registrar) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending)
}

// Limits the control plane enforces on a tunnel.
const (
	maxTunnelID     = 128
	maxAgentVersion = 128
)

// TunnelOpened records that the node accepted a tunnel. It never blocks.
// tunnelID must be unique on the node, 1 to 128 bytes; agentID positive.
// The agent version is cleaned: valid UTF-8, no control characters, at
// most 128 bytes.
func (r *Registrar) TunnelOpened(agentID int64, tunnelID, agentVersion string) {
	if agentID <= 0 || !validTunnelID(tunnelID) {
		r.log.Error("tunnel not reported to the control plane: invalid ID", "agent_id", agentID, "tunnel_id", tunnelID)
		return
	}
	agentVersion = cleanVersion(agentVersion)
	r.mu.Lock()
	r.seq++
	t := r.tunnels[tunnelID]
	if t == nil {
		t = &tunnelState{id: tunnelID}
		r.tunnels[tunnelID] = t
	}
	t.agentID, t.version, t.connectedAt = agentID, agentVersion, r.clock.Now()
	t.seq, t.open = r.seq, true
	r.pending[tunnelID] = t
	r.notifyLocked()
	r.mu.Unlock()
	r.wake()
}

// TunnelClosed records that a tunnel ended. It never blocks; unknown IDs are ignored.
func (r *Registrar) TunnelClosed(tunnelID string) {
	r.mu.Lock()
	t := r.tunnels[tunnelID]
	if t == nil || !t.open {
		r.mu.Unlock()
		return
	}
	r.seq++
	t.seq, t.open = r.seq, false
	if t.sent {
		r.pending[tunnelID] = t
	} else { // the control plane never heard of it
		delete(r.tunnels, tunnelID)
		delete(r.pending, tunnelID)
	}
	r.notifyLocked()
	r.mu.Unlock()
	r.wake()
}

func validTunnelID(id string) bool {
	return id != "" && len(id) <= maxTunnelID && utf8.ValidString(id) &&
		!strings.ContainsFunc(id, unicode.IsControl)
}

// cleanVersion makes an agent-supplied version storable: valid UTF-8 (as
// protobuf requires) without control characters (Postgres text refuses
// NUL), at most maxAgentVersion bytes.
func cleanVersion(v string) string {
	v = strings.ToValidUTF8(v, "")
	v = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, v)
	if len(v) > maxAgentVersion {
		v = strings.ToValidUTF8(v[:maxAgentVersion], "")
	}
	return v
}

func (r *Registrar) wake() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *Registrar) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// wait blocks until cond (called with r.mu held) is true or ctx is done.
func (r *Registrar) wait(ctx context.Context, cond func() bool) error {
	for {
		r.mu.Lock()
		ok, ch := cond(), r.changed
		r.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WaitSynced blocks until the node is registered and the control plane has
// confirmed (or a later event has superseded) every tunnel event recorded
// before the call.
func (r *Registrar) WaitSynced(ctx context.Context) error {
	r.mu.Lock()
	target := r.seq
	r.mu.Unlock()
	return r.wait(ctx, func() bool {
		if !r.registered.Load() {
			return false
		}
		for _, t := range r.pending {
			if t.seq <= target {
				return false
			}
		}
		return true
	})
}

// errLost means the control plane no longer knows this node's boot.
var errLost = errors.New("registration lost")

func isLost(err error) bool {
	c := connect.CodeOf(err)
	return c == connect.CodeNotFound || c == connect.CodeFailedPrecondition
}

// Run keeps the node registered until ctx is done or Deregister is called,
// then returns nil. The node should serve while Run retries.
func (r *Registrar) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.running || r.closed {
		r.mu.Unlock()
		return errors.New("registrar: Run called twice or after Deregister")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.running, r.runCancel, r.runDone = true, cancel, make(chan struct{})
	defer close(r.runDone)
	r.mu.Unlock()

	for {
		interval, ok := r.register(ctx)
		if !ok {
			return nil
		}
		err := r.session(ctx, interval)
		r.registered.Store(false)
		r.mu.Lock()
		r.notifyLocked()
		r.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
		r.log.Warn("control plane lost this node's registration; registering again", "err", err)
	}
}

// register registers the node (and re-applies draining), retrying until it
// succeeds or ctx is done. It returns the heartbeat interval.
func (r *Registrar) register(ctx context.Context) (time.Duration, bool) {
	bo := r.backoff()
	for attempt := 1; ; attempt++ {
		interval, err := r.registerOnce(ctx)
		if err == nil {
			r.log.Info("node registered", "private_url", r.opts.PrivateURL, "heartbeat_interval", interval)
			return interval, true
		}
		if ctx.Err() != nil {
			return 0, false
		}
		d := bo.next()
		r.logFailure(slog.LevelError, "register node", err, attempt, d)
		if !r.sleep(ctx, d) {
			return 0, false
		}
	}
}

func (r *Registrar) registerOnce(ctx context.Context) (time.Duration, error) {
	cctx, cancel := context.WithTimeout(ctx, r.opts.RPCTimeout)
	defer cancel()
	resp, err := r.opts.Nodes.RegisterNode(cctx, &dpv1.RegisterNodeRequest{
		NodeId: r.opts.NodeID, BootId: r.opts.BootID, PrivateUrl: r.opts.PrivateURL, Version: r.opts.Version,
	})
	if err != nil {
		return 0, fmt.Errorf("register node: %w", err)
	}
	r.mu.Lock()
	draining := r.draining
	r.mu.Unlock()
	if draining {
		if _, err := r.opts.Nodes.SetDraining(cctx, &dpv1.SetDrainingRequest{NodeId: r.opts.NodeID, BootId: r.opts.BootID}); err != nil {
			return 0, fmt.Errorf("mark node draining: %w", err)
		}
	}
	interval := resp.GetHeartbeatInterval().AsDuration()
	if interval <= 0 {
		interval = resp.GetLeaseTtl().AsDuration() / 3
	}
	if interval <= 0 {
		interval = 5 * time.Second
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastBeat = r.clock.Now()
	// The control plane may have lost every tunnel: send all open ones
	// again. Pending closes stay pending; they are harmless if it has.
	for id, t := range r.tunnels {
		if t.open {
			r.pending[id] = t
		}
	}
	r.registered.Store(true)
	r.notifyLocked()
	r.wake()
	return interval, nil
}

// session heartbeats and flushes tunnel events until ctx is done or the
// registration is lost (the error then says why).
func (r *Registrar) session(ctx context.Context, interval time.Duration) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := r.heartbeatLoop(ctx, interval); err != nil {
			cancel(err)
		}
	})
	wg.Go(func() {
		if err := r.flushLoop(ctx); err != nil {
			cancel(err)
		}
	})
	wg.Wait()
	return context.Cause(ctx)
}

func (r *Registrar) heartbeatLoop(ctx context.Context, interval time.Duration) error {
	t := r.clock.NewTimer(interval)
	defer t.Stop()
	bo := r.backoff()
	for attempt := 1; ; {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		}
		cctx, cancel := context.WithTimeout(ctx, r.opts.RPCTimeout)
		_, err := r.opts.Nodes.Heartbeat(cctx, &dpv1.HeartbeatRequest{NodeId: r.opts.NodeID, BootId: r.opts.BootID})
		cancel()
		switch {
		case err == nil:
			r.mu.Lock()
			r.lastBeat = r.clock.Now()
			r.notifyLocked()
			r.mu.Unlock()
			bo.reset()
			attempt = 1
			t.Reset(interval)
		case ctx.Err() != nil:
			return nil
		case isLost(err):
			return fmt.Errorf("heartbeat: %w: %w", errLost, err)
		default:
			d := min(bo.next(), interval)
			r.logFailure(slog.LevelWarn, "heartbeat", err, attempt, d)
			attempt++
			t.Reset(d)
		}
	}
}

// batch is one RegisterTunnels or UnregisterTunnels call.
type batch struct {
	open bool
	ids  []string
	seqs []int64
	msgs []*dpv1.Tunnel
}

// nextBatch takes the pending tunnels in sequence order, all of the kind
// (open or close) of the oldest one, at most BatchSize. Nil when none.
func (r *Registrar) nextBatch() *batch {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pending) == 0 {
		return nil
	}
	all := make([]*tunnelState, 0, len(r.pending))
	for _, t := range r.pending {
		all = append(all, t)
	}
	slices.SortFunc(all, func(a, b *tunnelState) int { return cmp.Compare(a.seq, b.seq) })
	b := &batch{open: all[0].open}
	for _, t := range all {
		if len(b.ids) == r.opts.BatchSize {
			break
		}
		if t.open != b.open {
			continue
		}
		m := &dpv1.Tunnel{TunnelId: t.id, Seq: t.seq}
		if t.open {
			m.AgentId, m.AgentVersion, m.ConnectedAt = t.agentID, t.version, timestamppb.New(t.connectedAt)
			t.sent = true
		}
		b.ids, b.seqs, b.msgs = append(b.ids, t.id), append(b.seqs, t.seq), append(b.msgs, m)
	}
	return b
}

// ack marks a batch confirmed: each tunnel whose state has not moved on
// since leaves the queue; confirmed closes are forgotten.
func (r *Registrar) ack(b *batch) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, id := range b.ids {
		t := r.tunnels[id]
		if t == nil || t.seq != b.seqs[i] {
			continue
		}
		delete(r.pending, id)
		if !t.open {
			delete(r.tunnels, id)
		}
	}
	r.notifyLocked()
}

func (r *Registrar) send(ctx context.Context, b *batch) error {
	ctx, cancel := context.WithTimeout(ctx, r.opts.RPCTimeout)
	defer cancel()
	if b.open {
		_, err := r.opts.Nodes.RegisterTunnels(ctx, &dpv1.RegisterTunnelsRequest{
			NodeId: r.opts.NodeID, BootId: r.opts.BootID, Tunnels: b.msgs})
		if err != nil {
			return fmt.Errorf("register %d tunnels: %w", len(b.msgs), err)
		}
		return nil
	}
	_, err := r.opts.Nodes.UnregisterTunnels(ctx, &dpv1.UnregisterTunnelsRequest{
		NodeId: r.opts.NodeID, BootId: r.opts.BootID, Tunnels: b.msgs})
	if err != nil {
		return fmt.Errorf("unregister %d tunnels: %w", len(b.msgs), err)
	}
	return nil
}

func (r *Registrar) flushLoop(ctx context.Context) error {
	bo := r.backoff()
	for attempt := 1; ; {
		b := r.nextBatch()
		if b == nil {
			select {
			case <-ctx.Done():
				return nil
			case <-r.kick:
				continue
			}
		}
		err := r.send(ctx, b)
		switch {
		case err == nil:
			r.ack(b)
			bo.reset()
			attempt = 1
			continue
		case ctx.Err() != nil:
			return nil
		case isLost(err):
			return fmt.Errorf("%w: %w", errLost, err)
		case connect.CodeOf(err) == connect.CodeInvalidArgument:
			// Retrying cannot help, and must not hold up every later event.
			r.log.Error("control plane rejected tunnel events; dropping them", "tunnels", len(b.ids), "err", err)
			r.ack(b)
			continue
		}
		d := bo.next()
		r.logFailure(slog.LevelWarn, "send tunnel events", err, attempt, d)
		attempt++
		if !r.sleep(ctx, d) {
			return nil
		}
	}
}

// Drain marks the node draining in the control plane, which then resolves
// its agents to other nodes first. The mark is re-applied after any later
// registration, so a failed call is still honoured once Run gets through.
func (r *Registrar) Drain(ctx context.Context) error {
	r.mu.Lock()
	r.draining = true
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, r.opts.RPCTimeout)
	defer cancel()
	if _, err := r.opts.Nodes.SetDraining(ctx, &dpv1.SetDrainingRequest{NodeId: r.opts.NodeID, BootId: r.opts.BootID}); err != nil {
		return fmt.Errorf("mark node draining: %w", err)
	}
	return nil
}

// Deregister stops Run (waiting for it to return) and removes the node and
// its tunnels from the control plane. Call it last, on shutdown.
func (r *Registrar) Deregister(ctx context.Context) error {
	r.mu.Lock()
	r.closed = true
	cancel, done := r.runCancel, r.runDone
	r.mu.Unlock()
	if cancel != nil {
		cancel()
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("deregister node: %w", ctx.Err())
		}
	}
	ctx, cancelRPC := context.WithTimeout(ctx, r.opts.RPCTimeout)
	defer cancelRPC()
	_, err := r.opts.Nodes.DeregisterNode(ctx, &dpv1.DeregisterNodeRequest{NodeId: r.opts.NodeID, BootId: r.opts.BootID})
	if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
		return fmt.Errorf("deregister node: %w", err)
	}
	r.registered.Store(false)
	return nil
}

func (r *Registrar) logFailure(level slog.Level, op string, err error, attempt int, retryIn time.Duration) {
	msg := "control plane call failed"
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded:
		msg = fmt.Sprintf("cannot reach the control plane at %s; check %s", r.opts.ControlPlaneURL, r.opts.ControlPlaneSetting)
	case connect.CodeUnauthenticated, connect.CodePermissionDenied:
		msg = "control plane refused this node; check private_api_secret_key"
	}
	r.log.Log(context.Background(), level, msg, "op", op, "control_plane_url", r.opts.ControlPlaneURL,
		"attempt", attempt, "retry_in", retryIn, "err", err)
}

// sleep waits d on the registrar's clock; false when ctx ended first.
func (r *Registrar) sleep(ctx context.Context, d time.Duration) bool {
	t := r.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}

func (r *Registrar) backoff() *backoff {
	return &backoff{min: r.opts.MinBackoff, max: r.opts.MaxBackoff}
}

// backoff is exponential backoff with full jitter: the n-th delay is
// uniform in [0, min(max, min·2ⁿ)).
type backoff struct {
	min, max time.Duration
	n        int
}

func (b *backoff) next() time.Duration {
	ceil := b.max
	if b.n < 32 && b.min<<b.n < b.max {
		ceil = b.min << b.n
	}
	b.n++
	return rand.N(ceil)
}

func (b *backoff) reset() { b.n = 0 }
