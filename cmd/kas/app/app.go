// Package app is the kas binary's application: the command line (CLI) and
// Server, which runs a role (the control plane, a dataplane node, or both in
// one process: kas all) with its database, API and observability listeners.
// main and the tests use the same Server: New, Run(ctx), Close.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/kas-project/kas/controlplane"
	"github.com/kas-project/kas/dataplane"
	"github.com/kas-project/kas/internal/config"
	"github.com/kas-project/kas/internal/listen"
	"github.com/kas-project/kas/internal/obs"
	"github.com/kas-project/kas/migrations"
)

// Options configure a Server.
type Options struct {
	// Role is what to run: config.RoleControlplane, config.RoleDataplane,
	// or config.RoleAll (both, the node calling the control plane through
	// its listener).
	Role config.Role
	// Config is the loaded configuration; New validates it for Role (and,
	// on the embedded database, fills in the generated key files).
	Config *config.Config
	// Logger receives every log record; default discard.
	Logger *slog.Logger
	// Started, when set, is called once from Run when the role serves:
	// its listeners accept and, with a dataplane, the node is registered
	// with the control plane.
	Started func()
}

// Server is a running kas role: its database, servers and listeners.
type Server struct {
	log       *slog.Logger
	cfg       *config.Config
	started   func()
	reg       *prometheus.Registry
	db        *database // nil without a control plane
	cp        *controlplane.Server
	node      *dataplane.Node // nil without a dataplane
	servers   []*server
	readiness []func(context.Context) error
	// dpAddrs are the dataplane's listener addresses, by setting.
	dpAddrs map[string]net.Addr
	// proxyCA is the proxy's self-signed certificate (kas all), or "".
	proxyCA string
}

// server is one HTTP server with its listener.
type server struct {
	name string // the listener's setting, e.g. "controlplane.listen"
	tls  bool
	l    net.Listener
	http *http.Server
}

// New prepares the role: it validates the configuration, opens the database
// (starting the embedded one when database.url is empty, and generating its
// keys on first use), applies migrations, and opens every listener, so that
// addresses are known (port 0 resolved) when it returns. Run serves.
func New(ctx context.Context, o Options) (_ *Server, err error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg := o.Config
	if !o.Role.UsesControlplane() && !o.Role.UsesDataplane() {
		return nil, fmt.Errorf("role %s does not serve", o.Role)
	}
	if err := cfg.Validate(o.Role); err != nil {
		return nil, &ConfigError{err}
	}
	s := &Server{log: log, cfg: cfg, started: o.Started, reg: obs.NewRegistry()}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	// Each part adds its servers and readiness check. The control plane
	// comes first: the embedded database refuses a second kas on its data
	// directory before any port is taken, and the all-in-one node needs
	// the control plane's address.
	if o.Role.UsesControlplane() {
		if err := s.newControlplane(ctx, cfg, o.Role); err != nil {
			return nil, err
		}
	}
	if o.Role == config.RoleAll {
		if err := s.prepareDataplaneForAll(cfg); err != nil {
			return nil, err
		}
	}
	if o.Role.UsesDataplane() {
		if err := s.newDataplane(cfg); err != nil {
			return nil, err
		}
	}
	if err := s.addServer("observability.listen", cfg.Observability.Listen, obs.Handler(obs.Options{
		Registry: s.reg,
		Ready:    s.ready,
	})); err != nil {
		return nil, err
	}
	return s, nil
}

// newControlplane opens the database (migrating it) and adds the control
// plane's API server.
func (s *Server) newControlplane(ctx context.Context, cfg *config.Config, role config.Role) error {
	var err error
	s.db, err = openDatabase(ctx, cfg, s.log)
	if err != nil {
		return err
	}
	if paths, err := cfg.EnsureEmbeddedKeys(); err != nil {
		return fmt.Errorf("embedded keys: %w", err)
	} else if len(paths) > 0 {
		s.log.Info("using the embedded mode's secret keys", "files", paths)
		if err := cfg.Validate(role); err != nil {
			return &ConfigError{err}
		}
	}
	if cfg.Database.MigrateOnStart {
		n, err := migrations.Up(ctx, s.db.pool)
		if err != nil {
			return fmt.Errorf("migrate database: %w", err)
		}
		if n > 0 {
			s.log.Info("database migrated", "applied", n)
		}
	}
	logRotation(s.log, "api_secret_key_file", cfg.ExtraAPISecretKeys)
	logRotation(s.log, "private_api_secret_key_file", cfg.ExtraPrivateAPISecretKeys)
	s.cp, err = controlplane.New(controlplane.Options{
		Pool:                      s.db.pool,
		APISecretKey:              cfg.APISecretKey,
		PrivateAPISecretKey:       cfg.PrivateAPISecretKey,
		ExtraAPISecretKeys:        cfg.ExtraAPISecretKeys,
		ExtraPrivateAPISecretKeys: cfg.ExtraPrivateAPISecretKeys,
		LeaseTTL:                  cfg.Controlplane.LeaseTTL,
		Logger:                    s.log,
	})
	if err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	s.readiness = append(s.readiness, s.cp.Ready)
	api := obs.RequestIDs(obs.HTTPMetrics(s.reg, "controlplane", s.cp.Handler()))
	return s.addServer("controlplane.listen", cfg.Controlplane.Listen, api)
}

