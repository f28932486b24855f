package tests

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kas-project/kas/dataplane"
	"github.com/kas-project/kas/tests/framework"
)

// Three nodes, one agent on each: a request at any node reaches any agent,
// over the node's own tunnel or relayed in one hop to the node that has one.
func TestDataplaneAnyNodeReachesEveryAgent(t *testing.T) {
	env := framework.StartControlPlane(t)
	nodes := []*framework.Node{
		framework.StartNode(t, env, "node-a"),
		framework.StartNode(t, env, "node-b"),
		framework.StartNode(t, env, "node-c"),
	}
	var agents []*framework.Agent
	for i, n := range nodes {
		creds := framework.CreateAgent(t, env, fmt.Sprintf("agent-%d", i))
		agents = append(agents, framework.StartAgent(t, creds, n.AgentURL, 1))
		framework.WaitRouted(t, env, creds.ID, n.ID)
	}
	ctx := framework.Context(t)

	for _, at := range nodes {
		for i, ag := range agents {
			resp, body, err := at.Get(ctx, ag.Creds.ID, "/api/v1/pods")
			if err != nil {
				t.Fatalf("node %s → agent %d: %v", at.ID, ag.Creds.ID, err)
			}
			if got := resp.Header.Get(framework.AgentHeader); got != strconv.FormatInt(ag.Creds.ID, 10) {
				t.Errorf("node %s → agent %d: answered by agent %q", at.ID, ag.Creds.ID, got)
			}
			if want := fmt.Sprintf("agent %d: /api/v1/pods", ag.Creds.ID); body != want {
				t.Errorf("node %s → agent %d: body %q, want %q", at.ID, ag.Creds.ID, body, want)
			}
			if !ag.OnNodes(nodes[i].ID) {
				t.Errorf("agent %d has tunnels on %v, want only %s", ag.Creds.ID, ag.Nodes(), nodes[i].ID)
			}
		}
	}
	// Each node served its own agent locally and relayed to the two others
	// (one connection per agent: the transport keeps them alive), and took
	// the two relays of the others for its agent.
	for _, n := range nodes {
		local, relayed := n.Metric(t, "agent_dials_total", "result", "local"), n.Metric(t, "agent_dials_total", "result", "relay")
		in := n.Metric(t, "relays_in_total", "result", "ok")
		if local != 1 || relayed != 2 || in != 2 {
			t.Errorf("node %s: %v local dials, %v relayed, %v relays in; want 1, 2, 2", n.ID, local, relayed, in)
		}
	}

	t.Run("bulk body both ways through a relay", func(t *testing.T) {
		payload := make([]byte, 4<<20+7)
		rand.Read(payload)
		req, _ := http.NewRequestWithContext(dataplane.WithAgent(ctx, agents[2].Creds.ID), http.MethodPost, "http://kubernetes/echo", bytes.NewReader(payload))
		resp, err := nodes[0].Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("echo of %d bytes: got %d bytes, equal=%v, err %v", len(payload), len(got), bytes.Equal(got, payload), err)
		}
	})

	t.Run("protocol upgrade through a relay", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(dataplane.WithAgent(ctx, agents[1].Creds.ID), http.MethodGet, "http://kubernetes/upgrade", nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "kas-test")
		resp, err := nodes[2].Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("status %s, want 101", resp.Status)
		}
		rw, ok := resp.Body.(io.ReadWriteCloser)
		if !ok {
			t.Fatalf("101 body is %T, not an io.ReadWriteCloser", resp.Body)
		}
		for _, msg := range []string{"first", "second message"} {
			if got, err := framework.ReadUpgraded(rw, msg); err != nil || got != msg {
				t.Fatalf("upgraded echo of %q: %q, %v", msg, got, err)
			}
		}
	})

	t.Run("concurrent requests at every node", func(t *testing.T) {
		var wg sync.WaitGroup
		var failed atomic.Int64
		for w := range 32 {
			wg.Go(func() {
				for i := range 10 {
					at, ag := nodes[(w+i)%3], agents[(w/3+i)%3]
					if _, _, err := at.Get(ctx, ag.Creds.ID, "/api"); err != nil {
						failed.Add(1)
						t.Errorf("node %s → agent %d: %v", at.ID, ag.Creds.ID, err)
					}
				}
			})
		}
		wg.Wait()
	})

	t.Run("an agent that is not connected fails fast", func(t *testing.T) {
		idle := framework.CreateAgent(t, env, "never-connected")
		start := time.Now()
		err := nodes[0].DialError(ctx, idle.ID)
		took := time.Since(start)
		if !errors.Is(err, dataplane.ErrNotConnected) || !strings.Contains(err.Error(), "agent is not connected") {
			t.Fatalf("dial of an agent without tunnels: %v", err)
		}
		if took > time.Second {
			t.Errorf("not connected reported after %v; want at once", took)
		}
		t.Logf("not connected reported in %v", took)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://kubernetes/api", nil)
		if _, err := nodes[0].Client().Do(req); err == nil || !strings.Contains(err.Error(), "no agent") {
			t.Errorf("request without an agent in its context: %v", err)
		}
	})

	// Nothing leaks: once the pooled connections are closed, every stream
	// opened on every node has closed.
	for _, n := range nodes {
		n.Transport().CloseIdleConnections()
	}
	for _, n := range nodes {
		framework.Eventually(t, "streams of node "+n.ID+" closed", func() bool {
			opened := n.Metric(t, "tunnel_streams_total", "event", "opened")
			return opened > 0 && n.Metric(t, "tunnel_streams_total", "event", "closed") == opened
		})
	}
}
