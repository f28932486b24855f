package store

import (
	"context"
	"fmt"
	"time"
)

// CredentialRetention is how long expired or revoked proxy credentials
// (access tokens, CI job tokens, sessions) stay listed before GC deletes them.
const CredentialRetention = 7 * 24 * time.Hour

// GC deletes what nothing needs any more: nodes whose lease expired more
// than grace before now, with their tunnels; tombstones older than grace;
// and access tokens, CI job tokens and sessions that expired or were
// revoked more than CredentialRetention ago. It reports the nodes and
// tunnels (open or tombstones) deleted. Statements run anyway (node
// registration and heartbeats) do the routing part in small batches; GC is
// for `kas controlplane gc` and quiet systems.
func (s *Store) GC(ctx context.Context, now time.Time, grace time.Duration) (nodes, tunnels int64, err error) {
	cutoff := now.Add(-grace)
	// FOR UPDATE re-checks the lease against a concurrent heartbeat: a node
	// renewed meanwhile is kept.
	err = s.pool.QueryRow(ctx, `
WITH dead AS (
    SELECT node_id FROM nodes WHERE lease_expires_at < $1 FOR UPDATE
), t AS (
    DELETE FROM tunnels WHERE node_id IN (SELECT node_id FROM dead) RETURNING 1
), n AS (
    DELETE FROM nodes WHERE node_id IN (SELECT node_id FROM dead) RETURNING 1
)
SELECT (SELECT count(*) FROM n), (SELECT count(*) FROM t)`, cutoff).Scan(&nodes, &tunnels)
	if err != nil {
		return 0, 0, fmt.Errorf("delete expired nodes: %w", err)
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM tunnels WHERE NOT open AND updated_at < $1`, cutoff)
	if err != nil {
		return nodes, tunnels, fmt.Errorf("delete tombstones: %w", err)
	}
	tunnels += tag.RowsAffected()
	old := now.Add(-CredentialRetention)
	for _, table := range []string{"access_tokens", "ci_job_tokens", "sessions"} {
		if _, err := s.pool.Exec(ctx, `DELETE FROM `+table+` WHERE expires_at < $1 OR revoked_at < $1`, old); err != nil {
			return nodes, tunnels, fmt.Errorf("delete old %s: %w", table, err)
		}
	}
	return nodes, tunnels, nil
}
