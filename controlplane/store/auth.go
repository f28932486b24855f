package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// AgentTokenAuth is what authenticating an agent token needs.
type AgentTokenAuth struct {
	TokenID    int64
	AgentID    int64
	AgentName  string
	ProjectID  int64
	SecretHash []byte
	Revoked    bool
	LastUsedAt *time.Time
}

// AgentTokenForAuth loads token id with its agent. ErrNotFound when unknown.
func (s *Store) AgentTokenForAuth(ctx context.Context, id int64) (*AgentTokenAuth, error) {
	t := AgentTokenAuth{TokenID: id}
	err := s.pool.QueryRow(ctx, `
SELECT t.agent_id, a.name, a.project_id, t.secret_hash, t.revoked_at IS NOT NULL, t.last_used_at
FROM agent_tokens t JOIN agents a ON a.id = t.agent_id
WHERE t.id = $1`, id).Scan(&t.AgentID, &t.AgentName, &t.ProjectID, &t.SecretHash, &t.Revoked, &t.LastUsedAt)
	if err != nil {
		return nil, notFoundOn(err, "agent token %d", id)
	}
	return &t, nil
}

// TouchAgentToken sets last_used_at to now unless it is already after
// notBefore: at most one write per token per interval, so authentication
// stays read-mostly.
func (s *Store) TouchAgentToken(ctx context.Context, id int64, now, notBefore time.Time) error {
	_, err := s.pool.Exec(ctx, `
UPDATE agent_tokens SET last_used_at = $2
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $3)`, id, now, notBefore)
	if err != nil {
		return fmt.Errorf("touch agent token %d: %w", id, err)
	}
	return nil
}

// AgentConfigHead is an agent's project and latest configuration version
// (0 when it has none).
type AgentConfigHead struct {
	AgentID   int64
	ProjectID int64
	Version   int64
}

// AgentConfigHead returns agentID's project and latest configuration
// version. ErrNotFound when the agent is unknown.
func (s *Store) AgentConfigHead(ctx context.Context, agentID int64) (AgentConfigHead, error) {
	h := AgentConfigHead{AgentID: agentID}
	err := s.pool.QueryRow(ctx, `
SELECT a.project_id, coalesce((SELECT max(version) FROM agent_configs c WHERE c.agent_id = a.id), 0)
FROM agents a WHERE a.id = $1`, agentID).Scan(&h.ProjectID, &h.Version)
	if err != nil {
		return h, notFoundOn(err, "agent %d", agentID)
	}
	return h, nil
}

// LatestAgentConfig returns agentID's latest configuration version and YAML,
// 0 and "" when it has none. ErrNotFound when the agent is unknown.
func (s *Store) LatestAgentConfig(ctx context.Context, agentID int64) (version int64, yaml string, err error) {
	err = s.pool.QueryRow(ctx, `
SELECT coalesce(c.version, 0), coalesce(c.yaml, '')
FROM agents a
LEFT JOIN LATERAL (
    SELECT version, yaml FROM agent_configs WHERE agent_id = a.id ORDER BY version DESC LIMIT 1
) c ON true
WHERE a.id = $1`, agentID).Scan(&version, &yaml)
	if err != nil {
		return 0, "", notFoundOn(err, "agent %d", agentID)
	}
	return version, yaml, nil
}

// ChangedAgentConfigs returns the latest configuration of each known agent
// among ids whose version differs from the matching entry of versions,
// ordered by agent ID, at most limit of them; version 0 and no YAML stand
// for no configuration (CreatedAt is not set). Unknown agents are left out.
func (s *Store) ChangedAgentConfigs(ctx context.Context, ids, versions []int64, limit int) ([]AgentConfig, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `
SELECT a.id, coalesce(c.version, 0), coalesce(c.yaml, '')
FROM unnest($1::bigint[], $2::bigint[]) AS k(agent_id, known)
JOIN agents a ON a.id = k.agent_id
LEFT JOIN LATERAL (
    SELECT version, yaml FROM agent_configs WHERE agent_id = a.id ORDER BY version DESC LIMIT 1
) c ON true
WHERE coalesce(c.version, 0) <> k.known
ORDER BY a.id
LIMIT $3`, ids, versions, limit)
	if err != nil {
		return nil, fmt.Errorf("query changed agent configs: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AgentConfig, error) {
		var c AgentConfig
		return c, r.Scan(&c.AgentID, &c.Version, &c.YAML)
	})
	if err != nil {
		return nil, fmt.Errorf("query changed agent configs: %w", err)
	}
	return out, nil
}

