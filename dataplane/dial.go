package dataplane

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/kas-project/kas/dataplane/agentserver"
	"github.com/kas-project/kas/dataplane/discovery"
	"github.com/kas-project/kas/dataplane/relay"
	"github.com/kas-project/kas/dataplane/tunnel"
	"github.com/kas-project/kas/internal/obs"
)

// Errors of DialAgent, for the proxy to turn into 502/503 answers.
var (
	// ErrNotConnected: the agent has no tunnel on any live node.
	ErrNotConnected = errors.New("agent is not connected")
	// ErrUnreachable: the agent's route could not be looked up (the control
	// plane is unavailable and nothing is cached), or it has tunnels but
	// none could be reached within Options.DialTimeout.
	ErrUnreachable = errors.New("agent is unreachable")
)

// badNodeTTL is how long a node that could not be reached is tried after
// the others.
const badNodeTTL = 10 * time.Second

type dialCounters struct {
	local, relayed, notConnected, unreachable atomic.Uint64
}

// DialAgent opens a byte stream to agentID, which serves HTTP/1.1 on it. It
// uses one of this node's tunnels to the agent when there is one (the least
// loaded, skipping tunnels that are going away), else relays through a node
// that has one — one hop: that node only uses its own tunnels.
//
// DialAgent returns once the agent accepted the stream (one round trip on
// the tunnel): a stream the agent refused because it was retiring that
// tunnel is opened again elsewhere, as the request was not sent.
//
// When the agent has tunnels that cannot take the stream right now (they
// are going away, or the node holding them has lost them), DialAgent
// retries with backoff for up to Options.DialTimeout while the agent moves
// (also when, after such a try, no node holds a tunnel: the agent's new
// tunnel is not known to the control plane yet, and when its last tunnel
// here closed within agentserver.MovingWindow); an agent with no tunnel
// anywhere at the first try fails at once with ErrNotConnected. ctx
// bounds the dial only, as with net.Dialer.
func (n *Node) DialAgent(ctx context.Context, agentID int64) (net.Conn, error) {
	if agentID <= 0 {
		return nil, fmt.Errorf("dial agent %d: agent ID must be positive", agentID)
	}
	ctx = obs.WithAgentID(obs.WithNodeID(ctx, n.opts.NodeID), agentID)
	ctx, cancel := context.WithTimeout(ctx, n.opts.DialTimeout)
	defer cancel()
	wait := 10 * time.Millisecond
	moving := false
	for {
		conn, retry, err := n.dialOnce(ctx, agentID)
		if err == nil {
			return conn, nil
		}
		// An agent that had a tunnel a moment ago and now has none is
		// moving: the node it moved to reports the new tunnel to the
		// control plane a little after the old one closed.
		moving = moving || retry
		if !retry && !(moving && errors.Is(err, ErrNotConnected)) {
			return nil, err
		}
		d := wait/2 + rand.N(wait/2+1)
		wait = min(2*wait, 500*time.Millisecond)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			n.dials.unreachable.Add(1)
			n.log.WarnContext(ctx, "no tunnel of the agent answered in time", "timeout", n.opts.DialTimeout, "err", err)
			return nil, fmt.Errorf("dial agent %d: %w: %w", agentID, ErrUnreachable, err)
		}
	}
}

