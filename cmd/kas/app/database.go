package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/kas-project/kas/internal/config"
	"github.com/kas-project/kas/internal/pglocal"
)

// embeddedDatabase is the database name kas creates in its embedded server.
const embeddedDatabase = "kas"

// database is an open pool and, in embedded mode, the server kas runs.
type database struct {
	pool *pgxpool.Pool
	pg   *pglocal.Server // nil with database.url
}

// openDatabase connects to database.url, or starts the embedded server in
// database.data_dir (durable; it survives restarts) and creates the kas
// database in it on first use. It may move the default data directory (see
// embeddedDataDir), so it updates cfg.
func openDatabase(ctx context.Context, cfg *config.Config, log *slog.Logger) (*database, error) {
	db := &database{}
	c := &cfg.Database
	dsn := c.URL
	if c.Embedded() {
		dir, moved, err := embeddedDataDir(c.DataDir, c.DataDir == config.Default().Database.DataDir)
		if err != nil {
			return nil, err
		}
		if moved {
			log.Warn("the postgres user cannot reach the default data directory; using another", "default", c.DataDir, "data_dir", dir)
			c.DataDir = dir
		}
		pg, err := pglocal.Start(ctx, pglocal.Options{DataDir: c.DataDir, Durable: true})
		if err != nil {
			if errors.Is(err, pglocal.ErrNotInstalled) {
				return nil, err // its text is the whole story
			}
			return nil, fmt.Errorf("start embedded PostgreSQL in %s (database.data_dir): %w", c.DataDir, err)
		}
		db.pg = pg
		if err := createDatabase(ctx, pg.DSN("postgres"), embeddedDatabase); err != nil {
			db.close()
			return nil, err
		}
		dsn = pg.DSN(embeddedDatabase)
		abs, _ := filepath.Abs(c.DataDir)
		// The DSN has no secret: the server trusts local socket connections.
		log.Info("embedded PostgreSQL started", "data_dir", abs, "log", filepath.Join(filepath.Dir(abs), "postgres.log"), "dsn", dsn)
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		db.close()
		return nil, fmt.Errorf("open database (database.url): %w", err)
	}
	db.pool = pool
	if err := pool.Ping(ctx); err != nil {
		db.close()
		return nil, fmt.Errorf("connect to database (database.url %s): %w", config.RedactDatabaseURL(c.URL), err)
	}
	return db, nil
}

func createDatabase(ctx context.Context, adminDSN, name string) error {
	conn, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return fmt.Errorf("connect to embedded PostgreSQL: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("look for database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database: created meanwhile
		return nil
	}
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// close closes the pool and stops the embedded server.
func (db *database) close() {
	if db.pool != nil {
		db.pool.Close()
	}
	if db.pg != nil {
		db.pg.Stop()
	}
}

// done is closed when the embedded server exits; nil (never) otherwise.
func (db *database) done() <-chan struct{} {
	if db.pg == nil {
		return nil
	}
	return db.pg.Done()
}
