package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kas-project/kas/agent"
	mgmtv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/pglocal"
)

var errTimeout = errors.New("timed out")

// env is the topology of a run: Postgres behind a cutter, control-plane
// replicas behind a balancer, dataplane nodes (each private API behind a
// cutter of its own) behind two balancers (agents' and clients'), the
// agents, and their fake Kubernetes API.
type env struct {
	cfg config
	dir string

	pgMu    sync.Mutex
	pg      *pglocal.Server
	pgProxy *cutter
	pool    *pgxpool.Pool // the harness's own view of the database, not through the cutter

	apiKeyFile, privKeyFile string
	cps                     []*child
	cpLB                    *balancer
	nodes                   []*node
	agentLB, clientLB       *balancer

	upstream *http.Server
	upURL    string
	agents   []*agentRun
	cancel   context.CancelFunc // stops the agents
	agentLog *slog.Logger       // agents.log in dir
	agentsWG sync.WaitGroup

	hc       *http.Client // for management calls
	mgmt     managementv1connect.AgentServiceClient
	mgmtW    managementv1connect.AgentServiceClient // for write loops: tells answers from silence
	creds    managementv1connect.CredentialServiceClient
	writesTo int64 // the agent whose tokens the write loops create
}

type node struct {
	*child
	id                                      string
	agentAddr, proxyAddr, privAddr, obsAddr string
	private                                 *cutter // in front of the private API; its address is the registered URL
}

type agentRun struct {
	id    int64
	token string // "pat:<id>:<secret>" for the proxy
	a     *agent.Agent
}

func keyFile(dir, name string) (string, error) {
	k := make([]byte, 32)
	rand.Read(k)
	p := filepath.Join(dir, name)
	return p, os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString(k)+"\n"), 0o600)
}

