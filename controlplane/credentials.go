package controlplane

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kas-project/kas/controlplane/store"
	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/secret"
)

// credentialService implements kas.management.v1.CredentialService.
//
// Stored layouts, read by the dataplane's authorization (AuthService):
//   - access_tokens: user_id, username, user_groups (text[]), user_extra
//     (jsonb object of strings), agent_ids (the agents it may reach).
//   - ci_job_tokens.job: protojson of kas.management.v1.CIJob; agent_ids:
//     agents reachable in addition to those whose ci_access allows the job.
//   - sessions.session: protojson of kas.management.v1.CreateSessionRequest
//     with expires_at and agent_ids cleared (user, project_paths,
//     group_paths); agent_ids: explicit agents; csrf_hash: secret.Hash of
//     the whole CSRF token.
type credentialService struct {
	*Server
	managementv1connect.UnimplementedCredentialServiceHandler
}

// Credential limits.
const (
	maxAccessTokenLifetime = 365 * 24 * time.Hour
	maxCIJobTokenLifetime  = 7 * 24 * time.Hour
	maxSessionLifetime     = 30 * 24 * time.Hour

	maxUsernameLen   = 255
	maxPathLen       = 1024
	maxPaths         = 1000
	maxExtraEntries  = 100
	maxExtraKeyLen   = 256
	maxExtraValueLen = 4096
	maxShortTextLen  = 255
)

func (s *credentialService) CreateAccessToken(ctx context.Context, req *managementv1.CreateAccessTokenRequest) (*managementv1.CreateAccessTokenResponse, error) {
	const op = "CreateAccessToken"
	now := s.now()
	agentIDs, err := validAgentIDs("agent_ids", req.GetAgentIds(), true)
	if err == nil {
		err = firstOf(
			validUser("user", req.GetUser()),
			validText("name", req.GetName(), maxTokenNameLen, false),
		)
	}
	var expires time.Time
	if err == nil {
		expires, err = validExpiry("expires_at", req.GetExpiresAt(), now, maxAccessTokenLifetime)
	}
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	u := req.GetUser()
	var plain string
	t, err := s.store.CreateAccessToken(ctx, store.AccessToken{
		Name:      req.GetName(),
		User:      store.User{ID: u.GetId(), Username: u.GetUsername(), Groups: u.GetGroups(), Extra: u.GetExtra()},
		AgentIDs:  agentIDs,
		ExpiresAt: expires,
	}, now, func(id int64) []byte {
		var hash []byte
		plain, hash = secret.New(secret.AccessToken, id)
		return hash
	})
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	return &managementv1.CreateAccessTokenResponse{Token: accessTokenPB(t), Secret: plain}, nil
}

func (s *credentialService) ListAccessTokens(ctx context.Context, req *managementv1.ListAccessTokensRequest) (*managementv1.ListAccessTokensResponse, error) {
	const op = "ListAccessTokens"
	if req.GetUserId() < 0 {
		return nil, s.toConnect(ctx, op, invalid("user_id", "must not be negative"))
	}
	if req.GetAgentId() < 0 {
		return nil, s.toConnect(ctx, op, invalid("agent_id", "must not be negative"))
	}
	tokens, err := s.store.ListAccessTokens(ctx, req.GetUserId(), req.GetAgentId())
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	resp := &managementv1.ListAccessTokensResponse{}
	for _, t := range tokens {
		resp.Tokens = append(resp.Tokens, accessTokenPB(t))
	}
	return resp, nil
}

func (s *credentialService) RevokeAccessToken(ctx context.Context, req *managementv1.RevokeAccessTokenRequest) (*managementv1.RevokeAccessTokenResponse, error) {
	const op = "RevokeAccessToken"
	if err := validPositive("token_id", req.GetTokenId()); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	if err := s.store.RevokeAccessToken(ctx, req.GetTokenId(), s.now()); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	return &managementv1.RevokeAccessTokenResponse{}, nil
}

func (s *credentialService) CreateCIJobToken(ctx context.Context, req *managementv1.CreateCIJobTokenRequest) (*managementv1.CreateCIJobTokenResponse, error) {
	const op = "CreateCIJobToken"
	now := s.now()
	err := validCIJob("job", req.GetJob())
	var agentIDs []int64
	if err == nil {
		agentIDs, err = validAgentIDs("agent_ids", req.GetAgentIds(), false)
	}
	var expires time.Time
	if err == nil {
		expires, err = validExpiry("expires_at", req.GetExpiresAt(), now, maxCIJobTokenLifetime)
	}
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	job, err := protojson.Marshal(req.GetJob())
	if err != nil {
		return nil, s.toConnect(ctx, op, fmt.Errorf("encode ci job: %w", err))
	}
	var plain string
	id, err := s.store.CreateCIJobToken(ctx, store.NewCIJobToken{Job: job, AgentIDs: agentIDs, ExpiresAt: expires}, now,
		func(id int64) []byte {
			var hash []byte
			plain, hash = secret.New(secret.CIJobToken, id)
			return hash
		})
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	return &managementv1.CreateCIJobTokenResponse{Id: id, Secret: plain}, nil
}

func (s *credentialService) RevokeCIJobToken(ctx context.Context, req *managementv1.RevokeCIJobTokenRequest) (*managementv1.RevokeCIJobTokenResponse, error) {
	const op = "RevokeCIJobToken"
	if err := validPositive("id", req.GetId()); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	if err := s.store.RevokeCIJobToken(ctx, req.GetId(), s.now()); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	return &managementv1.RevokeCIJobTokenResponse{}, nil
}

