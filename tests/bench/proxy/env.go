package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kas-project/kas/agent"
	"github.com/kas-project/kas/controlplane"
	"github.com/kas-project/kas/dataplane"
	dpv1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
	mgmtv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/listen"
	"github.com/kas-project/kas/internal/pglocal"
	"github.com/kas-project/kas/migrations"
)

// upstreamBody is the minimal upstream's answer: a small Kubernetes object,
// as a GET of one resource returns.
const upstreamBody = `{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"default","uid":"5a1c3e0e-3b7f-4c55-9b8e-1c6b1f2e9d10"}}`

// newUpstream starts the stand-in for the Kubernetes API server: a plain
// net/http server that answers
//
//   - /big?n=N: N zero bytes (a large list, logs);
//   - /upgrade?n=N: 101 Switching Protocols, then N zero bytes and EOF
//     (the download side of exec or port-forward);
//   - anything else: upstreamBody.
func newUpstream() (*http.Server, string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	zero := make([]byte, 256<<10)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big":
			n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
			w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
			for n > 0 {
				k, err := w.Write(zero[:min(n, int64(len(zero)))])
				if err != nil {
					return
				}
				n -= int64(k)
			}
		case "/upgrade":
			n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			io.WriteString(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: kas-bench\r\n\r\n")
			brw.Flush()
			for n > 0 {
				k, err := conn.Write(zero[:min(n, int64(len(zero)))])
				if err != nil {
					return
				}
				n -= int64(k)
			}
		default:
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, upstreamBody)
		}
	})}
	go srv.Serve(ln)
	return srv, "http://" + ln.Addr().String(), nil
}

// env is the whole path: Postgres, a control plane, nodes A and B with the
// Kubernetes API proxy, agentk on A in front of the upstream, and an access
// token for the agent.
type env struct {
	dir      string
	pg       *pglocal.Server
	pool     *pgxpool.Pool
	cpSrv    *http.Server
	upstream *http.Server
	upURL    string
	nodes    []*node
	agent    *agent.Agent
	stop     context.CancelFunc
	done     chan struct{}
	agentID  int64
	token    string // "pat:<agent>:<secret>"
	logs     *logCounter
}

type node struct {
	*dataplane.Node
	proxyURL   string // without the trailing slash
	agentAddrV string
	done       chan struct{}
}

func (n *node) agentAddr() string { return n.agentAddrV }

func startEnv(ctx context.Context) (_ *env, err error) {
	e := &env{logs: &logCounter{}}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if e.dir, err = os.MkdirTemp("", "kas-bench-proxy-"); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		if err := os.Chmod(e.dir, 0o755); err != nil { // Postgres runs as postgres
			return nil, err
		}
	}
	if e.pg, err = pglocal.Start(ctx, pglocal.Options{DataDir: filepath.Join(e.dir, "data")}); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	if e.pool, err = pgxpool.New(ctx, e.pg.DSN("postgres")); err != nil {
		return nil, err
	}
	if _, err := migrations.Up(ctx, e.pool); err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	apiKey, privateKey := key(), key()
	cp, err := controlplane.New(controlplane.Options{Pool: e.pool, APISecretKey: apiKey, PrivateAPISecretKey: privateKey,
		Logger: slog.New(e.logs)})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e.cpSrv = listen.NewServer(cp.Handler(), nil)
	go e.cpSrv.Serve(ln)
	cpURL := "http://" + ln.Addr().String()
	hc := &http.Client{}
	mgmt := connect.WithInterceptors(authn.ClientInterceptor(authn.NewSigner(apiKey, authn.IssuerRails, authn.AudienceManagement, "bench")))
	agents := managementv1connect.NewAgentServiceClient(hc, cpURL, mgmt)
	creds := managementv1connect.NewCredentialServiceClient(hc, cpURL, mgmt)
	nodesAPI := dataplanev1connect.NewNodeServiceClient(hc, cpURL, connect.WithInterceptors(
		authn.ClientInterceptor(authn.NewSigner(privateKey, authn.IssuerDataplane, authn.AudienceDataplane, "bench"))))

	if e.upstream, e.upURL, err = newUpstream(); err != nil {
		return nil, err
	}
	for _, id := range []string{"bench-a", "bench-b"} {
		n, err := startNode(cpURL, privateKey, id, e.logs)
		if err != nil {
			return nil, err
		}
		e.nodes = append(e.nodes, n)
	}

	a, err := agents.CreateAgent(ctx, &mgmtv1.CreateAgentRequest{ProjectId: 1, Name: "bench"})
	if err != nil {
		return nil, err
	}
	e.agentID = a.GetAgent().GetId()
	tok, err := agents.CreateAgentToken(ctx, &mgmtv1.CreateAgentTokenRequest{AgentId: e.agentID, Name: "bench"})
	if err != nil {
		return nil, err
	}
	tokenFile := filepath.Join(e.dir, "agent-token")
	if err := os.WriteFile(tokenFile, []byte(tok.GetSecret()), 0o600); err != nil {
		return nil, err
	}
	pat, err := creds.CreateAccessToken(ctx, &mgmtv1.CreateAccessTokenRequest{
		User:     &mgmtv1.UserIdentity{Id: 1, Username: "bench"},
		AgentIds: []int64{e.agentID}, ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)), Name: "bench",
	})
	if err != nil {
		return nil, err
	}
	e.token = "pat:" + strconv.FormatInt(e.agentID, 10) + ":" + pat.GetSecret()

	e.agent, err = agent.New(agent.Options{
		KASAddress: "ws://" + e.nodes[0].agentAddr(), TokenFile: tokenFile, Tunnels: 1, Version: "bench",
		KubeAPIURL: e.upURL, Registry: prometheus.NewRegistry(), Logger: slog.New(e.logs),
	})
	if err != nil {
		return nil, err
	}
	actx, stop := context.WithCancel(context.Background())
	e.stop, e.done = stop, make(chan struct{})
	go func() {
		defer close(e.done)
		e.agent.Run(actx)
	}()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := e.agent.WaitTunnels(wctx, 1); err != nil {
		return nil, fmt.Errorf("agent tunnel: %w", err)
	}
	return e, waitFor(10*time.Second, func() bool {
		resp, err := nodesAPI.ResolveAgent(ctx, &dpv1.ResolveAgentRequest{AgentId: e.agentID})
		return err == nil && len(resp.GetNodes()) == 1 && resp.GetNodes()[0].GetNodeId() == "bench-a"
	})
}