func startEnv(ctx context.Context, c config) (_ *env, err error) {
	e := &env{cfg: c}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if e.dir, err = os.MkdirTemp("", "kas-faults-"); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		if err := os.Chmod(e.dir, 0o755); err != nil { // Postgres runs as postgres
			return nil, err
		}
	}
	if err := e.startPostgres(ctx); err != nil {
		return nil, err
	}
	if e.pgProxy, err = newCutter(func() []string {
		e.pgMu.Lock()
		defer e.pgMu.Unlock()
		// pglocal listens on a Unix socket only: host=<dir> port=5432.
		return []string{"unix:" + socketOf(e.pg.DSN("postgres"))}
	}); err != nil {
		return nil, err
	}
	if e.apiKeyFile, err = keyFile(e.dir, "api.key"); err != nil {
		return nil, err
	}
	if e.privKeyFile, err = keyFile(e.dir, "private.key"); err != nil {
		return nil, err
	}
	dbURL := "postgres://postgres@" + e.pgProxy.addr() + "/postgres?sslmode=disable"

	// Control-plane replicas.
	var cpTargets []lbTarget
	for i := range 2 {
		api, err1 := freePort()
		obs, err2 := freePort()
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		ch := &child{
			name: fmt.Sprintf("controlplane-%d", i+1), args: []string{"controlplane"},
			logPath: filepath.Join(e.dir, fmt.Sprintf("controlplane-%d.log", i+1)), readyURL: "http://" + obs + "/readyz",
			env: []string{
				"KAS_DATABASE_URL=" + dbURL,
				"KAS_API_SECRET_KEY_FILE=" + e.apiKeyFile,
				"KAS_PRIVATE_API_SECRET_KEY_FILE=" + e.privKeyFile,
				"KAS_CONTROLPLANE_LISTEN_ADDRESS=" + api,
				"KAS_OBSERVABILITY_LISTEN_ADDRESS=" + obs,
				"KAS_OBSERVABILITY_LOG_FORMAT=json",
			},
		}
		if err := ch.start(); err != nil {
			return nil, err
		}
		e.cps = append(e.cps, ch)
		cpTargets = append(cpTargets, lbTarget{addr: api, readyURL: ch.readyURL})
		if i == 0 { // the first migrates; the second then starts on a migrated database
			if err := ch.waitReady(60 * time.Second); err != nil {
				return nil, err
			}
		}
	}
	if err := e.cps[1].waitReady(60 * time.Second); err != nil {
		return nil, err
	}
	if e.cpLB, err = newBalancer(cpTargets, 500*time.Millisecond); err != nil {
		return nil, err
	}
	cpURL := "http://" + e.cpLB.addr()

	// Dataplane nodes.
	var agentTargets, proxyTargets []lbTarget
	for i := range c.nodes {
		n := &node{id: fmt.Sprintf("node-%d", i+1)}
		for _, p := range []*string{&n.agentAddr, &n.proxyAddr, &n.privAddr, &n.obsAddr} {
			if *p, err = freePort(); err != nil {
				return nil, err
			}
		}
		priv := n.privAddr
		if n.private, err = newCutter(func() []string { return []string{priv} }); err != nil {
			return nil, err
		}
		n.child = &child{
			name: n.id, args: []string{"dataplane"},
			logPath: filepath.Join(e.dir, n.id+".log"), readyURL: "http://" + n.obsAddr + "/readyz",
			env: []string{
				"KAS_PRIVATE_API_SECRET_KEY_FILE=" + e.privKeyFile,
				"KAS_DATAPLANE_CONTROLPLANE_URL=" + cpURL,
				"KAS_DATAPLANE_NODE_ID=" + n.id,
				"KAS_DATAPLANE_DRAIN_GRACE=" + c.drainGrace.String(),
				"KAS_DATAPLANE_AGENT_LISTEN_ADDRESS=" + n.agentAddr,
				"KAS_DATAPLANE_KUBERNETES_API_LISTEN_ADDRESS=" + n.proxyAddr,
				"KAS_DATAPLANE_PRIVATE_API_LISTEN_ADDRESS=" + n.privAddr,
				"OWN_PRIVATE_API_URL=grpc://" + n.private.addr(),
				"KAS_OBSERVABILITY_LISTEN_ADDRESS=" + n.obsAddr,
				"KAS_OBSERVABILITY_LOG_FORMAT=json",
			},
		}
		if err := n.start(); err != nil {
			return nil, err
		}
		e.nodes = append(e.nodes, n)
		agentTargets = append(agentTargets, lbTarget{addr: n.agentAddr, readyURL: n.readyURL})
		proxyTargets = append(proxyTargets, lbTarget{addr: n.proxyAddr, readyURL: n.readyURL})
	}
	for _, n := range e.nodes {
		if err := n.waitReady(60 * time.Second); err != nil {
			return nil, err
		}
	}
	if e.agentLB, err = newBalancer(agentTargets, c.probe); err != nil {
		return nil, err
	}
	if e.clientLB, err = newBalancer(proxyTargets, c.probe); err != nil {
		return nil, err
	}

	// Management API through the control planes' balancer.
	e.hc = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	mgmt := connect.WithInterceptors(authn.ClientInterceptor(authn.NewSigner(readKey(e.apiKeyFile), authn.IssuerRails, authn.AudienceManagement, "faults")))
	e.mgmt = managementv1connect.NewAgentServiceClient(e.hc, cpURL, mgmt)
	e.creds = managementv1connect.NewCredentialServiceClient(e.hc, cpURL, mgmt)
	e.mgmtW = managementv1connect.NewAgentServiceClient(&http.Client{Transport: answerTracker{&http.Transport{MaxIdleConnsPerHost: 4}}}, cpURL, mgmt)

	if err := e.startUpstream(); err != nil {
		return nil, err
	}
	if err := e.startAgents(ctx); err != nil {
		return nil, err
	}
	return e, nil
}

func readKey(path string) []byte {
	b, _ := os.ReadFile(path)
	k, _ := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	return k
}

// socketOf returns the Unix socket path of a pglocal DSN.
func socketOf(dsn string) string {
	for f := range strings.FieldsSeq(dsn) {
		if h, ok := strings.CutPrefix(f, "host="); ok {
			return filepath.Join(h, ".s.PGSQL.5432")
		}
	}
	return ""
}

func (e *env) startPostgres(ctx context.Context) error {
	pg, err := pglocal.Start(ctx, pglocal.Options{DataDir: filepath.Join(e.dir, "pgdata")})
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	e.pgMu.Lock()
	e.pg = pg
	e.pgMu.Unlock()
	if e.pool != nil {
		e.pool.Close()
	}
	e.pool, err = pgxpool.New(ctx, pg.DSN("postgres"))
	return err
}

// restartPostgres stops Postgres (fast shutdown: sessions are cut) and
// starts it again on the same data directory.
func (e *env) restartPostgres(ctx context.Context) error {
	e.pool.Close()
	e.pgMu.Lock()
	pg := e.pg
	e.pgMu.Unlock()
	pg.Stop()
	e.pool = nil
	return e.startPostgres(ctx)
}

