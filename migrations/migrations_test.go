package migrations_test

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/kas-project/kas/internal/pgtest"
	"github.com/kas-project/kas/migrations"
)

func TestUpFromEmptyConcurrently(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.EmptyDB(t)
	all, err := migrations.All()
	if err != nil {
		t.Fatal(err)
	}
	// Several replicas start at once: exactly one applies each migration.
	var wg sync.WaitGroup
	applied := make([]int, 4)
	errs := make([]error, 4)
	for i := range applied {
		wg.Go(func() {
			pool, err := pgxpool.New(ctx, dsn)
			if err != nil {
				errs[i] = err
				return
			}
			defer pool.Close()
			applied[i], errs[i] = migrations.Up(ctx, pool)
		})
	}
	wg.Wait()
	total := 0
	for i := range applied {
		if errs[i] != nil {
			t.Fatalf("replica %d: %v", i, errs[i])
		}
		total += applied[i]
	}
	if total != len(all) {
		t.Fatalf("applied %d migrations across replicas, want %d", total, len(all))
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	pending, err := migrations.Pending(ctx, pool)
	if err != nil || len(pending) != 0 {
		t.Fatalf("pending after Up = %v, %v; want none", pending, err)
	}
}

// TestUpWithData applies the first migration, writes data, then the rest,
// and checks the data survived and the views see it.
func TestUpWithData(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.EmptyDB(t)
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	all, _ := migrations.All()
	if _, err := pool.Exec(ctx, all[0].SQL); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
		INSERT INTO schema_migrations (version, name) VALUES (1, '`+all[0].Name+`');
		INSERT INTO agents (project_id, name) VALUES (7, 'prod');
		INSERT INTO nodes (node_id, boot_id, private_url, lease_expires_at) VALUES ('n1', 'b1', 'grpc://10.0.0.1:8155', now() + interval '1 minute');
		INSERT INTO tunnels (node_id, tunnel_id, agent_id, seq, open) SELECT 'n1', 't1', id, 1, true FROM agents`); err != nil {
		t.Fatal(err)
	}
	n, err := migrations.Up(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(all)-1 {
		t.Fatalf("applied %d, want %d", n, len(all)-1)
	}
	var name, state string
	var tunnels int
	if err := pool.QueryRow(ctx, "SELECT agent_name, state, tunnels FROM agent_routes").Scan(&name, &state, &tunnels); err != nil {
		t.Fatal(err)
	}
	if name != "prod" || state != "live" || tunnels != 1 {
		t.Fatalf("agent_routes = %q %q %d, want prod live 1", name, state, tunnels)
	}
}