func (s *credentialService) CreateSession(ctx context.Context, req *managementv1.CreateSessionRequest) (*managementv1.CreateSessionResponse, error) {
	const op = "CreateSession"
	now := s.now()
	err := firstOf(
		validUser("user", req.GetUser()),
		validPaths("project_paths", req.GetProjectPaths()),
		validPaths("group_paths", req.GetGroupPaths()),
	)
	var agentIDs []int64
	if err == nil {
		agentIDs, err = validAgentIDs("agent_ids", req.GetAgentIds(), false)
	}
	var expires time.Time
	if err == nil {
		expires, err = validExpiry("expires_at", req.GetExpiresAt(), now, maxSessionLifetime)
	}
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	stored := proto.CloneOf(req)
	stored.ExpiresAt = nil
	stored.AgentIds = nil
	sess, err := protojson.Marshal(stored)
	if err != nil {
		return nil, s.toConnect(ctx, op, fmt.Errorf("encode session: %w", err))
	}
	csrf, csrfHash := secret.Random(secret.CSRF)
	var sessionID string
	id, err := s.store.CreateSession(ctx, store.NewSession{Session: sess, AgentIDs: agentIDs, ExpiresAt: expires, CSRFHash: csrfHash}, now,
		func(id int64) []byte {
			var hash []byte
			sessionID, hash = secret.New(secret.Session, id)
			return hash
		})
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	return &managementv1.CreateSessionResponse{Id: id, SessionId: sessionID, CsrfToken: csrf}, nil
}

func (s *credentialService) RevokeSession(ctx context.Context, req *managementv1.RevokeSessionRequest) (*managementv1.RevokeSessionResponse, error) {
	const op = "RevokeSession"
	if err := validPositive("id", req.GetId()); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	if err := s.store.RevokeSession(ctx, req.GetId(), s.now()); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	return &managementv1.RevokeSessionResponse{}, nil
}

func accessTokenPB(t store.AccessToken) *managementv1.AccessToken {
	return &managementv1.AccessToken{
		Id: t.ID,
		User: &managementv1.UserIdentity{
			Id:       t.User.ID,
			Username: t.User.Username,
			Groups:   t.User.Groups,
			Extra:    t.User.Extra,
		},
		AgentIds:  t.AgentIDs,
		ExpiresAt: timestamppb.New(t.ExpiresAt),
		CreatedAt: timestamppb.New(t.CreatedAt),
		RevokedAt: optionalTimestamp(t.RevokedAt),
		Name:      t.Name,
	}
}

// validExpiry checks that ts is set, in the future and at most max ahead of now.
func validExpiry(field string, ts *timestamppb.Timestamp, now time.Time, max time.Duration) (time.Time, error) {
	if ts == nil {
		return time.Time{}, invalid(field, "is required")
	}
	if err := ts.CheckValid(); err != nil {
		return time.Time{}, invalid(field, "is not a valid timestamp")
	}
	t := ts.AsTime()
	if !t.After(now) {
		return time.Time{}, invalid(field, "must be in the future")
	}
	if t.Sub(now) > max {
		return time.Time{}, invalid(field, "must be at most %v ahead", max)
	}
	return t, nil
}

// validUser checks a user identity under field.
func validUser(field string, u *managementv1.UserIdentity) error {
	if u == nil {
		return invalid(field, "is required")
	}
	if err := firstOf(
		validPositive(field+".id", u.GetId()),
		validText(field+".username", u.GetUsername(), maxUsernameLen, true),
		validPaths(field+".groups", u.GetGroups()),
	); err != nil {
		return err
	}
	if len(u.GetExtra()) > maxExtraEntries {
		return invalid(field+".extra", "has %d entries, at most %d allowed", len(u.GetExtra()), maxExtraEntries)
	}
	for k, v := range u.GetExtra() {
		if err := validText(field+".extra", k, maxExtraKeyLen, true); err != nil {
			return err
		}
		if err := validText(fmt.Sprintf("%s.extra[%q]", field, k), v, maxExtraValueLen, false); err != nil {
			return err
		}
	}
	return nil
}

// validPaths checks a list of project or group paths.
func validPaths(field string, paths []string) error {
	if len(paths) > maxPaths {
		return invalid(field, "has %d entries, at most %d allowed", len(paths), maxPaths)
	}
	for i, p := range paths {
		if err := validText(fmt.Sprintf("%s[%d]", field, i), p, maxPathLen, true); err != nil {
			return err
		}
	}
	return nil
}

// validCIJob checks a CI job under field.
func validCIJob(field string, j *managementv1.CIJob) error {
	if j == nil {
		return invalid(field, "is required")
	}
	err := firstOf(
		validPositive(field+".job_id", j.GetJobId()),
		validPositive(field+".project_id", j.GetProjectId()),
		validText(field+".project_path", j.GetProjectPath(), maxPathLen, true),
		validPaths(field+".group_paths", j.GetGroupPaths()),
		validText(field+".environment", j.GetEnvironment(), maxShortTextLen, false),
		validText(field+".environment_tier", j.GetEnvironmentTier(), maxShortTextLen, false),
		validText(field+".pipeline_id", j.GetPipelineId(), maxShortTextLen, false),
	)
	if err == nil && j.User != nil {
		err = validUser(field+".user", j.GetUser())
	}
	return err
}
