// Command controlplane benchmarks the control plane's hot paths as
// dataplane nodes use them: route resolution (ResolveAgent) and tunnel
// registration (RegisterTunnels, one tunnel per call and batched). It starts
// its own Postgres (internal/pglocal, fsync off) in a temporary directory,
// migrates it, serves controlplane.Handler on a loopback h2c listener and
// drives it with concurrent Connect clients. Baselines measured in the same
// run: a trivial query through pgx (SELECT 1) and a Connect call that the
// server refuses before touching the database (same JWT check and
// framing, no SQL), so the table's ratios say what the SQL costs.
//
//	go run ./tests/bench/controlplane            # 5 s per row
//	go run ./tests/bench/controlplane -short     # a few seconds in all (CI; also KAS_BENCH_SHORT=1)
//	go run ./tests/bench/controlplane -check     # exit 1 when a goal is missed
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/kas-project/kas/controlplane"
	dataplanev1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/pglocal"
	"github.com/kas-project/kas/migrations"
)

// Goals from the design brief (2 cores, local Postgres).
const (
	goalResolutions   = 2000
	goalRegistrations = 1000
)

type config struct {
	duration    time.Duration
	warmup      time.Duration
	concurrency int
	conns       int
	poolSize    int
	nodes       int
	agents      int
	perAgent    int
	batch       int
	check       bool
}

func main() {
	var c config
	short := flag.Bool("short", false, "quick run (0.5 s per row, 1000 agents) for CI")
	flag.DurationVar(&c.duration, "duration", 5*time.Second, "measuring time per row")
	flag.IntVar(&c.concurrency, "concurrency", 32, "concurrent clients")
	flag.IntVar(&c.conns, "conns", 4, "HTTP/2 connections the clients share (as several dataplane nodes would)")
	flag.IntVar(&c.poolSize, "pool", 0, "control plane's Postgres pool size (0: pgxpool's default)")
	flag.IntVar(&c.nodes, "nodes", 8, "dataplane nodes to register")
	flag.IntVar(&c.agents, "agents", 5000, "agents with tunnels before measuring")
	flag.IntVar(&c.perAgent, "tunnels-per-agent", 2, "tunnels per agent, on different nodes")
	flag.IntVar(&c.batch, "batch", 100, "tunnels per call in the batched registration row")
	flag.BoolVar(&c.check, "check", false, "exit with status 1 when a goal is missed")
	flag.Parse()
	if *short || os.Getenv("KAS_BENCH_SHORT") == "1" { // make bench's convention
		c.duration = 500 * time.Millisecond
		c.agents = min(c.agents, 1000)
	}
	c.warmup = min(time.Second, c.duration/5)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := run(ctx, c, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "controlplane bench:", err)
		os.Exit(2)
	}
	if c.check && !ok {
		os.Exit(1)
	}
}

