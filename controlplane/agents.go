package controlplane

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kas-project/kas/controlplane/agentcfg"
	"github.com/kas-project/kas/controlplane/store"
	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/secret"
)

// agentService implements kas.management.v1.AgentService.
type agentService struct {
	*Server
	managementv1connect.UnimplementedAgentServiceHandler
}

// Limits of the management API.
const (
	maxAgentNameLen    = 63
	maxTokenNameLen    = 255
	maxDescriptionLen  = 1024
	defaultPageSize    = 100
	maxPageSize        = 1000
	maxAgentIDsPerCall = 1000
)

var agentNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func (s *agentService) CreateAgent(ctx context.Context, req *managementv1.CreateAgentRequest) (*managementv1.CreateAgentResponse, error) {
	const op = "CreateAgent"
	if err := firstOf(validPositive("project_id", req.GetProjectId()), validAgentName(req.GetName())); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	a, err := s.store.CreateAgent(ctx, req.GetProjectId(), req.GetName(), s.now())
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	return &managementv1.CreateAgentResponse{Agent: agentPB(a)}, nil
}

func (s *agentService) GetAgent(ctx context.Context, req *managementv1.GetAgentRequest) (*managementv1.GetAgentResponse, error) {
	const op = "GetAgent"
	if err := validPositive("agent_id", req.GetAgentId()); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	a, err := s.store.GetAgent(ctx, req.GetAgentId())
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	return &managementv1.GetAgentResponse{Agent: agentPB(a)}, nil
}

func (s *agentService) ListAgents(ctx context.Context, req *managementv1.ListAgentsRequest) (*managementv1.ListAgentsResponse, error) {
	const op = "ListAgents"
	if req.GetProjectId() < 0 {
		return nil, s.toConnect(ctx, op, invalid("project_id", "must not be negative"))
	}
	size := int(req.GetPageSize())
	switch {
	case size == 0:
		size = defaultPageSize
	case size < 0 || size > maxPageSize:
		return nil, s.toConnect(ctx, op, invalid("page_size", "must be between 1 and %d (0 means %d)", maxPageSize, defaultPageSize))
	}
	var after int64
	if req.GetPageToken() != "" {
		var err error
		if after, err = decodePageToken(req.GetPageToken(), req.GetProjectId()); err != nil {
			return nil, s.toConnect(ctx, op, err)
		}
	}
	// One extra row tells whether another page follows.
	agents, err := s.store.ListAgents(ctx, req.GetProjectId(), after, size+1)
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	resp := &managementv1.ListAgentsResponse{}
	if len(agents) > size {
		agents = agents[:size]
		resp.NextPageToken = encodePageToken(req.GetProjectId(), agents[size-1].ID)
	}
	for _, a := range agents {
		resp.Agents = append(resp.Agents, agentPB(a))
	}
	return resp, nil
}

func (s *agentService) DeleteAgent(ctx context.Context, req *managementv1.DeleteAgentRequest) (*managementv1.DeleteAgentResponse, error) {
	const op = "DeleteAgent"
	if err := validPositive("agent_id", req.GetAgentId()); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	if err := s.store.DeleteAgent(ctx, req.GetAgentId()); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	return &managementv1.DeleteAgentResponse{}, nil
}

func (s *agentService) CreateAgentToken(ctx context.Context, req *managementv1.CreateAgentTokenRequest) (*managementv1.CreateAgentTokenResponse, error) {
	const op = "CreateAgentToken"
	err := firstOf(
		validPositive("agent_id", req.GetAgentId()),
		validText("name", req.GetName(), maxTokenNameLen, true),
		validText("description", req.GetDescription(), maxDescriptionLen, false),
	)
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	var plain string
	t, err := s.store.CreateAgentToken(ctx, req.GetAgentId(), req.GetName(), req.GetDescription(), s.now(),
		func(id int64) []byte {
			var hash []byte
			plain, hash = secret.New(secret.AgentToken, id)
			return hash
		})
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	return &managementv1.CreateAgentTokenResponse{Token: agentTokenPB(t), Secret: plain}, nil
}

