package store

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// User is the GitLab user a credential acts for.
type User struct {
	ID       int64
	Username string
	Groups   []string
	Extra    map[string]string
}

// AccessToken is a pat: token without its secret.
type AccessToken struct {
	ID        int64
	Name      string
	User      User
	AgentIDs  []int64
	ExpiresAt time.Time
	CreatedAt time.Time
	RevokedAt *time.Time
}

// NewCIJobToken is what CreateCIJobToken stores.
type NewCIJobToken struct {
	// Job is the CI job as protojson (kas.management.v1.CIJob).
	Job       []byte
	AgentIDs  []int64
	ExpiresAt time.Time
}

// NewSession is what CreateSession stores.
type NewSession struct {
	// Session is the protojson of the CreateSessionRequest without
	// expires_at and agent_ids: user, project_paths, group_paths.
	Session   []byte
	AgentIDs  []int64
	ExpiresAt time.Time
	CSRFHash  []byte
}

const accessTokenColumns = `id, name, user_id, username, user_groups, user_extra, agent_ids, expires_at, created_at, revoked_at`

func scanAccessToken(row pgx.Row) (AccessToken, error) {
	var t AccessToken
	var extra []byte
	err := row.Scan(&t.ID, &t.Name, &t.User.ID, &t.User.Username, &t.User.Groups, &extra,
		&t.AgentIDs, &t.ExpiresAt, &t.CreatedAt, &t.RevokedAt)
	if err != nil {
		return t, err
	}
	if err := json.Unmarshal(extra, &t.User.Extra); err != nil {
		return t, fmt.Errorf("decode user_extra of access token %d: %w", t.ID, err)
	}
	return t, nil
}

// CreateAccessToken inserts t (ID and CreatedAt are set here) with the
// secret mint makes from the new row's ID. Every agent must exist
// (ErrNotFound otherwise) and stays locked against deletion until commit.
func (s *Store) CreateAccessToken(ctx context.Context, t AccessToken, now time.Time, mint Mint) (AccessToken, error) {
	groups := t.User.Groups
	if groups == nil {
		groups = []string{}
	}
	extra := t.User.Extra
	if extra == nil {
		extra = map[string]string{}
	}
	extraJSON, err := json.Marshal(extra)
	if err != nil {
		return AccessToken{}, fmt.Errorf("encode user extra: %w", err)
	}
	var out AccessToken
	err = s.InTx(ctx, func(tx pgx.Tx) error {
		if err := lockAgents(ctx, tx, t.AgentIDs); err != nil {
			return err
		}
		id, err := nextID(ctx, tx, "access_tokens")
		if err != nil {
			return err
		}
		out, err = scanAccessToken(tx.QueryRow(ctx, `INSERT INTO access_tokens
			(id, name, user_id, username, user_groups, user_extra, agent_ids, secret_hash, expires_at, created_at)
			OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
			RETURNING `+accessTokenColumns,
			id, t.Name, t.User.ID, t.User.Username, groups, extraJSON, t.AgentIDs, mint(id), t.ExpiresAt, now))
		if err != nil {
			return fmt.Errorf("insert access token: %w", err)
		}
		return nil
	})
	return out, err
}

// ListAccessTokens returns access tokens ordered by ID, of userID and
// reaching agentID when those are not 0.
func (s *Store) ListAccessTokens(ctx context.Context, userID, agentID int64) ([]AccessToken, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+accessTokenColumns+` FROM access_tokens
		WHERE ($1 = 0 OR user_id = $1) AND ($2 = 0 OR $2 = ANY(agent_ids))
		ORDER BY id`, userID, agentID)
	if err != nil {
		return nil, fmt.Errorf("list access tokens: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AccessToken, error) { return scanAccessToken(r) })
	if err != nil {
		return nil, fmt.Errorf("list access tokens: %w", err)
	}
	return out, nil
}

// RevokeAccessToken marks access token id revoked, unless it already was.
func (s *Store) RevokeAccessToken(ctx context.Context, id int64, now time.Time) error {
	return s.revoke(ctx, "access_tokens", "access token", id, now)
}

// CreateCIJobToken inserts t with the secret mint makes from the new row's
// ID and returns the ID. Every agent must exist (ErrNotFound otherwise).
func (s *Store) CreateCIJobToken(ctx context.Context, t NewCIJobToken, now time.Time, mint Mint) (int64, error) {
	agentIDs := t.AgentIDs
	if agentIDs == nil {
		agentIDs = []int64{}
	}
	var id int64
	err := s.InTx(ctx, func(tx pgx.Tx) error {
		if err := lockAgents(ctx, tx, agentIDs); err != nil {
			return err
		}
		var err error
		if id, err = nextID(ctx, tx, "ci_job_tokens"); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO ci_job_tokens (id, job, agent_ids, secret_hash, expires_at, created_at)
			OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6)`,
			id, t.Job, agentIDs, mint(id), t.ExpiresAt, now)
		if err != nil {
			return fmt.Errorf("insert ci job token: %w", err)
		}
		return nil
	})
	return id, err
}

// RevokeCIJobToken marks CI job token id revoked, unless it already was.
func (s *Store) RevokeCIJobToken(ctx context.Context, id int64, now time.Time) error {
	return s.revoke(ctx, "ci_job_tokens", "ci job token", id, now)
}

// CreateSession inserts sess with the session secret mint makes from the new
// row's ID and returns the ID. Every agent must exist (ErrNotFound otherwise).
func (s *Store) CreateSession(ctx context.Context, sess NewSession, now time.Time, mint Mint) (int64, error) {
	agentIDs := sess.AgentIDs
	if agentIDs == nil {
		agentIDs = []int64{}
	}
	var id int64
	err := s.InTx(ctx, func(tx pgx.Tx) error {
		if err := lockAgents(ctx, tx, agentIDs); err != nil {
			return err
		}
		var err error
		if id, err = nextID(ctx, tx, "sessions"); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO sessions (id, session, agent_ids, secret_hash, csrf_hash, expires_at, created_at)
			OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			id, sess.Session, agentIDs, mint(id), sess.CSRFHash, sess.ExpiresAt, now)
		if err != nil {
			return fmt.Errorf("insert session: %w", err)
		}
		return nil
	})
	return id, err
}

// RevokeSession marks session id revoked, unless it already was.
func (s *Store) RevokeSession(ctx context.Context, id int64, now time.Time) error {
	return s.revoke(ctx, "sessions", "session", id, now)
}

// revoke sets revoked_at of row id in table (a constant) unless already set.
func (s *Store) revoke(ctx context.Context, table, what string, id int64, now time.Time) error {
	tag, err := s.pool.Exec(ctx, `UPDATE `+table+` SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1`, id, now)
	if err != nil {
		return fmt.Errorf("revoke %s %d: %w", what, id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%s %d: %w", what, id, ErrNotFound)
	}
	return nil
}
