package framework

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kas-project/kas/controlplane"
	"github.com/kas-project/kas/dataplane"
	"github.com/kas-project/kas/dataplane/agentserver"
	"github.com/kas-project/kas/dataplane/tunnel"
	dpv1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	mgmtv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/internal/cptest"
)

// LeaseTTL is the control plane's node lease in scenarios: short, so that
// a killed node's routes expire within a test.
const LeaseTTL = 2 * time.Second

// StartControlPlane runs a control plane on a fresh database with a
// LeaseTTL lease.
func StartControlPlane(t testing.TB, modify ...func(*controlplane.Options)) *cptest.Env {
	t.Helper()
	return cptest.Start(t, append([]func(*controlplane.Options){func(o *controlplane.Options) {
		o.LeaseTTL = LeaseTTL
	}}, modify...)...)
}

// AgentCreds are a registered agent and one of its tokens.
type AgentCreds struct {
	ID      int64
	TokenID int64
	Token   string
}

// CreateAgent registers an agent and mints a token for it.
func CreateAgent(t testing.TB, env *cptest.Env, name string) AgentCreds {
	t.Helper()
	ctx := context.Background()
	a, err := env.Agents.CreateAgent(ctx, &mgmtv1.CreateAgentRequest{ProjectId: 1, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := env.Agents.CreateAgentToken(ctx, &mgmtv1.CreateAgentTokenRequest{AgentId: a.GetAgent().GetId(), Name: "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	return AgentCreds{ID: a.GetAgent().GetId(), TokenID: tok.GetToken().GetId(), Token: tok.GetSecret()}
}

// Revoke revokes the agent's token.
func Revoke(t testing.TB, env *cptest.Env, c AgentCreds) {
	t.Helper()
	if _, err := env.Agents.RevokeAgentToken(context.Background(), &mgmtv1.RevokeAgentTokenRequest{TokenId: c.TokenID}); err != nil {
		t.Fatal(err)
	}
}

// ResolveNodes returns the IDs of the nodes the control plane resolves the
// agent to, best first.
func ResolveNodes(t testing.TB, env *cptest.Env, agentID int64) []string {
	t.Helper()
	resp, err := env.Nodes.ResolveAgent(context.Background(), &dpv1.ResolveAgentRequest{AgentId: agentID})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, n := range resp.GetNodes() {
		ids = append(ids, n.GetNodeId())
	}
	return ids
}

// Node is a dataplane node run in-process on port-0 listeners that can be
// killed.
type Node struct {
	*dataplane.Node
	ID       string
	Registry *prometheus.Registry
	Logs     *Logs
	// AgentAddr is the agent listener's host:port; AgentURL its ws:// URL
	// (without the tunnel path).
	AgentAddr string
	AgentURL  string

	agentL, privateL *KillableListener
	// cp carries the node's calls to the control plane (when the scenario
	// did not route them elsewhere), so Kill can silence the node first.
	cp     *Proxy
	cancel context.CancelFunc
	done   chan struct{}
	runErr error

	mu     sync.Mutex
	killed bool
}

// NodeOptions are the options scenarios start nodes with: short timings,
// so that tunnels, caches and drains move within a test.
func NodeOptions(env *cptest.Env, id string) dataplane.Options {
	return dataplane.Options{
		NodeID:              id,
		Version:             "e2e",
		ControlPlaneURL:     env.URL,
		PrivateAPISecretKey: env.PrivateKey,
		Tunnel: tunnel.Config{
			KeepaliveInterval: 250 * time.Millisecond,
			DeadPeerTimeout:   2 * time.Second,
			OpenTimeout:       2 * time.Second,
			WriteTimeout:      2 * time.Second,
		},
		DrainDelay:       200 * time.Millisecond,
		DrainGrace:       10 * time.Second,
		DialTimeout:      5 * time.Second,
		RelayOpenTimeout: 2 * time.Second,
		RetryAfter:       time.Second,
	}
}

// StartNode starts a node named id against the control plane, after
// modify has adjusted its options. It waits until the node is registered.
// The node is stopped (drained) when the test ends, unless killed before.
func StartNode(t testing.TB, env *cptest.Env, id string, modify ...func(*dataplane.Options)) *Node {
	t.Helper()
	o := NodeOptions(env, id)
	o.Resolver.PositiveTTL = time.Second
	o.Resolver.NegativeTTL = 100 * time.Millisecond
	o.Registrar.MinBackoff = 20 * time.Millisecond
	o.Registrar.MaxBackoff = 200 * time.Millisecond
	o.Authenticator.DenyTTL = 100 * time.Millisecond
	for _, m := range modify {
		m(&o)
	}
	n := &Node{ID: id, Registry: prometheus.NewRegistry(), Logs: NewLogs(t, "node "+id), done: make(chan struct{})}
	if o.ControlPlaneURL == env.URL {
		n.cp = ProxyTo(t, strings.TrimPrefix(env.URL, "http://"))
		o.ControlPlaneURL = "http://" + n.cp.Addr()
	}
	n.agentL, n.privateL = Listen(t), Listen(t)
	o.AgentListener, o.PrivateAPIListener = n.agentL, n.privateL
	o.Registry, o.Logger = n.Registry, n.Logs.Logger()
	node, err := dataplane.New(o)
	if err != nil {
		t.Fatal(err)
	}
	n.Node = node
	n.AgentAddr = n.agentL.Addr().String()
	n.AgentURL = "ws://" + n.AgentAddr
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() {
		defer close(n.done)
		n.runErr = node.Run(ctx)
	}()
	t.Cleanup(func() {
		n.Stop(t)
		node.Close()
	})
	Eventually(t, "node "+id+" registered", func() bool { return node.Ready(context.Background()) == nil })
	return n
}

// Alive reports whether the node was not killed or stopped.
func (n *Node) Alive() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.killed
}

// Serving reports whether a load balancer should send new agents to the
// node: alive and ready (registered, not draining).
func (n *Node) Serving() bool { return n.Alive() && n.Ready(context.Background()) == nil }

// Stop drains the node (as on SIGTERM) and waits for Run to return.
func (n *Node) Stop(t testing.TB) {
	t.Helper()
	n.StartDrain()
	n.WaitStopped(t)
}

// StartDrain starts the drain (as on SIGTERM) without waiting.
func (n *Node) StartDrain() { n.cancel() }

// WaitStopped waits for Run to return and checks its error.
func (n *Node) WaitStopped(t testing.TB) {
	t.Helper()
	select {
	case <-n.done:
	case <-time.After(Guard):
		t.Fatalf("node %s did not stop within %v", n.ID, Guard)
	}
	n.mu.Lock()
	n.killed = true
	n.mu.Unlock()
	if n.runErr != nil {
		t.Errorf("node %s: Run: %v", n.ID, n.runErr)
	}
}

// Kill stops the node as SIGKILL would: its connections are reset, nothing
// is drained or deregistered, heartbeats stop.
func (n *Node) Kill(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	n.killed = true
	n.mu.Unlock()
	// A killed process says nothing more to the control plane: silence it
	// before its tunnels break, or its registrar would report them closed.
	if n.cp != nil {
		n.cp.Down()
	}
	n.agentL.Kill()
	n.privateL.Kill()
	n.Node.Close()
}

// Client returns an HTTP client that sends requests through the node to
// the agent carried by each request's context (dataplane.WithAgent).
func (n *Node) Client() *http.Client { return &http.Client{Transport: n.Transport()} }

// Get sends GET http://kubernetes<path> to the agent through the node and
// returns the response with its body read.
func (n *Node) Get(ctx context.Context, agentID int64, path string) (*http.Response, string, error) {
	req, err := http.NewRequestWithContext(dataplane.WithAgent(ctx, agentID), http.MethodGet, "http://kubernetes"+path, nil)
	if err != nil {
		return nil, "", err
	}
	resp, err := n.Client().Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp, "", fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return resp, string(b), fmt.Errorf("GET %s via node %s: %s: %s", path, n.ID, resp.Status, strings.TrimSpace(string(b)))
	}
	return resp, string(b), nil
}

// Metric returns the value of the node's metric name (without the
// kas_dataplane_ prefix) whose labels include labels ("k", "v", ...); 0
// when absent.
func (n *Node) Metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := n.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "kas_dataplane_"+name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if labelValue(m, labels[i]) != labels[i+1] {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// DialError returns DialAgent's error for agentID through the node, or nil.
func (n *Node) DialError(ctx context.Context, agentID int64) error {
	c, err := n.DialAgent(ctx, agentID)
	if err != nil {
		return err
	}
	c.Close()
	return nil
}

// IsNotConnected reports whether err says the agent is not connected.
func IsNotConnected(err error) bool { return errors.Is(err, dataplane.ErrNotConnected) }

// TunnelPath is where agents open tunnels.
const TunnelPath = agentserver.Path
