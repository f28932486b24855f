package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Agent is a registered agent.
type Agent struct {
	ID        int64
	ProjectID int64
	Name      string
	CreatedAt time.Time
	// ConfigVersion is the latest configuration version, 0 when none.
	ConfigVersion int64
}

// AgentToken is an agent token without its secret.
type AgentToken struct {
	ID          int64
	AgentID     int64
	Name        string
	Description string
	CreatedAt   time.Time
	RevokedAt   *time.Time
	LastUsedAt  *time.Time
}

// AgentConfig is one version of an agent's configuration.
type AgentConfig struct {
	AgentID   int64
	Version   int64
	YAML      string
	CreatedAt time.Time
}

// ConnectedAgentNode is one node holding open tunnels of an agent.
type ConnectedAgentNode struct {
	AgentID        int64
	NodeID         string
	PrivateURL     string
	Tunnels        int32
	ConnectedSince time.Time
	AgentVersion   string
	Draining       bool
}

// Mint makes the secret of a new row once its ID is known and returns the
// hash to store. The caller keeps the plaintext.
type Mint func(id int64) (hash []byte)

const agentColumns = `a.id, a.project_id, a.name, a.created_at,
	COALESCE((SELECT max(c.version) FROM agent_configs c WHERE c.agent_id = a.id), 0)`

func scanAgent(row pgx.Row) (Agent, error) {
	var a Agent
	err := row.Scan(&a.ID, &a.ProjectID, &a.Name, &a.CreatedAt, &a.ConfigVersion)
	return a, err
}

// CreateAgent inserts an agent. A taken (project, name) is ErrAlreadyExists.
func (s *Store) CreateAgent(ctx context.Context, projectID int64, name string, now time.Time) (Agent, error) {
	a := Agent{ProjectID: projectID, Name: name}
	err := s.pool.QueryRow(ctx,
		`INSERT INTO agents (project_id, name, created_at) VALUES ($1, $2, $3) RETURNING id, created_at`,
		projectID, name, now).Scan(&a.ID, &a.CreatedAt)
	if IsUniqueViolation(err, "agents_project_name_key") {
		return Agent{}, fmt.Errorf("agent %q in project %d: %w", name, projectID, ErrAlreadyExists)
	}
	if err != nil {
		return Agent{}, fmt.Errorf("insert agent: %w", err)
	}
	return a, nil
}

// GetAgent returns agent id.
func (s *Store) GetAgent(ctx context.Context, id int64) (Agent, error) {
	a, err := scanAgent(s.pool.QueryRow(ctx, `SELECT `+agentColumns+` FROM agents a WHERE a.id = $1`, id))
	if err != nil {
		return Agent{}, notFoundOn(err, "agent %d", id)
	}
	return a, nil
}

// ListAgents returns up to limit agents with an ID above afterID, ordered by
// ID, in project projectID when it is not 0.
func (s *Store) ListAgents(ctx context.Context, projectID, afterID int64, limit int) ([]Agent, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+agentColumns+` FROM agents a
		WHERE a.id > $1 AND ($2 = 0 OR a.project_id = $2)
		ORDER BY a.id LIMIT $3`, afterID, projectID, limit)
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	agents, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Agent, error) { return scanAgent(r) })
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	return agents, nil
}