// dialOnce tries the local tunnels, then every node the resolver knows.
// retry says whether the agent seems to be moving (worth another try).
func (n *Node) dialOnce(ctx context.Context, agentID int64) (net.Conn, bool, error) {
	st, localErr := openAccepted(ctx, n.agents, agentID)
	if localErr == nil {
		n.dials.local.Add(1)
		return st, false, nil
	}
	// seen: the agent has tunnels here that cannot take the stream now,
	// or had its last one here moments ago; either way it is moving.
	seen := !errors.Is(localErr, agentserver.ErrNoTunnel) || errors.Is(localErr, agentserver.ErrMoving)

	nodes, err := n.resolver.Resolve(ctx, agentID)
	switch {
	case err != nil && seen:
		return nil, true, localErr
	case err != nil:
		n.dials.unreachable.Add(1)
		return nil, false, fmt.Errorf("dial agent %d: %w: look up its tunnels: %w", agentID, ErrUnreachable, err)
	case len(nodes) == 0 && seen:
		return nil, true, localErr
	case len(nodes) == 0:
		n.dials.notConnected.Add(1)
		return nil, false, fmt.Errorf("dial agent %d: %w", agentID, ErrNotConnected)
	}
	n.orderNodes(nodes)
	var lastErr error
	for _, nd := range nodes {
		rctx, cancel := context.WithTimeout(ctx, n.opts.RelayOpenTimeout)
		conn, err := n.dialer.Dial(rctx, nd.PrivateURL, agentID)
		cancel()
		if err == nil {
			n.dials.relayed.Add(1)
			n.markBad(nd.ID, false)
			return conn, false, nil
		}
		lastErr = err
		n.resolver.Invalidate(agentID, nd.ID)
		if errors.Is(err, relay.ErrUnreachable) {
			n.markBad(nd.ID, true)
			n.log.WarnContext(ctx, "cannot relay through node", "via_node_id", nd.ID, "err", err)
		} else {
			n.log.DebugContext(ctx, "relay refused", "via_node_id", nd.ID, "err", err)
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, true, lastErr
}

// orderNodes keeps the resolver's order (live before draining, most
// tunnels first) but moves nodes that recently could not be reached last.
func (n *Node) orderNodes(nodes []discovery.Node) {
	now := time.Now()
	n.badMu.Lock()
	defer n.badMu.Unlock()
	isBad := func(id string) bool {
		until, ok := n.bad[id]
		if ok && now.After(until) {
			delete(n.bad, id)
			return false
		}
		return ok
	}
	slices.SortStableFunc(nodes, func(a, b discovery.Node) int {
		ab, bb := isBad(a.ID), isBad(b.ID)
		switch {
		case ab == bb:
			return 0
		case ab:
			return 1
		}
		return -1
	})
}

func (n *Node) markBad(id string, bad bool) {
	n.badMu.Lock()
	defer n.badMu.Unlock()
	if bad {
		n.bad[id] = time.Now().Add(badNodeTTL)
	} else {
		delete(n.bad, id)
	}
}

type agentKey struct{}

// WithAgent returns ctx carrying the agent that requests made with it
// through Transport go to.
func WithAgent(ctx context.Context, agentID int64) context.Context {
	return context.WithValue(ctx, agentKey{}, agentID)
}

// AgentFromContext returns the agent set by WithAgent.
func AgentFromContext(ctx context.Context) (int64, bool) {
	id, ok := ctx.Value(agentKey{}).(int64)
	return id, ok
}

// Agent connections are pooled under a per-agent "proxy" address, so that
// a connection to one agent is never reused for another.
const (
	agentHostPrefix = "agent-"
	agentHostSuffix = ".kas-tunnel.invalid"
)

func agentHost(id int64) string {
	return agentHostPrefix + strconv.FormatInt(id, 10) + agentHostSuffix
}

func agentFromAddr(addr string) (int64, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	s, ok := strings.CutPrefix(host, agentHostPrefix)
	if ok {
		s, ok = strings.CutSuffix(s, agentHostSuffix)
	}
	id, err := strconv.ParseInt(s, 10, 64)
	if !ok || err != nil || id <= 0 {
		return 0, fmt.Errorf("address %q does not name an agent", addr)
	}
	return id, nil
}

var errNoAgent = errors.New("request context carries no agent: use dataplane.WithAgent")

// Transport returns the node's HTTP transport to agents: a request whose
// context carries an agent (WithAgent) goes to that agent over a tunnel
// stream (DialAgent). Use http:// URLs; the agent sees the request in
// absolute form (GET http://host/path HTTP/1.1) with the original Host.
// httputil.ReverseProxy works on top of it, 101 Switching Protocols
// included (the response body is then an io.ReadWriteCloser). Connections
// are kept alive and pooled per agent.
func (n *Node) Transport() *http.Transport { return n.transport }

func (n *Node) newTransport() *http.Transport {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	return &http.Transport{
		// The "proxy" only keys the connection pool by agent; DialContext
		// turns its address back into the agent ID.
		Proxy: func(r *http.Request) (*url.URL, error) {
			id, ok := AgentFromContext(r.Context())
			if !ok {
				return nil, errNoAgent
			}
			if r.URL.Scheme != "http" {
				return nil, fmt.Errorf("requests to agents must use http:// URLs, not %s://", r.URL.Scheme)
			}
			return &url.URL{Scheme: "http", Host: agentHost(id)}, nil
		},
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			id, err := agentFromAddr(addr)
			if err != nil {
				return nil, err
			}
			return n.DialAgent(ctx, id)
		},
		Protocols:             p,
		DisableCompression:    true, // a proxy passes encodings through
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   64, // per agent: a busy proxy keeps its streams instead of reopening them
		IdleConnTimeout:       30 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// openAccepted opens a stream to the agent on a tunnel here and waits until
// the agent accepted it. An agent that is retiring the tunnel refuses
// streams the node opened before it read the agent's GOAWAY; nothing was
// sent upstream then, so the caller tries again (another tunnel, another
// node) instead of failing the request. Other failures (open timeout,
// reset) are left to the stream's first Read or Write, as before.
func openAccepted(ctx context.Context, agents *agentserver.Server, agentID int64) (net.Conn, error) {
	// The stream outlives ctx: once dialled, only the tunnel's open
	// timeout applies, as with net.Dialer.
	conn, err := agents.Open(context.WithoutCancel(ctx), agentID)
	if err != nil {
		return nil, err
	}
	if st, ok := conn.(interface{ WaitAccepted(context.Context) error }); ok {
		if err := st.WaitAccepted(ctx); tunnel.Retryable(err) {
			conn.Close()
			return nil, fmt.Errorf("open stream to agent %d: %w", agentID, err)
		}
	}
	return conn, nil
}

// acceptedTunnels gives the relay server streams the agent accepted, so
// that a refused one makes the relaying node try elsewhere.
type acceptedTunnels struct{ agents *agentserver.Server }

func (t acceptedTunnels) Open(ctx context.Context, agentID int64) (net.Conn, error) {
	return openAccepted(ctx, t.agents, agentID)
}
