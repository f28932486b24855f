package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Routing errors. They wrap the sentinels, so errors.Is(err, ErrNotFound)
// and errors.Is(err, ErrStale) hold, and their text is what the node sees.
var (
	// ErrNodeNotRegistered: no row for this node and boot. The node registers again.
	ErrNodeNotRegistered error = &kindError{"node not registered", ErrNotFound}
	// ErrOtherBoot: the node is registered with another boot ID; the write
	// comes from a previous (or a newer) process and is refused.
	ErrOtherBoot error = &kindError{"node is registered with another boot ID", ErrStale}
)

type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

// staleSweep bounds how many expired nodes one registration or heartbeat
// deletes on the side, so no call pays for a whole storm.
const staleSweep = 16

// Node is what a dataplane node registers.
type Node struct {
	NodeID     string
	BootID     string
	PrivateURL string
	Version    string
}

// Lease carries the times of a node write, all from the server's clock:
// now, when the lease (and every tunnel of the node) lapses unless renewed,
// and the cutoff before which expired nodes and tombstones are deleted.
type Lease struct {
	Now         time.Time
	ExpiresAt   time.Time
	SweepBefore time.Time
}

// RegisterNode creates or replaces n's row with a fresh lease, not
// draining. When the row held another boot ID, the tunnels of that previous
// boot are deleted in the same transaction. Expired nodes (lease before
// l.SweepBefore) are swept on the side, a bounded number per call.
func (s *Store) RegisterNode(ctx context.Context, n Node, l Lease) error {
	return s.InTx(ctx, func(tx pgx.Tx) error {
		// FOR UPDATE conflicts with the FOR KEY SHARE lock tunnel writes
		// take, so no tunnel of the previous boot slips in after the delete.
		var prev string
		err := tx.QueryRow(ctx, `SELECT boot_id FROM nodes WHERE node_id = $1 FOR UPDATE`, n.NodeID).Scan(&prev)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("lock node %s: %w", n.NodeID, err)
		}
		found := err == nil
		_, err = tx.Exec(ctx, `
INSERT INTO nodes AS n (node_id, boot_id, private_url, version, draining, registered_at, heartbeat_at, lease_expires_at)
VALUES ($1, $2, $3, $4, false, $5, $5, $6)
ON CONFLICT (node_id) DO UPDATE SET
    boot_id = excluded.boot_id,
    private_url = excluded.private_url,
    version = excluded.version,
    draining = false,
    registered_at = CASE WHEN n.boot_id = excluded.boot_id THEN n.registered_at ELSE excluded.registered_at END,
    heartbeat_at = excluded.heartbeat_at,
    lease_expires_at = excluded.lease_expires_at`,
			n.NodeID, n.BootID, n.PrivateURL, n.Version, l.Now, l.ExpiresAt)
		if err != nil {
			return fmt.Errorf("upsert node %s: %w", n.NodeID, err)
		}
		if !found {
			// Another registration may have inserted the row meanwhile;
			// take the lock now before clearing its tunnels.
			if _, err := tx.Exec(ctx, `SELECT 1 FROM nodes WHERE node_id = $1 FOR UPDATE`, n.NodeID); err != nil {
				return fmt.Errorf("lock node %s: %w", n.NodeID, err)
			}
		}
		if !found || prev != n.BootID {
			if _, err := tx.Exec(ctx, `DELETE FROM tunnels WHERE node_id = $1`, n.NodeID); err != nil {
				return fmt.Errorf("delete tunnels of previous boot of node %s: %w", n.NodeID, err)
			}
		}
		if _, err := tx.Exec(ctx, sweepStaleNodes, l.SweepBefore, n.NodeID, staleSweep); err != nil {
			return fmt.Errorf("sweep stale nodes: %w", err)
		}
		return nil
	})
}

// sweepStaleNodes deletes up to $3 nodes (other than $2) whose lease
// expired before $1; their tunnels go by cascade. SKIP LOCKED: concurrent
// sweepers never wait for each other.
const sweepStaleNodes = `
DELETE FROM nodes WHERE node_id IN (
    SELECT node_id FROM nodes
    WHERE lease_expires_at < $1 AND node_id <> $2
    ORDER BY lease_expires_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED)`