// DeleteAgent removes agent id with its tokens and configuration (by
// cascade), its tunnels and its explicit grants in credentials, in one
// transaction.
func (s *Store) DeleteAgent(ctx context.Context, id int64) error {
	return s.InTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM agents WHERE id = $1`, id)
		if err != nil {
			return fmt.Errorf("delete agent: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("agent %d: %w", id, ErrNotFound)
		}
		// Tunnels and credential grants refer to agents without a foreign key.
		for _, q := range []string{
			`DELETE FROM tunnels WHERE agent_id = $1`,
			`UPDATE access_tokens SET agent_ids = array_remove(agent_ids, $1) WHERE $1 = ANY(agent_ids)`,
			`UPDATE ci_job_tokens SET agent_ids = array_remove(agent_ids, $1) WHERE $1 = ANY(agent_ids)`,
			`UPDATE sessions SET agent_ids = array_remove(agent_ids, $1) WHERE $1 = ANY(agent_ids)`,
		} {
			if _, err := tx.Exec(ctx, q, id); err != nil {
				return fmt.Errorf("delete agent %d references: %w", id, err)
			}
		}
		return nil
	})
}

// lockAgents locks the given agents against deletion until the transaction
// ends and reports the first one that does not exist as ErrNotFound.
func lockAgents(ctx context.Context, tx pgx.Tx, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	rows, err := tx.Query(ctx, `SELECT id FROM agents WHERE id = ANY($1) FOR KEY SHARE`, ids)
	if err != nil {
		return fmt.Errorf("lock agents: %w", err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return fmt.Errorf("lock agents: %w", err)
	}
	have := make(map[int64]bool, len(found))
	for _, id := range found {
		have[id] = true
	}
	for _, id := range ids {
		if !have[id] {
			return fmt.Errorf("agent %d: %w", id, ErrNotFound)
		}
	}
	return nil
}

// nextID reserves the next identity value of table's id column, so a secret
// naming the row can be minted before the row is inserted.
func nextID(ctx context.Context, tx pgx.Tx, table string) (int64, error) {
	var id int64
	err := tx.QueryRow(ctx, `SELECT nextval(pg_get_serial_sequence($1, 'id'))`, table).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("reserve %s id: %w", table, err)
	}
	return id, nil
}

const agentTokenColumns = `id, agent_id, name, description, created_at, revoked_at, last_used_at`

func scanAgentToken(row pgx.Row) (AgentToken, error) {
	var t AgentToken
	err := row.Scan(&t.ID, &t.AgentID, &t.Name, &t.Description, &t.CreatedAt, &t.RevokedAt, &t.LastUsedAt)
	return t, err
}

// CreateAgentToken inserts a token for agentID whose secret mint makes from
// the new row's ID.
func (s *Store) CreateAgentToken(ctx context.Context, agentID int64, name, description string, now time.Time, mint Mint) (AgentToken, error) {
	var t AgentToken
	err := s.InTx(ctx, func(tx pgx.Tx) error {
		if err := lockAgents(ctx, tx, []int64{agentID}); err != nil {
			return err
		}
		id, err := nextID(ctx, tx, "agent_tokens")
		if err != nil {
			return err
		}
		t, err = scanAgentToken(tx.QueryRow(ctx, `INSERT INTO agent_tokens
			(id, agent_id, name, description, secret_hash, created_at)
			OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6)
			RETURNING `+agentTokenColumns, id, agentID, name, description, mint(id), now))
		if err != nil {
			return fmt.Errorf("insert agent token: %w", err)
		}
		return nil
	})
	return t, err
}

// ListAgentTokens returns agentID's tokens ordered by ID. An unknown agent is
// ErrNotFound.
func (s *Store) ListAgentTokens(ctx context.Context, agentID int64) ([]AgentToken, error) {
	if err := s.agentExists(ctx, agentID); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT `+agentTokenColumns+` FROM agent_tokens WHERE agent_id = $1 ORDER BY id`, agentID)
	if err != nil {
		return nil, fmt.Errorf("list agent tokens: %w", err)
	}
	tokens, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AgentToken, error) { return scanAgentToken(r) })
	if err != nil {
		return nil, fmt.Errorf("list agent tokens: %w", err)
	}
	return tokens, nil
}

