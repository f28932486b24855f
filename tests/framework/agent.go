package framework

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kas-project/kas/agent"
	"github.com/kas-project/kas/dataplane/tunnel"
	"github.com/kas-project/kas/internal/cptest"
)

// AgentHeader names, in every upstream response, the agent whose
// Kubernetes API answered.
const AgentHeader = "Kas-Test-Agent"

// NewUpstream starts the fake Kubernetes API server behind one agent:
//
//   - /echo answers with the request body;
//   - /upgrade switches protocols (101) and then echoes bytes;
//   - /big?n=N answers N zero bytes, as fast as the reader takes them;
//   - anything else answers "agent <id>: <path>".
//
// Every answer carries AgentHeader.
func NewUpstream(t testing.TB, agentID int64) *httptest.Server {
	t.Helper()
	id := strconv.FormatInt(agentID, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(AgentHeader, id)
		switch r.URL.Path {
		case "/echo":
			io.Copy(w, r.Body)
		case "/big":
			n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
			w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
			io.CopyN(w, zeros{}, n)
		case "/upgrade":
			if r.Header.Get("Upgrade") != "kas-test" {
				http.Error(w, "want Upgrade: kas-test", http.StatusBadRequest)
				return
			}
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: kas-test\r\nConnection: Upgrade\r\n%s: %s\r\n\r\n", AgentHeader, id)
			brw.Flush()
			io.Copy(conn, brw.Reader)
		default:
			fmt.Fprintf(w, "agent %s: %s", id, r.URL.Path)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// Agent is agentk (package agent) run in-process against an upstream.
type Agent struct {
	*agent.Agent
	Creds    AgentCreds
	Upstream *httptest.Server
	Logs     *Logs
	cancel   context.CancelFunc
	done     chan struct{}
}

// AgentOptions are the options scenarios start agents with: fast
// reconnects and short keepalives.
func AgentOptions(kasAddress string, tunnels int) agent.Options {
	return agent.Options{
		KASAddress:       kasAddress,
		Version:          "e2e/1.0",
		Tunnels:          tunnels,
		MinBackoff:       20 * time.Millisecond,
		MaxBackoff:       300 * time.Millisecond,
		HealthyAfter:     time.Second,
		NodeRetry:        100 * time.Millisecond,
		NodeRetries:      5,
		DrainTimeout:     10 * time.Second,
		ShutdownTimeout:  5 * time.Second,
		HandshakeTimeout: 5 * time.Second,
		Tunnel: tunnel.Config{
			KeepaliveInterval: 250 * time.Millisecond,
			DeadPeerTimeout:   2 * time.Second,
		},
	}
}

// StartAgent runs agentk with creds against kasAddress (ws://host:port),
// keeping tunnels tunnels, in front of a new upstream. It waits until the
// tunnels are up. The agent is stopped when the test ends.
func StartAgent(t testing.TB, creds AgentCreds, kasAddress string, tunnels int, modify ...func(*agent.Options)) *Agent {
	t.Helper()
	a := StartAgentNoWait(t, creds, kasAddress, tunnels, modify...)
	if err := a.WaitTunnels(Context(t), tunnels); err != nil {
		t.Fatalf("agent %d: %d tunnels not up: %v", creds.ID, tunnels, err)
	}
	return a
}

// StartAgentNoWait is StartAgent without waiting for the tunnels.
func StartAgentNoWait(t testing.TB, creds AgentCreds, kasAddress string, tunnels int, modify ...func(*agent.Options)) *Agent {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(creds.Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	up := NewUpstream(t, creds.ID)
	logs := NewLogs(t, fmt.Sprintf("agent %d", creds.ID))
	o := AgentOptions(kasAddress, tunnels)
	o.TokenFile, o.KubeAPIURL, o.Logger = tokenFile, up.URL, logs.Logger()
	for _, m := range modify {
		m(&o)
	}
	ag, err := agent.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &Agent{Agent: ag, Creds: creds, Upstream: up, Logs: logs, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		ag.Run(ctx)
	}()
	t.Cleanup(a.Stop)
	return a
}

// Stop stops the agent and waits for it.
func (a *Agent) Stop() {
	a.cancel()
	<-a.done
	a.Agent.Close()
}

// OnNodes reports whether the agent's live tunnels are on exactly ids
// (sorted, one entry per tunnel).
func (a *Agent) OnNodes(ids ...string) bool {
	got := a.Nodes()
	slices.Sort(ids)
	return slices.Equal(got, ids)
}

// WaitRouted waits until the control plane resolves the agent to exactly
// the nodes ids (in any order).
func WaitRouted(t testing.TB, env *cptest.Env, agentID int64, ids ...string) {
	t.Helper()
	want := slices.Sorted(slices.Values(ids))
	Eventually(t, fmt.Sprintf("agent %d routed to %v", agentID, want), func() bool {
		got := ResolveNodes(t, env, agentID)
		slices.Sort(got)
		return slices.Equal(got, want)
	})
}

// Balancer is a TCP load balancer in front of nodes' agent listeners, as a
// Kubernetes Service: it sends each new connection to a node that is
// serving (alive and ready), trying them in order from a rotating start
// (round robin) or always from the first (First).
type Balancer struct {
	*Proxy
	URL string
}

// Policies of a Balancer.
const (
	RoundRobin = iota
	First
)

// NewBalancer starts a balancer over nodes.
func NewBalancer(t testing.TB, policy int, nodes ...*Node) *Balancer {
	t.Helper()
	var next atomic.Int64
	b := &Balancer{}
	b.Proxy = NewProxy(t, func() []string {
		var ready []string
		for _, n := range nodes {
			if n.Serving() {
				ready = append(ready, n.AgentAddr)
			}
		}
		if policy == RoundRobin && len(ready) > 0 {
			start := int(next.Add(1)-1) % len(ready)
			ready = append(ready[start:], ready[:start]...)
		}
		return ready
	})
	b.URL = "ws://" + b.Addr()
	return b
}

// ReadUpgraded reads an upgraded connection's echo of msg.
func ReadUpgraded(rw io.ReadWriter, msg string) (string, error) {
	if _, err := io.WriteString(rw, msg); err != nil {
		return "", err
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(bufio.NewReader(rw), buf)
	return string(buf), err
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
