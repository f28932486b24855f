package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kas-project/kas/agent"
	"github.com/kas-project/kas/dataplane"
	dpv1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
)

// latencyResult holds the request latencies of every variant.
type latencyResult struct {
	direct, directNew       percentiles // client → upstream
	viaTunnel, viaTunnelNew percentiles // node A → tunnel → agent → upstream
	viaRelay, viaRelayNew   percentiles // node B → relay → node A → tunnel → agent → upstream
}

// upstreamBody is the answer of the minimal upstream: a small Kubernetes
// object, as a GET of one resource returns.
const upstreamBody = `{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"default","uid":"5a1c3e0e-3b7f-4c55-9b8e-1c6b1f2e9d10"}}`

// newUpstream serves upstreamBody on a loopback listener; it stands for
// the Kubernetes API server behind the agent.
func newUpstream() (*http.Server, string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, upstreamBody)
	})}
	go srv.Serve(ln)
	return srv, "http://" + ln.Addr().String(), nil
}

// inProcessNode is a dataplane node with production defaults running in
// this process on loopback listeners.
type inProcessNode struct {
	*dataplane.Node
	agentAddr string
	done      chan struct{}
}

func startInProcessNode(cp *cpEnv, id string) (*inProcessNode, error) {
	agentL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	privateL, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		agentL.Close()
		return nil, err
	}
	n, err := dataplane.New(dataplane.Options{
		NodeID: id, Version: "bench", ControlPlaneURL: cp.url, PrivateAPISecretKey: cp.privateKey,
		AgentListener: agentL, PrivateAPIListener: privateL,
		Logger: slog.New(newLogCounter("node "+id, slog.LevelWarn)),
	})
	if err != nil {
		agentL.Close()
		privateL.Close()
		return nil, err
	}
	p := &inProcessNode{Node: n, agentAddr: agentL.Addr().String(), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		n.Run(context.Background())
	}()
	if err := waitFor(10*time.Second, func() bool { return n.Ready(context.Background()) == nil }); err != nil {
		n.Close()
		return nil, fmt.Errorf("node %s not registered: %w", id, err)
	}
	return p, nil
}

// measureLatency runs a small GET in four ways, interleaved round by
// round: straight to the upstream, through node A's tunnel to the agent,
// and through node B, which holds no tunnel and relays to A; each with a
// kept-alive connection and with a new connection (TCP connection, tunnel
// stream, relay) per request.
func measureLatency(ctx context.Context, cp *cpEnv, c config) (latencyResult, error) {
	up, upURL, err := newUpstream()
	if err != nil {
		return latencyResult{}, err
	}
	defer up.Close()
	a, err := startInProcessNode(cp, "latency-a")
	if err != nil {
		return latencyResult{}, err
	}
	defer a.Close()
	b, err := startInProcessNode(cp, "latency-b")
	if err != nil {
		return latencyResult{}, err
	}
	defer b.Close()

	creds, err := cp.createAgents(ctx, "latency", 1)
	if err != nil {
		return latencyResult{}, err
	}
	cr := creds[0]
	tokenFile := filepath.Join(cp.dir, "latency-token")
	if err := os.WriteFile(tokenFile, []byte(cr.Token), 0o600); err != nil {
		return latencyResult{}, err
	}
	ag, err := agent.New(agent.Options{
		KASAddress: "ws://" + a.agentAddr, TokenFile: tokenFile, Tunnels: 1, Version: "bench",
		KubeAPIURL: upURL, Registry: prometheus.NewRegistry(),
		Logger: slog.New(newLogCounter("latency agent", slog.LevelWarn)),
	})
	if err != nil {
		return latencyResult{}, err
	}
	actx, stopAgent := context.WithCancel(ctx)
	agentDone := make(chan struct{})
	go func() {
		defer close(agentDone)
		ag.Run(actx)
	}()
	defer func() {
		a.Close() // first: the agent's shutdown then has no stream to wait for
		b.Close()
		stopAgent()
		<-agentDone
	}()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := ag.WaitTunnels(wctx, 1); err != nil {
		return latencyResult{}, err
	}
	if err := waitFor(10*time.Second, func() bool {
		resp, err := cp.nodes.ResolveAgent(ctx, &dpv1.ResolveAgentRequest{AgentId: cr.ID})
		return err == nil && len(resp.GetNodes()) == 1 && resp.GetNodes()[0].GetNodeId() == "latency-a"
	}); err != nil {
		return latencyResult{}, fmt.Errorf("agent not routed to node A: %w", err)
	}

	direct := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	directNew := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	newConn := func(n *inProcessNode) *http.Client {
		tr := n.Transport().Clone()
		tr.DisableKeepAlives = true
		return &http.Client{Transport: tr}
	}
	type variant struct {
		client  *http.Client
		url     string
		agentID int64
		samples []time.Duration
	}
	kube := "http://kubernetes/api/v1/namespaces/default"
	vs := []*variant{
		{client: direct, url: upURL + "/api/v1/namespaces/default"},
		{client: directNew, url: upURL + "/api/v1/namespaces/default"},
		{client: &http.Client{Transport: a.Transport()}, url: kube, agentID: cr.ID},
		{client: newConn(a), url: kube, agentID: cr.ID},
		{client: &http.Client{Transport: b.Transport()}, url: kube, agentID: cr.ID},
		{client: newConn(b), url: kube, agentID: cr.ID},
	}
	get := func(v *variant) (time.Duration, error) {
		rctx := ctx
		if v.agentID != 0 {
			rctx = dataplane.WithAgent(ctx, v.agentID)
		}
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, v.url, nil)
		if err != nil {
			return 0, err
		}
		t0 := time.Now()
		resp, err := v.client.Do(req)
		if err != nil {
			return 0, err
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		d := time.Since(t0)
		if err == nil && (resp.StatusCode != http.StatusOK || n != int64(len(upstreamBody))) {
			err = fmt.Errorf("GET %s: %s, %d bytes", v.url, resp.Status, n)
		}
		return d, err
	}
	for _, v := range vs { // warm up: connections, caches, the relay's route
		for range 200 {
			if _, err := get(v); err != nil {
				return latencyResult{}, err
			}
		}
	}
	per := max(1, c.samples/c.rounds)
	for range c.rounds {
		for _, v := range vs {
			for range per {
				d, err := get(v)
				if err != nil {
					return latencyResult{}, err
				}
				v.samples = append(v.samples, d)
			}
		}
	}
	return latencyResult{
		direct: percentilesOf(vs[0].samples), directNew: percentilesOf(vs[1].samples),
		viaTunnel: percentilesOf(vs[2].samples), viaTunnelNew: percentilesOf(vs[3].samples),
		viaRelay: percentilesOf(vs[4].samples), viaRelayNew: percentilesOf(vs[5].samples),
	}, nil
}

// waitFor polls cond every 10 ms until it holds or d has passed.
func waitFor(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %v", errTimeout, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}