func (s *agentService) ListAgentTokens(ctx context.Context, req *managementv1.ListAgentTokensRequest) (*managementv1.ListAgentTokensResponse, error) {
	const op = "ListAgentTokens"
	if err := validPositive("agent_id", req.GetAgentId()); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	tokens, err := s.store.ListAgentTokens(ctx, req.GetAgentId())
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	resp := &managementv1.ListAgentTokensResponse{}
	for _, t := range tokens {
		resp.Tokens = append(resp.Tokens, agentTokenPB(t))
	}
	return resp, nil
}

func (s *agentService) RevokeAgentToken(ctx context.Context, req *managementv1.RevokeAgentTokenRequest) (*managementv1.RevokeAgentTokenResponse, error) {
	const op = "RevokeAgentToken"
	if err := validPositive("token_id", req.GetTokenId()); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	t, err := s.store.RevokeAgentToken(ctx, req.GetTokenId(), s.now())
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	return &managementv1.RevokeAgentTokenResponse{Token: agentTokenPB(t)}, nil
}

func (s *agentService) PutAgentConfig(ctx context.Context, req *managementv1.PutAgentConfigRequest) (*managementv1.PutAgentConfigResponse, error) {
	const op = "PutAgentConfig"
	if err := validPositive("agent_id", req.GetAgentId()); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	yaml := req.GetYaml()
	if len(yaml) > agentcfg.MaxSize {
		return nil, s.toConnect(ctx, op, invalid("yaml", "is %d bytes, at most %d allowed", len(yaml), agentcfg.MaxSize))
	}
	if !utf8.ValidString(yaml) {
		return nil, s.toConnect(ctx, op, invalid("yaml", "must be valid UTF-8"))
	}
	if req.GetExpectedVersion() < 0 {
		return nil, s.toConnect(ctx, op, invalid("expected_version", "must not be negative"))
	}
	if _, err := agentcfg.Parse([]byte(yaml)); err != nil {
		var ve *agentcfg.ValidationError
		if !errors.As(err, &ve) {
			err = invalid("yaml", "%v", err)
		}
		return nil, s.toConnect(ctx, op, err)
	}
	c, err := s.store.PutAgentConfig(ctx, req.GetAgentId(), yaml, req.GetExpectedVersion(), s.now())
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	return &managementv1.PutAgentConfigResponse{Config: agentConfigPB(c)}, nil
}

func (s *agentService) GetAgentConfig(ctx context.Context, req *managementv1.GetAgentConfigRequest) (*managementv1.GetAgentConfigResponse, error) {
	const op = "GetAgentConfig"
	if err := validPositive("agent_id", req.GetAgentId()); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	if req.GetVersion() < 0 {
		return nil, s.toConnect(ctx, op, invalid("version", "must not be negative"))
	}
	c, err := s.store.GetAgentConfig(ctx, req.GetAgentId(), req.GetVersion())
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	return &managementv1.GetAgentConfigResponse{Config: agentConfigPB(c)}, nil
}

func (s *agentService) ListConnectedAgents(ctx context.Context, req *managementv1.ListConnectedAgentsRequest) (*managementv1.ListConnectedAgentsResponse, error) {
	const op = "ListConnectedAgents"
	ids, err := validAgentIDs("agent_ids", req.GetAgentIds(), false)
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	nodes, err := s.store.ListConnectedAgentNodes(ctx, ids, s.now())
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	resp := &managementv1.ListConnectedAgentsResponse{}
	var cur *managementv1.ConnectedAgent
	for _, n := range nodes { // ordered by agent
		if cur == nil || cur.AgentId != n.AgentID {
			cur = &managementv1.ConnectedAgent{AgentId: n.AgentID}
			resp.Agents = append(resp.Agents, cur)
		}
		cur.Nodes = append(cur.Nodes, &managementv1.ConnectedNode{
			NodeId:         n.NodeID,
			PrivateUrl:     n.PrivateURL,
			Tunnels:        n.Tunnels,
			ConnectedSince: timestamppb.New(n.ConnectedSince),
			AgentVersion:   n.AgentVersion,
			Draining:       n.Draining,
		})
	}
	return resp, nil
}