func run(ctx context.Context, c config, out io.Writer) (goalsMet bool, err error) {
	dir, err := os.MkdirTemp("", "kas-bench-cp-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(dir)
	if os.Geteuid() == 0 {
		// Postgres runs as the postgres user and must reach its data directory.
		if err := os.Chmod(dir, 0o755); err != nil {
			return false, err
		}
	}
	pg, err := pglocal.Start(ctx, pglocal.Options{DataDir: filepath.Join(dir, "data")})
	if err != nil {
		return false, fmt.Errorf("start postgres: %w", err)
	}
	defer pg.Stop()

	pcfg, err := pgxpool.ParseConfig(pg.DSN("postgres"))
	if err != nil {
		return false, err
	}
	if c.poolSize > 0 {
		pcfg.MaxConns = int32(c.poolSize)
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return false, fmt.Errorf("connect to postgres: %w", err)
	}
	defer pool.Close()
	if _, err := migrations.Up(ctx, pool); err != nil {
		return false, fmt.Errorf("migrate: %w", err)
	}

	privateKey := key()
	srv, err := controlplane.New(controlplane.Options{
		Pool:                pool,
		APISecretKey:        key(),
		PrivateAPISecretKey: privateKey,
		Logger:              slog.New(slog.DiscardHandler),
		LeaseTTL:            time.Hour, // no lease lapses during the run
	})
	if err != nil {
		return false, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return false, err
	}
	hs := &http.Server{Handler: srv.Handler(), Protocols: new(http.Protocols)}
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetUnencryptedHTTP2(true)
	go hs.Serve(ln)
	defer hs.Close()
	base := "http://" + ln.Addr().String()

	// One HTTP/2 connection per simulated node; each signs like a node does.
	clients := make([]dataplanev1connect.NodeServiceClient, c.conns)
	for i := range clients {
		tr := &http.Transport{Protocols: new(http.Protocols), MaxIdleConnsPerHost: 1}
		tr.Protocols.SetUnencryptedHTTP2(true)
		signer := authn.NewSigner(privateKey, authn.IssuerDataplane, authn.AudienceDataplane, fmt.Sprint("bench-", i))
		clients[i] = dataplanev1connect.NewNodeServiceClient(&http.Client{Transport: tr}, base,
			connect.WithInterceptors(authn.ClientInterceptor(signer)))
	}
	client := func(worker int) dataplanev1connect.NodeServiceClient { return clients[worker%len(clients)] }

	nodes, err := seed(ctx, c, clients[0])
	if err != nil {
		return false, err
	}
	var tunnels int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM tunnels`).Scan(&tunnels); err != nil {
		return false, err
	}
	fmt.Fprintf(out, "control plane benchmark: %d cores (GOMAXPROCS %d), %d clients over %d HTTP/2 connections, Postgres pool %d, %v per row\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), c.concurrency, c.conns, pool.Config().MaxConns, c.duration)
	fmt.Fprintf(out, "routing table: %d nodes, %d agents, %d open tunnels\n\n", len(nodes), c.agents, tunnels)

	// Per-node sequence counters for the registration rows.
	seqs := make([]atomic.Int64, len(nodes))
	for i := range seqs {
		seqs[i].Store(1 << 40) // above the seeded ones
	}
	var tunnelIDs atomic.Int64
	registerBatch := func(ctx context.Context, worker, n int) error {
		ni := worker % len(nodes)
		ts := make([]*dataplanev1.Tunnel, n)
		for i := range ts {
			id := tunnelIDs.Add(1)
			ts[i] = &dataplanev1.Tunnel{
				TunnelId: fmt.Sprint("bench-", id), AgentId: int64(c.agents) + id%int64(c.agents) + 1,
				Seq: seqs[ni].Add(1), AgentVersion: "v17.0.0",
			}
		}
		resp, err := client(worker).RegisterTunnels(ctx, &dataplanev1.RegisterTunnelsRequest{NodeId: nodes[ni], BootId: "boot", Tunnels: ts})
		if err == nil && int(resp.Applied) != n {
			err = fmt.Errorf("applied %d of %d tunnels", resp.Applied, n)
		}
		return err
	}

	rows := []*row{
		{name: "SELECT 1 through pgx (baseline)", op: func(ctx context.Context, _ int) error {
			var one int
			return pool.QueryRow(ctx, `SELECT 1`).Scan(&one)
		}},
		{name: "Connect no-op: refused before SQL (baseline)", op: func(ctx context.Context, w int) error {
			_, err := client(w).ResolveAgent(ctx, &dataplanev1.ResolveAgentRequest{AgentId: 0})
			if connect.CodeOf(err) == connect.CodeInvalidArgument {
				return nil
			}
			return fmt.Errorf("want InvalidArgument, got %v", err)
		}},
		{name: "ResolveAgent", goal: goalResolutions, op: func(ctx context.Context, _ int) error {
			agent := mrand.Int64N(int64(c.agents)) + 1
			resp, err := client(int(agent)).ResolveAgent(ctx, &dataplanev1.ResolveAgentRequest{AgentId: agent})
			if err == nil && len(resp.Nodes) != min(c.perAgent, len(nodes)) {
				err = fmt.Errorf("agent %d resolved to %d nodes, want %d", agent, len(resp.Nodes), min(c.perAgent, len(nodes)))
			}
			return err
		}},
		{name: "RegisterTunnels, 1 tunnel per call", goal: goalRegistrations, op: func(ctx context.Context, w int) error {
			return registerBatch(ctx, w, 1)
		}},
		{name: fmt.Sprintf("RegisterTunnels, %d per call (tunnels/s)", c.batch), perOp: c.batch, op: func(ctx context.Context, w int) error {
			return registerBatch(ctx, w, c.batch)
		}},
	}
	for _, r := range rows {
		if err := r.measure(ctx, c); err != nil {
			return false, fmt.Errorf("%s: %w", r.name, err)
		}
	}
	return report(out, rows), nil
}

// seed registers the nodes and c.agents agents' tunnels, c.perAgent each
// on consecutive nodes, in batches of 1000.
func seed(ctx context.Context, c config, client dataplanev1connect.NodeServiceClient) ([]string, error) {
	nodes := make([]string, c.nodes)
	batches := make([][]*dataplanev1.Tunnel, c.nodes)
	seq := int64(0)
	flush := func(i int) error {
		if len(batches[i]) == 0 {
			return nil
		}
		_, err := client.RegisterTunnels(ctx, &dataplanev1.RegisterTunnelsRequest{NodeId: nodes[i], BootId: "boot", Tunnels: batches[i]})
		batches[i] = batches[i][:0]
		return err
	}
	for i := range nodes {
		nodes[i] = fmt.Sprintf("node-%d", i)
		_, err := client.RegisterNode(ctx, &dataplanev1.RegisterNodeRequest{
			NodeId: nodes[i], BootId: "boot", PrivateUrl: fmt.Sprintf("grpc://10.0.0.%d:8155", i+1), Version: "bench",
		})
		if err != nil {
			return nil, fmt.Errorf("register node: %w", err)
		}
	}
	for a := 1; a <= c.agents; a++ {
		for k := range min(c.perAgent, c.nodes) {
			ni := (a + k) % c.nodes
			seq++
			batches[ni] = append(batches[ni], &dataplanev1.Tunnel{
				TunnelId: fmt.Sprintf("seed-%d-%d", a, k), AgentId: int64(a), Seq: seq, AgentVersion: "v17.0.0",
			})
			if len(batches[ni]) == controlplane.MaxTunnelsPerCall {
				if err := flush(ni); err != nil {
					return nil, fmt.Errorf("seed tunnels: %w", err)
				}
			}
		}
	}
	for i := range batches {
		if err := flush(i); err != nil {
			return nil, fmt.Errorf("seed tunnels: %w", err)
		}
	}
	return nodes, nil
}

// row is one line of the table.
type row struct {
	name  string
	goal  float64 // ops/s, 0 for none
	perOp int     // units per call (batched rows); 0 means 1
	op    func(ctx context.Context, worker int) error

	rate     float64 // units/s
	p50, p99 time.Duration
	calls    int
}

// measure runs op from c.concurrency workers: a warm-up, then c.duration
// of recorded calls. The first error stops the run.
func (r *row) measure(ctx context.Context, c config) error {
	if err := r.loop(ctx, c, c.warmup, nil); err != nil {
		return err
	}
	lat := make([][]time.Duration, c.concurrency)
	start := time.Now()
	if err := r.loop(ctx, c, c.duration, lat); err != nil {
		return err
	}
	elapsed := time.Since(start)
	all := slices.Concat(lat...)
	slices.Sort(all)
	r.calls = len(all)
	if r.calls == 0 {
		return errors.New("no call completed")
	}
	units := max(r.perOp, 1)
	r.rate = float64(r.calls*units) / elapsed.Seconds()
	r.p50 = all[r.calls/2]
	r.p99 = all[min(r.calls-1, int(math.Ceil(float64(r.calls)*0.99))-1)]
	return nil
}

func (r *row) loop(ctx context.Context, c config, d time.Duration, lat [][]time.Duration) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for w := range c.concurrency {
		wg.Go(func() {
			for ctx.Err() == nil {
				t0 := time.Now()
				if t0.After(deadline) {
					return
				}
				if err := r.op(ctx, w); err != nil {
					if ctx.Err() == nil {
						cancel(err)
					}
					return
				}
				if lat != nil {
					lat[w] = append(lat[w], time.Since(t0))
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// report prints the table and says whether every goal was met.
func report(out io.Writer, rows []*row) bool {
	selectRate, noopRate := rows[0].rate, rows[1].rate
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "operation\t/s\tp50\tp99\tvs SELECT 1\tvs Connect no-op\tgoal\t")
	met := true
	for _, r := range rows {
		goal := ""
		if r.goal > 0 {
			verdict := "ok"
			if r.rate < r.goal {
				verdict, met = "MISSED", false
			}
			goal = fmt.Sprintf("≥ %.0f/s %s", r.goal, verdict)
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%.2f\t%.2f\t%s\t\n", r.name, r.rate, ms(r.p50), ms(r.p99),
			r.rate/selectRate, r.rate/noopRate, goal)
	}
	tw.Flush()
	return met
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }

func key() []byte {
	k := make([]byte, authn.KeySize)
	rand.Read(k)
	return k
}
