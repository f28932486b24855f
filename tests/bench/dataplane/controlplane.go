package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/kas-project/kas/controlplane"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
	mgmtv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/listen"
	"github.com/kas-project/kas/internal/pglocal"
	"github.com/kas-project/kas/migrations"
)

// cpEnv is the control plane of the run: Postgres, the server with
// production defaults (20 s lease, 5 s heartbeat), and signed clients.
type cpEnv struct {
	dir        string
	pg         *pglocal.Server
	pool       *pgxpool.Pool
	hs         *http.Server
	url        string
	privateKey []byte
	logs       *logCounter
	conns      atomic.Int64 // connections accepted
	agents     managementv1connect.AgentServiceClient
	nodes      dataplanev1connect.NodeServiceClient
}

func startControlPlane(ctx context.Context) (_ *cpEnv, err error) {
	e := &cpEnv{logs: newLogCounter("controlplane", slog.LevelWarn)}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if e.dir, err = os.MkdirTemp("", "kas-bench-dp-"); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		// Postgres runs as the postgres user and must reach its data directory.
		if err := os.Chmod(e.dir, 0o755); err != nil {
			return nil, err
		}
	}
	if e.pg, err = pglocal.Start(ctx, pglocal.Options{DataDir: filepath.Join(e.dir, "data")}); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	if e.pool, err = pgxpool.New(ctx, e.pg.DSN("postgres")); err != nil {
		return nil, fmt.Errorf("connect to postgres: %w", err)
	}
	if _, err := migrations.Up(ctx, e.pool); err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	apiKey := key()
	e.privateKey = key()
	srv, err := controlplane.New(controlplane.Options{
		Pool:                e.pool,
		APISecretKey:        apiKey,
		PrivateAPISecretKey: e.privateKey,
		Logger:              slog.New(e.logs),
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e.hs = listen.NewServer(srv.Handler(), nil)
	e.hs.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			e.conns.Add(1)
		}
	}
	go e.hs.Serve(ln)
	e.url = "http://" + ln.Addr().String()

	tr := &http.Transport{Protocols: new(http.Protocols), MaxIdleConnsPerHost: 4}
	tr.Protocols.SetUnencryptedHTTP2(true)
	hc := &http.Client{Transport: tr}
	e.agents = managementv1connect.NewAgentServiceClient(hc, e.url, connect.WithInterceptors(
		authn.ClientInterceptor(authn.NewSigner(apiKey, authn.IssuerRails, authn.AudienceManagement, "rails"))))
	e.nodes = dataplanev1connect.NewNodeServiceClient(hc, e.url, connect.WithInterceptors(
		authn.ClientInterceptor(authn.NewSigner(e.privateKey, authn.IssuerDataplane, authn.AudienceDataplane, "bench"))))
	return e, nil
}

func (e *cpEnv) close() {
	if e.hs != nil {
		e.hs.Close()
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

// cred is an agent and its token.
type cred struct {
	ID    int64  `json:"id"`
	Token string `json:"token"`
}

// createAgents registers n agents named <prefix>-<i> with one token each,
// through the management API.
func (e *cpEnv) createAgents(ctx context.Context, prefix string, n int) ([]cred, error) {
	out := make([]cred, n)
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				c, err := e.createAgent(ctx, fmt.Sprintf("%s-%d", prefix, i))
				if err != nil {
					mu.Lock()
					first = cmpOr(first, err)
					mu.Unlock()
					return
				}
				out[i] = c
			}
		})
	}
	wg.Wait()
	return out, first
}

func (e *cpEnv) createAgent(ctx context.Context, name string) (cred, error) {
	a, err := e.agents.CreateAgent(ctx, &mgmtv1.CreateAgentRequest{ProjectId: 1, Name: name})
	if err != nil {
		return cred{}, fmt.Errorf("create agent %s: %w", name, err)
	}
	tok, err := e.agents.CreateAgentToken(ctx, &mgmtv1.CreateAgentTokenRequest{AgentId: a.GetAgent().GetId(), Name: "bench"})
	if err != nil {
		return cred{}, fmt.Errorf("create token of agent %s: %w", name, err)
	}
	return cred{ID: a.GetAgent().GetId(), Token: tok.GetSecret()}, nil
}

func cmpOr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func key() []byte {
	k := make([]byte, authn.KeySize)
	rand.Read(k)
	return k
}

// logCounter is a slog.Handler that counts records at or above a level,
// by level, and prints the first few to stderr so that a failed run
// explains itself.
type logCounter struct {
	name    string
	min     slog.Level
	warns   atomic.Int64
	errs    atomic.Int64
	printed atomic.Int64
}

const maxPrinted = 5

func newLogCounter(name string, min slog.Level) *logCounter {
	return &logCounter{name: name, min: min}
}

func (l *logCounter) Enabled(_ context.Context, lvl slog.Level) bool { return lvl >= l.min }

func (l *logCounter) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		l.errs.Add(1)
	} else {
		l.warns.Add(1)
	}
	if l.printed.Add(1) <= maxPrinted {
		msg := fmt.Sprintf("%s: %s %s", l.name, r.Level, r.Message)
		r.Attrs(func(a slog.Attr) bool {
			msg += " " + a.String()
			return true
		})
		fmt.Fprintln(os.Stderr, msg)
	}
	return nil
}

// WithAttrs and WithGroup share the counters: the counts are per logger
// tree.
func (l *logCounter) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCounter) WithGroup(string) slog.Handler      { return l }

var errTimeout = errors.New("timed out")