// Heartbeat renews the lease of node nodeID with boot bootID, which renews
// every tunnel it holds, without touching them. In the same statement it
// sweeps the node's tombstones older than l.SweepBefore and a bounded number
// of expired nodes. ErrNodeNotRegistered when there is no such node and boot.
func (s *Store) Heartbeat(ctx context.Context, nodeID, bootID string, l Lease) (time.Time, error) {
	var expires time.Time
	err := s.pool.QueryRow(ctx, `
WITH hb AS (
    UPDATE nodes SET heartbeat_at = $3, lease_expires_at = $4
    WHERE node_id = $1 AND boot_id = $2
    RETURNING lease_expires_at
), tombstones AS (
    DELETE FROM tunnels
    WHERE node_id = $1 AND NOT open AND updated_at < $5 AND EXISTS (SELECT FROM hb)
), stale AS (
    DELETE FROM nodes WHERE node_id IN (
        SELECT node_id FROM nodes
        WHERE lease_expires_at < $5 AND node_id <> $1
        ORDER BY lease_expires_at
        LIMIT $6
        FOR UPDATE SKIP LOCKED)
)
SELECT lease_expires_at FROM hb`,
		nodeID, bootID, l.Now, l.ExpiresAt, l.SweepBefore, staleSweep).Scan(&expires)
	if errors.Is(err, pgx.ErrNoRows) {
		return time.Time{}, ErrNodeNotRegistered
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("heartbeat node %s: %w", nodeID, err)
	}
	return expires, nil
}

// SetDraining marks the node draining. ErrNodeNotRegistered when there is
// no such node and boot.
func (s *Store) SetDraining(ctx context.Context, nodeID, bootID string) error {
	tag, err := s.pool.Exec(ctx, `UPDATE nodes SET draining = true WHERE node_id = $1 AND boot_id = $2`, nodeID, bootID)
	if err != nil {
		return fmt.Errorf("set node %s draining: %w", nodeID, err)
	}
	if tag.RowsAffected() == 0 {
		return ErrNodeNotRegistered
	}
	return nil
}

