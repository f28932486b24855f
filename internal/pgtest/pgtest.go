// Package pgtest gives each test its own PostgreSQL database. One server per
// test binary is started from the system binaries (see pglocal); a template
// database, named after a hash of the migrations, is migrated once and each
// test clones it, then drops its clone in Cleanup.
package pgtest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/kas-project/kas/internal/pglocal"
	"github.com/kas-project/kas/migrations"
)

var (
	once    sync.Once
	server  *pglocal.Server
	dir     string
	initErr error
	counter atomic.Int64
)

func start() {
	// Servers of earlier test binaries die with them (Pdeathsig) but leave
	// their directories behind; sweep those first.
	pglocal.CleanStale("kas-pgtest-*")
	pglocal.CleanStale("kas-pg-*")
	dir, initErr = os.MkdirTemp("", "kas-pgtest-")
	if initErr != nil {
		return
	}
	if os.Geteuid() == 0 {
		os.Chmod(dir, 0o755)
	}
	server, initErr = pglocal.Start(context.Background(), pglocal.Options{DataDir: dir + "/data"})
	if initErr != nil {
		return
	}
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, server.DSN("postgres"))
	if err != nil {
		initErr = err
		return
	}
	defer pool.Close()
	tmpl := Template()
	if _, err := pool.Exec(ctx, "CREATE DATABASE "+tmpl); err != nil {
		initErr = err
		return
	}
	tp, err := pgxpool.New(ctx, server.DSN(tmpl))
	if err != nil {
		initErr = err
		return
	}
	defer tp.Close()
	if _, err := migrations.Up(ctx, tp); err != nil {
		initErr = fmt.Errorf("migrate template: %w", err)
	}
}

// Template is the name of the migrated template database.
func Template() string { return "kas_tmpl_" + migrations.Hash() }

// Server returns the shared server, starting it on first use. Tests that need
// a database other than a migrated clone (migration tests) use it directly.
func Server(t testing.TB) *pglocal.Server {
	t.Helper()
	once.Do(start)
	if initErr == pglocal.ErrNotInstalled {
		t.Skip(initErr)
	}
	if initErr != nil {
		t.Fatalf("start test postgres: %v", initErr)
	}
	return server
}

// EmptyDB creates an empty database (no migrations) and returns its DSN.
func EmptyDB(t testing.TB) string {
	return create(t, "")
}

// DSN returns the DSN of a fresh database cloned from the migrated template.
func DSN(t testing.TB) string {
	return create(t, Template())
}

func create(t testing.TB, template string) string {
	t.Helper()
	s := Server(t)
	name := fmt.Sprintf("test_%d_%d", os.Getpid(), counter.Add(1))
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	q := "CREATE DATABASE " + name
	if template != "" {
		q += " TEMPLATE " + template
	}
	if _, err := conn.Exec(ctx, q); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), s.DSN("postgres"))
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	return s.DSN(name)
}

// Pool returns a pool on a fresh migrated database, closed in Cleanup.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), DSN(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}