// ProxyCredential is the part common to the credentials of the
// Kubernetes API proxy.
type ProxyCredential struct {
	ID         int64
	AgentIDs   []int64
	SecretHash []byte
	ExpiresAt  time.Time
	RevokedAt  *time.Time
}

// Valid reports whether the credential is neither expired nor revoked at now.
func (c *ProxyCredential) Valid(now time.Time) bool {
	return c.RevokedAt == nil && now.Before(c.ExpiresAt)
}

// AccessTokenAuth is an access_tokens row.
type AccessTokenAuth struct {
	ProxyCredential
	UserID    int64
	Username  string
	Groups    []string
	ExtraJSON []byte
}

// AccessTokenForAuth loads access token id. ErrNotFound when unknown.
func (s *Store) AccessTokenForAuth(ctx context.Context, id int64) (*AccessTokenAuth, error) {
	t := AccessTokenAuth{ProxyCredential: ProxyCredential{ID: id}}
	err := s.pool.QueryRow(ctx, `
SELECT user_id, username, user_groups, user_extra, agent_ids, secret_hash, expires_at, revoked_at
FROM access_tokens WHERE id = $1`, id).Scan(&t.UserID, &t.Username, &t.Groups, &t.ExtraJSON,
		&t.AgentIDs, &t.SecretHash, &t.ExpiresAt, &t.RevokedAt)
	if err != nil {
		return nil, notFoundOn(err, "access token %d", id)
	}
	return &t, nil
}

// CIJobTokenAuth is a ci_job_tokens row; JobJSON is protojson of
// kas.management.v1.CIJob.
type CIJobTokenAuth struct {
	ProxyCredential
	JobJSON []byte
}

// CIJobTokenForAuth loads CI job token id. ErrNotFound when unknown.
func (s *Store) CIJobTokenForAuth(ctx context.Context, id int64) (*CIJobTokenAuth, error) {
	t := CIJobTokenAuth{ProxyCredential: ProxyCredential{ID: id}}
	err := s.pool.QueryRow(ctx, `
SELECT job, agent_ids, secret_hash, expires_at, revoked_at FROM ci_job_tokens WHERE id = $1`, id).
		Scan(&t.JobJSON, &t.AgentIDs, &t.SecretHash, &t.ExpiresAt, &t.RevokedAt)
	if err != nil {
		return nil, notFoundOn(err, "ci job token %d", id)
	}
	return &t, nil
}

// SessionAuth is a sessions row; SessionJSON is protojson of
// kas.management.v1.CreateSessionRequest.
type SessionAuth struct {
	ProxyCredential
	SessionJSON []byte
	CSRFHash    []byte
}

// SessionForAuth loads session id. ErrNotFound when unknown.
func (s *Store) SessionForAuth(ctx context.Context, id int64) (*SessionAuth, error) {
	t := SessionAuth{ProxyCredential: ProxyCredential{ID: id}}
	err := s.pool.QueryRow(ctx, `
SELECT session, agent_ids, secret_hash, csrf_hash, expires_at, revoked_at FROM sessions WHERE id = $1`, id).
		Scan(&t.SessionJSON, &t.AgentIDs, &t.SecretHash, &t.CSRFHash, &t.ExpiresAt, &t.RevokedAt)
	if err != nil {
		return nil, notFoundOn(err, "session %d", id)
	}
	return &t, nil
}