// startUpstream serves the agents' Kubernetes API: a small pod list, a
// watch that sends an event every 100 ms, and a log that follows as fast
// as the reader takes it.
func (e *env) startUpstream() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	list := []byte(`{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"a","namespace":"default"}},{"metadata":{"name":"b","namespace":"default"}}]}`)
	line := []byte(strings.Repeat("x", 1023) + "\n")
	chunk := []byte(strings.Repeat(string(line), 16))
	e.upstream = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Kas-Faults-Path", r.URL.Path)
		switch {
		case strings.HasSuffix(r.URL.Path, "/log"):
			w.Header().Set("Content-Type", "text/plain")
			rc := http.NewResponseController(w)
			for r.Context().Err() == nil {
				if _, err := w.Write(chunk); err != nil {
					return
				}
				rc.Flush()
			}
		case r.URL.Query().Get("watch") != "":
			w.Header().Set("Content-Type", "application/json")
			rc := http.NewResponseController(w)
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for i := 0; ; i++ {
				if _, err := fmt.Fprintf(w, `{"type":"MODIFIED","object":{"kind":"Pod","metadata":{"name":"a","resourceVersion":"%d"}}}`+"\n", i+2); err != nil {
					return
				}
				rc.Flush()
				select {
				case <-r.Context().Done():
					return
				case <-tick.C:
				}
			}
		default:
			w.Header().Set("Content-Type", "application/json")
			w.Write(list)
		}
	})}
	go e.upstream.Serve(ln)
	e.upURL = "http://" + ln.Addr().String()
	return nil
}

