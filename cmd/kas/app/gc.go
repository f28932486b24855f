package app

import (
	"context"
	"fmt"

	"github.com/kas-project/kas/controlplane"
	"github.com/kas-project/kas/internal/config"
)

// gc runs one garbage collection of the routing tables: expired nodes past
// their grace period and their tunnels. Nothing depends on it (statements
// sweep as they go); operators run it from cron to keep tables small.
func (cli CLI) gc(ctx context.Context, c common) error {
	role := config.RoleControlplane
	if c.printConfig || c.verifyConfig {
		return cli.checkOnly(c, role)
	}
	cfg, err := cli.load(c, role)
	if err != nil {
		return err
	}
	if err := cfg.Validate(role); err != nil {
		return &ConfigError{err}
	}
	log, err := cli.logger(cfg, role)
	if err != nil {
		return err
	}
	db, err := openDatabase(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer db.close()
	if paths, err := cfg.EnsureEmbeddedKeys(); err != nil {
		return fmt.Errorf("embedded keys: %w", err)
	} else if len(paths) > 0 {
		if err := cfg.Validate(role); err != nil {
			return &ConfigError{err}
		}
	}
	cp, err := controlplane.New(controlplane.Options{
		Pool:                db.pool,
		APISecretKey:        cfg.APISecretKey,
		PrivateAPISecretKey: cfg.PrivateAPISecretKey,
		LeaseTTL:            cfg.Controlplane.LeaseTTL,
		Logger:              log,
	})
	if err != nil {
		return fmt.Errorf("control plane: %w", err)
	}
	nodes, tunnels, err := cp.GC(ctx)
	if err != nil {
		return fmt.Errorf("controlplane gc: %w", err)
	}
	fmt.Fprintf(cli.Stdout, "deleted %d expired %s and %d %s\n", nodes, plural(int(nodes), "node"), tunnels, plural(int(tunnels), "tunnel"))
	return nil
}
