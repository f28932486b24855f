package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// NodeStatus is one row of the node_status view.
type NodeStatus struct {
	NodeID         string
	BootID         string
	PrivateURL     string
	Version        string
	Draining       bool
	RegisteredAt   time.Time
	HeartbeatAt    time.Time
	LeaseExpiresAt time.Time
	// State is live, stale or draining.
	State   string
	Tunnels int32
}

// AgentRoute is one row of the agent_routes view.
type AgentRoute struct {
	AgentID        int64
	NodeID         string
	PrivateURL     string
	Tunnels        int32
	ConnectedSince time.Time
	HeartbeatAge   time.Duration
	// State is live, stale or draining.
	State string
}

// ListNodeStatus returns every dataplane node, ordered by ID, as the
// node_status view shows it.
func (s *Store) ListNodeStatus(ctx context.Context) ([]NodeStatus, error) {
	rows, err := s.pool.Query(ctx, `SELECT s.node_id, s.boot_id, s.private_url, s.version, n.draining,
			s.registered_at, s.heartbeat_at, s.lease_expires_at, s.state, s.tunnels::int
		FROM node_status s JOIN nodes n ON n.node_id = s.node_id
		ORDER BY s.node_id`)
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (NodeStatus, error) {
		var n NodeStatus
		err := r.Scan(&n.NodeID, &n.BootID, &n.PrivateURL, &n.Version, &n.Draining,
			&n.RegisteredAt, &n.HeartbeatAt, &n.LeaseExpiresAt, &n.State, &n.Tunnels)
		return n, err
	})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	return out, nil
}

// ListAgentRoutes returns the agent_routes view ordered by agent and node,
// only agentID's routes when it is not 0.
func (s *Store) ListAgentRoutes(ctx context.Context, agentID int64) ([]AgentRoute, error) {
	rows, err := s.pool.Query(ctx, `SELECT agent_id, node_id, private_url, tunnels::int, connected_since,
			extract(epoch FROM heartbeat_age)::float8, state
		FROM agent_routes
		WHERE $1 = 0 OR agent_id = $1
		ORDER BY agent_id, node_id`, agentID)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AgentRoute, error) {
		var a AgentRoute
		var age float64
		err := r.Scan(&a.AgentID, &a.NodeID, &a.PrivateURL, &a.Tunnels, &a.ConnectedSince, &age, &a.State)
		a.HeartbeatAge = time.Duration(age * float64(time.Second))
		return a, err
	})
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	return out, nil
}