// startAgents registers the agents through the management API, gives each
// an access token for the proxy, and runs them (package agent) against the
// agents' balancer until every one has its tunnels. Agent 0 has a single
// tunnel (the slow-consumer scenario needs streams on one tunnel); the
// others keep the default two.
func (e *env) startAgents(ctx context.Context) error {
	actx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	w, err := e.mgmt.CreateAgent(ctx, &mgmtv1.CreateAgentRequest{ProjectId: 2, Name: "writes"})
	if err != nil {
		return fmt.Errorf("create agent: %w", err)
	}
	e.writesTo = w.GetAgent().GetId()
	logf, err := os.Create(filepath.Join(e.dir, "agents.log"))
	if err != nil {
		return err
	}
	e.agentLog = slog.New(slog.NewJSONHandler(logf, nil))
	e.agents = make([]*agentRun, e.cfg.agents)
	errs := make(chan error, e.cfg.agents)
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i := range e.agents {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			ar, err := e.newAgent(ctx, i)
			if err != nil {
				errs <- err
				return
			}
			e.agents[i] = ar
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	for _, ar := range e.agents {
		e.agentsWG.Go(func() { ar.a.Run(actx) })
	}
	return e.waitTunnels(60 * time.Second)
}

func (e *env) newAgent(ctx context.Context, i int) (*agentRun, error) {
	a, err := e.mgmt.CreateAgent(ctx, &mgmtv1.CreateAgentRequest{ProjectId: 1, Name: fmt.Sprintf("agent-%d", i)})
	if err != nil {
		return nil, fmt.Errorf("create agent: %w", err)
	}
	id := a.GetAgent().GetId()
	tok, err := e.mgmt.CreateAgentToken(ctx, &mgmtv1.CreateAgentTokenRequest{AgentId: id, Name: "faults"})
	if err != nil {
		return nil, fmt.Errorf("create agent token: %w", err)
	}
	pat, err := e.creds.CreateAccessToken(ctx, &mgmtv1.CreateAccessTokenRequest{
		User:     &mgmtv1.UserIdentity{Id: 1, Username: "faults"},
		AgentIds: []int64{id}, ExpiresAt: timestamppb.New(time.Now().Add(24 * time.Hour)), Name: "faults",
	})
	if err != nil {
		return nil, fmt.Errorf("create access token: %w", err)
	}
	tokenFile := filepath.Join(e.dir, "agent-"+strconv.Itoa(i)+".token")
	if err := os.WriteFile(tokenFile, []byte(tok.GetSecret()), 0o600); err != nil {
		return nil, err
	}
	tunnels := 2
	if i == 0 {
		tunnels = 1
	}
	ag, err := agent.New(agent.Options{
		KASAddress: "ws://" + e.agentLB.addr(), TokenFile: tokenFile, Tunnels: tunnels, Version: "faults",
		KubeAPIURL: e.upURL, Registry: prometheus.NewRegistry(), Logger: e.agentLog.With("agent_id", id),
		// Production defaults except the retry for a second node, so that
		// a short run starts with its tunnels spread.
		NodeRetry: 2 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	return &agentRun{id: id, token: "pat:" + strconv.FormatInt(id, 10) + ":" + pat.GetSecret(), a: ag}, nil
}

// tunnelsWanted is how many tunnels the agents keep in all.
func (e *env) tunnelsWanted() int { return 2*len(e.agents) - 1 }

func (e *env) tunnelsUp() int {
	n := 0
	for _, ar := range e.agents {
		n += ar.a.Tunnels()
	}
	return n
}

// waitTunnels waits until every agent has all its tunnels.
func (e *env) waitTunnels(bound time.Duration) error {
	if err := poll(bound, 50*time.Millisecond, func() bool { return e.tunnelsUp() == e.tunnelsWanted() }); err != nil {
		return fmt.Errorf("agents: %d of %d tunnels up after %v", e.tunnelsUp(), e.tunnelsWanted(), bound)
	}
	return nil
}

// nodeMetrics are the figures read from a node's /metrics.
type nodeMetrics struct {
	goroutines  int64
	liveStreams int64 // opened + accepted - closed
	tunnels     int64
}

func scrape(obsAddr string) (nodeMetrics, error) {
	var m nodeMetrics
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + obsAddr + "/metrics")
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		name := line[:i]
		switch {
		case name == "go_goroutines":
			m.goroutines = int64(v)
		case name == "kas_dataplane_tunnels":
			m.tunnels = int64(v)
		case name == `kas_dataplane_tunnel_streams_total{event="opened"}`, name == `kas_dataplane_tunnel_streams_total{event="accepted"}`:
			m.liveStreams += int64(v)
		case name == `kas_dataplane_tunnel_streams_total{event="closed"}`:
			m.liveStreams -= int64(v)
		}
	}
	return m, sc.Err()
}

// snapshot is the state compared before and after a scenario, with no load.
type snapshot struct {
	goroutines, streams, tunnels int64 // summed over the nodes
	dbNodes, dbNotLive           int64
	dbOpenTunnels                int64
	agentTunnels                 int
	perNode                      []string // "node-1 streams/goroutines"
	err                          error
}

func (e *env) snapshot(ctx context.Context) snapshot {
	var s snapshot
	for _, n := range e.nodes {
		m, err := scrape(n.obsAddr)
		if err != nil {
			s.err = fmt.Errorf("%s metrics: %w", n.id, err)
			return s
		}
		s.goroutines += m.goroutines
		s.streams += m.liveStreams
		s.perNode = append(s.perNode, fmt.Sprintf("%s %d/%d", n.id, m.liveStreams, m.goroutines))
		s.tunnels += m.tunnels
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s.err = e.pool.QueryRow(qctx, `SELECT
		(SELECT count(*) FROM node_status),
		(SELECT count(*) FROM node_status WHERE state <> 'live'),
		(SELECT count(*) FROM tunnels WHERE open)`).Scan(&s.dbNodes, &s.dbNotLive, &s.dbOpenTunnels)
	s.agentTunnels = e.tunnelsUp()
	return s
}

func (s snapshot) String() string {
	if s.err != nil {
		return s.err.Error()
	}
	return fmt.Sprintf("goroutines %d, live streams %d (streams/goroutines: %s), node tunnels %d, agent tunnels %d, db nodes %d (not live %d), db open tunnels %d",
		s.goroutines, s.streams, strings.Join(s.perNode, ", "), s.tunnels, s.agentTunnels, s.dbNodes, s.dbNotLive, s.dbOpenTunnels)
}

// settled says whether the topology is whole again: every agent has its
// tunnels, the nodes count them too, and the database agrees — every node
// live, no row of a dead node, as many open tunnels as the nodes hold.
func (e *env) settled(now snapshot) bool {
	return now.err == nil &&
		now.agentTunnels == e.tunnelsWanted() &&
		now.tunnels == int64(e.tunnelsWanted()) &&
		now.dbNodes == int64(len(e.nodes)) && now.dbNotLive == 0 &&
		now.dbOpenTunnels == now.tunnels
}

// atBaseline is settled, and moreover no tunnel stream is open beyond
// base's, and no goroutine leaked (10% + 50 of slack for pools and
// timers). The nodes keep idle pooled connections to agents (one stream
// each) for 30 s, so this takes that long after a busy phase.
func (e *env) atBaseline(base, now snapshot) bool {
	return e.settled(now) &&
		now.streams <= base.streams &&
		now.goroutines <= base.goroutines+base.goroutines/10+50
}

func (e *env) close() {
	if e.cancel != nil {
		e.cancel()
	}
	for _, n := range e.nodes {
		n.kill()
		n.private.close()
	}
	e.agentsWG.Wait()
	for _, c := range e.cps {
		c.kill()
	}
	for _, b := range []*balancer{e.cpLB, e.agentLB, e.clientLB} {
		if b != nil {
			b.close()
		}
	}
	if e.upstream != nil {
		e.upstream.Close()
	}
	if e.pool != nil {
		e.pool.Close()
	}
	if e.pgProxy != nil {
		e.pgProxy.close()
	}
	if e.pg != nil {
		e.pg.Stop()
	}
	if e.dir != "" && !e.cfg.keep {
		os.RemoveAll(e.dir)
	}
}