func startNode(cpURL string, privateKey []byte, id string, logs *logCounter) (*node, error) {
	var ls []net.Listener
	for range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return nil, err
		}
		ls = append(ls, l)
	}
	n, err := dataplane.New(dataplane.Options{
		NodeID: id, Version: "bench", ControlPlaneURL: cpURL, PrivateAPISecretKey: privateKey,
		AgentListener: ls[0], PrivateAPIListener: ls[1], KubernetesAPIListener: ls[2],
		Logger: slog.New(logs),
	})
	if err != nil {
		return nil, err
	}
	nd := &node{Node: n, proxyURL: "http://" + ls[2].Addr().String() + "/k8s-proxy", done: make(chan struct{})}
	nd.agentAddrV = ls[0].Addr().String()
	go func() {
		defer close(nd.done)
		n.Run(context.Background())
	}()
	if err := waitFor(10*time.Second, func() bool { return n.Ready(context.Background()) == nil }); err != nil {
		n.Close()
		return nil, fmt.Errorf("node %s not registered: %w", id, err)
	}
	return nd, nil
}

func (e *env) close() {
	for _, n := range e.nodes {
		n.Close() // first: the agent's shutdown then has no stream to wait for
	}
	if e.stop != nil {
		e.stop()
		<-e.done
	}
	if e.upstream != nil {
		e.upstream.Close()
	}
	if e.cpSrv != nil {
		e.cpSrv.Close()
	}
	if e.pool != nil {
		e.pool.Close()
	}
	if e.pg != nil {
		e.pg.Stop()
	}
	if e.dir != "" {
		os.RemoveAll(e.dir)
	}
}

func key() []byte {
	k := make([]byte, authn.KeySize)
	rand.Read(k)
	return k
}

// waitFor polls cond every 10 ms until it holds or d has passed.
func waitFor(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// logCounter counts warnings and errors of every part and prints the
// first few, so that a failed run explains itself.
type logCounter struct {
	n atomic.Int64
}

func (l *logCounter) Enabled(_ context.Context, lvl slog.Level) bool { return lvl >= slog.LevelWarn }
func (l *logCounter) Handle(_ context.Context, r slog.Record) error {
	if l.n.Add(1) <= 5 {
		msg := fmt.Sprintf("log: %s %s", r.Level, r.Message)
		r.Attrs(func(a slog.Attr) bool { msg += " " + a.String(); return true })
		fmt.Fprintln(os.Stderr, msg)
	}
	return nil
}
func (l *logCounter) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCounter) WithGroup(string) slog.Handler      { return l }