// agentExists returns ErrNotFound when agent id does not exist.
func (s *Store) agentExists(ctx context.Context, id int64) error {
	var ok bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM agents WHERE id = $1)`, id).Scan(&ok); err != nil {
		return fmt.Errorf("look up agent: %w", err)
	}
	if !ok {
		return fmt.Errorf("agent %d: %w", id, ErrNotFound)
	}
	return nil
}

// RevokeAgentToken marks token id revoked at now, unless it already was, and
// returns it.
func (s *Store) RevokeAgentToken(ctx context.Context, id int64, now time.Time) (AgentToken, error) {
	t, err := scanAgentToken(s.pool.QueryRow(ctx, `UPDATE agent_tokens SET revoked_at = COALESCE(revoked_at, $2)
		WHERE id = $1 RETURNING `+agentTokenColumns, id, now))
	if err != nil {
		return AgentToken{}, notFoundOn(err, "agent token %d", id)
	}
	return t, nil
}

// PutAgentConfig stores yaml as agentID's next configuration version. When
// expected is not 0 and the current version differs, it returns ErrStale.
// Concurrent puts on one agent are serialised on the agent's row.
func (s *Store) PutAgentConfig(ctx context.Context, agentID int64, yaml string, expected int64, now time.Time) (AgentConfig, error) {
	c := AgentConfig{AgentID: agentID, YAML: yaml}
	err := s.InTx(ctx, func(tx pgx.Tx) error {
		// FOR NO KEY UPDATE serialises puts without blocking inserts that
		// only reference the agent (tokens take FOR KEY SHARE). The current
		// version is read by a later statement, whose snapshot (READ
		// COMMITTED) includes the put that held the lock before.
		if _, err := tx.Exec(ctx, `SELECT 1 FROM agents WHERE id = $1 FOR NO KEY UPDATE`, agentID); err != nil {
			return fmt.Errorf("lock agent: %w", err)
		}
		var exists bool
		var current int64
		err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM agents WHERE id = $1),
			COALESCE((SELECT max(version) FROM agent_configs WHERE agent_id = $1), 0)`, agentID).Scan(&exists, &current)
		if err != nil {
			return fmt.Errorf("read agent config version: %w", err)
		}
		if !exists {
			return fmt.Errorf("agent %d: %w", agentID, ErrNotFound)
		}
		if expected != 0 && expected != current {
			return fmt.Errorf("agent %d configuration is at version %d, not %d: %w", agentID, current, expected, ErrStale)
		}
		c.Version = current + 1
		err = tx.QueryRow(ctx, `INSERT INTO agent_configs (agent_id, version, yaml, created_at)
			VALUES ($1, $2, $3, $4) RETURNING created_at`, agentID, c.Version, yaml, now).Scan(&c.CreatedAt)
		if err != nil {
			return fmt.Errorf("insert agent config: %w", err)
		}
		return nil
	})
	if err != nil {
		return AgentConfig{}, err
	}
	return c, nil
}

// GetAgentConfig returns version of agentID's configuration, the latest when
// version is 0.
func (s *Store) GetAgentConfig(ctx context.Context, agentID, version int64) (AgentConfig, error) {
	c := AgentConfig{AgentID: agentID}
	var exists bool
	var v *int64
	var yaml *string
	var created *time.Time
	// One statement tells an unknown agent from a missing version.
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM agents WHERE id = $1), c.version, c.yaml, c.created_at
		FROM (SELECT 1) one
		LEFT JOIN LATERAL (SELECT version, yaml, created_at FROM agent_configs
			WHERE agent_id = $1 AND ($2 = 0 OR version = $2)
			ORDER BY version DESC LIMIT 1) c ON true`, agentID, version).Scan(&exists, &v, &yaml, &created)
	if err != nil {
		return AgentConfig{}, fmt.Errorf("get agent config: %w", err)
	}
	switch {
	case !exists:
		return AgentConfig{}, fmt.Errorf("agent %d: %w", agentID, ErrNotFound)
	case v == nil && version == 0:
		return AgentConfig{}, fmt.Errorf("configuration of agent %d: %w", agentID, ErrNotFound)
	case v == nil:
		return AgentConfig{}, fmt.Errorf("configuration version %d of agent %d: %w", version, agentID, ErrNotFound)
	}
	c.Version, c.YAML, c.CreatedAt = *v, *yaml, *created
	return c, nil
}

// ListConnectedAgentNodes returns, for the given agents, every node whose
// lease is still valid at now and that holds open tunnels of the agent,
// ordered by agent and node.
func (s *Store) ListConnectedAgentNodes(ctx context.Context, agentIDs []int64, now time.Time) ([]ConnectedAgentNode, error) {
	if len(agentIDs) == 0 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT t.agent_id, t.node_id, n.private_url, count(*)::int,
			min(t.connected_at), (array_agg(t.agent_version ORDER BY t.connected_at DESC))[1], n.draining
		FROM tunnels t JOIN nodes n ON n.node_id = t.node_id
		WHERE t.open AND t.agent_id = ANY($1) AND n.lease_expires_at > $2
		GROUP BY t.agent_id, t.node_id, n.private_url, n.draining
		ORDER BY t.agent_id, t.node_id`, agentIDs, now)
	if err != nil {
		return nil, fmt.Errorf("list connected agents: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ConnectedAgentNode, error) {
		var c ConnectedAgentNode
		err := r.Scan(&c.AgentID, &c.NodeID, &c.PrivateURL, &c.Tunnels, &c.ConnectedSince, &c.AgentVersion, &c.Draining)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("list connected agents: %w", err)
	}
	return out, nil
}