// logRotation says that a key file holds extra keys, which stay accepted
// until they are removed (key rotation; the keys themselves are not logged).
func logRotation(log *slog.Logger, setting string, extra [][]byte) {
	if len(extra) > 0 {
		log.Warn("key rotation: the key file holds extra keys, which are still accepted; remove them when the rotation is over",
			"setting", setting, "extra_keys", len(extra))
	}
}

// ready is /readyz: every part must be ready.
func (s *Server) ready(ctx context.Context) error {
	for _, r := range s.readiness {
		if err := r(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) addServer(name string, l config.Listen, h http.Handler) error {
	spec := l.Spec(name)
	ln, err := listen.Listen(spec)
	if err != nil {
		return err
	}
	s.servers = append(s.servers, &server{name: name, tls: spec.TLS(), l: ln, http: listen.NewServer(h, s.log)})
	return nil
}

// Addr returns the address of the listener configured by setting (for
// example "controlplane.listen" or "dataplane.agent.listen"), or nil.
func (s *Server) Addr(setting string) net.Addr {
	if srv := s.server(setting); srv != nil {
		return srv.l.Addr()
	}
	return s.dpAddrs[setting]
}

func (s *Server) server(name string) *server {
	for _, srv := range s.servers {
		if srv.name == name {
			return srv
		}
	}
	return nil
}

// Run serves until ctx ends, then shuts the servers down gracefully and
// returns nil. It returns an error when a server fails or the embedded
// database exits. Call Close afterwards.
func (s *Server) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	serveCtx := gctx
	if s.node != nil {
		serveCtx = s.runDataplane(gctx, g)
	}
	for _, srv := range s.servers {
		s.log.Info("listening", "listener", srv.name, "network", srv.l.Addr().Network(), "address", srv.l.Addr().String(), "tls", srv.tls)
		g.Go(func() error {
			err := listen.Serve(serveCtx, srv.http, srv.l, 0)
			if errors.Is(err, listen.ErrShutdownCut) {
				s.log.Warn("shutdown cut requests still running", "listener", srv.name)
				return nil
			}
			if err != nil {
				return fmt.Errorf("%s: %w", srv.name, err)
			}
			return nil
		})
	}
	if s.started != nil {
		g.Go(func() error {
			if s.node != nil {
				if err := s.node.WaitSynced(gctx); err != nil {
					return nil // stopped before the node registered
				}
			}
			s.started()
			return nil
		})
	}
	if s.db != nil && s.db.done() != nil {
		done := s.db.done()
		g.Go(func() error {
			select {
			case <-done:
				return errors.New("embedded PostgreSQL exited unexpectedly; see postgres.log next to database.data_dir")
			case <-gctx.Done():
				return nil
			}
		})
	}
	err := g.Wait()
	s.log.Info("stopped")
	return err
}

// Close releases what New acquired: listeners not yet served, the database
// pool and the embedded database.
func (s *Server) Close() error {
	for _, srv := range s.servers {
		srv.l.Close()
	}
	if s.node != nil {
		s.node.Close()
	}
	if s.db != nil {
		s.db.close()
	}
	return nil
}

// Controlplane returns the control-plane server (nil for other roles).
func (s *Server) Controlplane() *controlplane.Server { return s.cp }

// ConfigError is an invalid configuration: every problem, one per line.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return "invalid configuration: " + e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// Problems lists the configuration's problems, one per element.
func (e *ConfigError) Problems() []string { return strings.Split(e.Err.Error(), "\n") }