// DeregisterNode deletes the node and its tunnels. ErrNodeNotRegistered
// when there is no such node and boot.
func (s *Store) DeregisterNode(ctx context.Context, nodeID, bootID string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM nodes WHERE node_id = $1 AND boot_id = $2`, nodeID, bootID)
	if err != nil {
		return fmt.Errorf("deregister node %s: %w", nodeID, err)
	}
	if tag.RowsAffected() == 0 {
		return ErrNodeNotRegistered
	}
	return nil
}

// Tunnel is one tunnel on a node.
type Tunnel struct {
	TunnelID     string
	AgentID      int64
	Seq          int64
	AgentVersion string
	ConnectedAt  time.Time
}

// RegisterTunnels records tunnels as open on the node, in one statement.
// Each is applied only when its seq is above the stored one (a closed
// tunnel's tombstone keeps its seq, so a late register cannot resurrect
// it). It returns how many were applied. Tunnel IDs must be unique within
// ts. ErrNodeNotRegistered when the node is unknown, ErrOtherBoot when it
// runs another boot.
func (s *Store) RegisterTunnels(ctx context.Context, nodeID, bootID string, now time.Time, ts []Tunnel) (int, error) {
	ids := make([]string, len(ts))
	agents := make([]int64, len(ts))
	seqs := make([]int64, len(ts))
	versions := make([]string, len(ts))
	connected := make([]time.Time, len(ts))
	for i, t := range ts {
		ids[i], agents[i], seqs[i], versions[i], connected[i] = t.TunnelID, t.AgentID, t.Seq, t.AgentVersion, t.ConnectedAt
	}
	return s.writeTunnels(ctx, nodeID, bootID, `
WITH node AS (
    SELECT boot_id FROM nodes WHERE node_id = $1 FOR KEY SHARE
), up AS (
    INSERT INTO tunnels AS t (node_id, tunnel_id, agent_id, seq, open, agent_version, connected_at, updated_at)
    SELECT $1, i.tunnel_id, i.agent_id, i.seq, true, i.agent_version, i.connected_at, $3
    FROM unnest($4::text[], $5::bigint[], $6::bigint[], $7::text[], $8::timestamptz[])
        AS i(tunnel_id, agent_id, seq, agent_version, connected_at)
    WHERE (SELECT boot_id FROM node) = $2
    ON CONFLICT (node_id, tunnel_id) DO UPDATE SET
        agent_id = excluded.agent_id,
        seq = excluded.seq,
        open = true,
        agent_version = excluded.agent_version,
        connected_at = excluded.connected_at,
        updated_at = excluded.updated_at
    WHERE t.seq < excluded.seq
    RETURNING 1
)
SELECT (SELECT boot_id FROM node), (SELECT count(*) FROM up)`,
		nodeID, bootID, now, ids, agents, seqs, versions, connected)
}

// UnregisterTunnels records tunnels as closed (tombstones), in one
// statement. A close applies when its seq is above the stored one, or equal
// to it while the tunnel is open (a node may close a tunnel with the seq it
// opened it with). A close for an unknown tunnel leaves a tombstone, so the
// register it overtook cannot resurrect it. Errors as RegisterTunnels.
func (s *Store) UnregisterTunnels(ctx context.Context, nodeID, bootID string, now time.Time, ts []Tunnel) (int, error) {
	ids := make([]string, len(ts))
	seqs := make([]int64, len(ts))
	for i, t := range ts {
		ids[i], seqs[i] = t.TunnelID, t.Seq
	}
	return s.writeTunnels(ctx, nodeID, bootID, `
WITH node AS (
    SELECT boot_id FROM nodes WHERE node_id = $1 FOR KEY SHARE
), up AS (
    INSERT INTO tunnels AS t (node_id, tunnel_id, agent_id, seq, open, connected_at, updated_at)
    SELECT $1, i.tunnel_id, 0, i.seq, false, $3, $3
    FROM unnest($4::text[], $5::bigint[]) AS i(tunnel_id, seq)
    WHERE (SELECT boot_id FROM node) = $2
    ON CONFLICT (node_id, tunnel_id) DO UPDATE SET
        seq = excluded.seq,
        open = false,
        updated_at = excluded.updated_at
    WHERE t.seq < excluded.seq OR (t.seq = excluded.seq AND t.open)
    RETURNING 1
)
SELECT (SELECT boot_id FROM node), (SELECT count(*) FROM up)`,
		nodeID, bootID, now, ids, seqs)
}

func (s *Store) writeTunnels(ctx context.Context, nodeID, bootID, sql string, args ...any) (int, error) {
	var boot *string
	var applied int64
	if err := s.pool.QueryRow(ctx, sql, args...).Scan(&boot, &applied); err != nil {
		return 0, fmt.Errorf("write tunnels of node %s: %w", nodeID, err)
	}
	switch {
	case boot == nil:
		return 0, ErrNodeNotRegistered
	case *boot != bootID:
		return 0, ErrOtherBoot
	}
	return int(applied), nil
}

// AgentNode is a live node holding tunnels of an agent.
type AgentNode struct {
	NodeID     string
	PrivateURL string
	Draining   bool
	Tunnels    int32
}

// ResolveAgent lists the nodes whose lease holds at now and that hold open
// tunnels of agentID: non-draining first, then most tunnels first.
func (s *Store) ResolveAgent(ctx context.Context, agentID int64, now time.Time) ([]AgentNode, error) {
	rows, err := s.pool.Query(ctx, `
SELECT n.node_id, n.private_url, n.draining, count(*)::int4
FROM tunnels t
JOIN nodes n ON n.node_id = t.node_id
WHERE t.agent_id = $1 AND t.open AND n.lease_expires_at > $2
GROUP BY n.node_id
ORDER BY n.draining, count(*) DESC, n.node_id`, agentID, now)
	if err != nil {
		return nil, fmt.Errorf("resolve agent %d: %w", agentID, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AgentNode, error) {
		var n AgentNode
		err := r.Scan(&n.NodeID, &n.PrivateURL, &n.Draining, &n.Tunnels)
		return n, err
	})
	if err != nil {
		return nil, fmt.Errorf("resolve agent %d: %w", agentID, err)
	}
	return out, nil
}