// Page tokens: base64url of a version byte, the project filter and the last
// agent ID of the previous page. The filter is kept so that a token cannot
// be replayed with another filter.
const pageTokenV1 = 1

func encodePageToken(projectID, lastID int64) string {
	b := make([]byte, 0, 17)
	b = append(b, pageTokenV1)
	b = binary.BigEndian.AppendUint64(b, uint64(projectID))
	b = binary.BigEndian.AppendUint64(b, uint64(lastID))
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodePageToken(tok string, projectID int64) (lastID int64, err error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) != 17 || b[0] != pageTokenV1 {
		return 0, invalid("page_token", "is not a token from a previous response")
	}
	if int64(binary.BigEndian.Uint64(b[1:9])) != projectID {
		return 0, invalid("page_token", "was issued for another project_id filter")
	}
	lastID = int64(binary.BigEndian.Uint64(b[9:]))
	if lastID <= 0 {
		return 0, invalid("page_token", "is not a token from a previous response")
	}
	return lastID, nil
}

func agentPB(a store.Agent) *managementv1.Agent {
	return &managementv1.Agent{
		Id:            a.ID,
		ProjectId:     a.ProjectID,
		Name:          a.Name,
		CreatedAt:     timestamppb.New(a.CreatedAt),
		ConfigVersion: a.ConfigVersion,
	}
}

func agentTokenPB(t store.AgentToken) *managementv1.AgentToken {
	return &managementv1.AgentToken{
		Id:          t.ID,
		AgentId:     t.AgentID,
		Name:        t.Name,
		Description: t.Description,
		CreatedAt:   timestamppb.New(t.CreatedAt),
		RevokedAt:   optionalTimestamp(t.RevokedAt),
		LastUsedAt:  optionalTimestamp(t.LastUsedAt),
	}
}

func agentConfigPB(c store.AgentConfig) *managementv1.AgentConfig {
	return &managementv1.AgentConfig{
		AgentId:   c.AgentID,
		Version:   c.Version,
		Yaml:      c.YAML,
		CreatedAt: timestamppb.New(c.CreatedAt),
	}
}

func optionalTimestamp(t *time.Time) *timestamppb.Timestamp {
	if t == nil {
		return nil
	}
	return timestamppb.New(*t)
}

// Request validation shared by the management services. Each check returns
// nil or an invalid(field, ...) error.

// firstOf returns the first non-nil error: a response names one field.
func firstOf(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func validPositive(field string, v int64) error {
	if v <= 0 {
		return invalid(field, "must be a positive ID, got %d", v)
	}
	return nil
}

// validText checks that s is valid UTF-8 of at most max characters, and not
// empty when required.
func validText(field, s string, max int, required bool) error {
	switch {
	case !utf8.ValidString(s):
		return invalid(field, "must be valid UTF-8")
	case strings.ContainsRune(s, 0):
		return invalid(field, "must not contain NUL characters")
	case required && s == "":
		return invalid(field, "is required")
	case utf8.RuneCountInString(s) > max:
		return invalid(field, "is %d characters, at most %d allowed", utf8.RuneCountInString(s), max)
	}
	return nil
}

func validAgentName(name string) error {
	if err := validText("name", name, maxAgentNameLen, true); err != nil {
		return err
	}
	if !agentNameRE.MatchString(name) {
		return invalid("name", "%q is not a DNS label: use lower case letters, digits and '-', starting and ending with a letter or digit", name)
	}
	return nil
}

// validAgentIDs checks a list of agent IDs (at least one when required) and
// returns it without duplicates, in order.
func validAgentIDs(field string, ids []int64, required bool) ([]int64, error) {
	if required && len(ids) == 0 {
		return nil, invalid(field, "at least one agent is required")
	}
	if len(ids) > maxAgentIDsPerCall {
		return nil, invalid(field, "has %d agents, at most %d allowed", len(ids), maxAgentIDsPerCall)
	}
	seen := make(map[int64]bool, len(ids))
	out := make([]int64, 0, len(ids))
	for i, id := range ids {
		if id <= 0 {
			return nil, invalid(fmt.Sprintf("%s[%d]", field, i), "must be a positive ID, got %d", id)
		}
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out, nil
}
