package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kas-project/kas/controlplane/agentcfg"
	"github.com/kas-project/kas/controlplane/store"
	dataplanev1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/internal/kascookie"
	"github.com/kas-project/kas/internal/secret"
)

// How long a dataplane node may cache an AuthorizeProxy answer (KAS's
// allowed_agent_cache_ttl and allowed_agent_cache_error_ttl).
const (
	AllowCacheTTL = 60 * time.Second
	DenyCacheTTL  = 10 * time.Second
)

// tokenTouchInterval: last_used_at is written at most this often per token.
const tokenTouchInterval = time.Minute

// Access types, as KAS names them in agent.gitlab.com/access_type.
const (
	accessTypePAT     = "personal_access_token"
	accessTypeSession = "session_cookie"
	accessTypeCIJob   = "ci_job_token"
)

// authService implements kas.dataplane.v1.AuthService: agent tokens,
// Kubernetes API proxy authorisation and agent configuration for nodes.
type authService struct {
	*Server
	configs configCache
}

var _ dataplanev1connect.AuthServiceHandler = (*authService)(nil)

func (s *authService) AuthenticateAgent(ctx context.Context, req *dataplanev1.AuthenticateAgentRequest) (*dataplanev1.AuthenticateAgentResponse, error) {
	const op = "AuthenticateAgent"
	// One message for every failure: a caller learns nothing about which
	// part of a token was wrong.
	unauthenticated := func() error {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("invalid agent token"))
	}
	id, random, ok := secret.Parse(secret.AgentToken, req.Token)
	if !ok {
		return nil, unauthenticated()
	}
	t, err := s.store.AgentTokenForAuth(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, unauthenticated()
	}
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	if !secret.Matches(random, t.SecretHash) || t.Revoked {
		return nil, unauthenticated()
	}
	now := s.now()
	if notBefore := now.Add(-tokenTouchInterval); t.LastUsedAt == nil || t.LastUsedAt.Before(notBefore) {
		// Bookkeeping only: a failure here does not make the token invalid.
		if err := s.store.TouchAgentToken(ctx, id, now, notBefore); err != nil {
			s.log.WarnContext(ctx, "record agent token use", "token_id", id, errAttr(err))
		}
	}
	return &dataplanev1.AuthenticateAgentResponse{
		AgentId:   t.AgentID,
		TokenId:   t.TokenID,
		AgentName: t.AgentName,
		ProjectId: t.ProjectID,
	}, nil
}

func (s *authService) GetAgentConfig(ctx context.Context, req *dataplanev1.GetAgentConfigRequest) (*dataplanev1.GetAgentConfigResponse, error) {
	const op = "GetAgentConfig"
	if req.AgentId <= 0 {
		return nil, s.toConnect(ctx, op, invalid("agent_id", "must be positive"))
	}
	version, yaml, err := s.store.LatestAgentConfig(ctx, req.AgentId)
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	return &dataplanev1.GetAgentConfigResponse{Version: version, Yaml: yaml}, nil
}

const (
	// maxKnownConfigs bounds the agents of one GetAgentConfigs call; nodes
	// ask in chunks.
	maxKnownConfigs = 10_000
	// maxConfigsPerResponse bounds the configurations one GetAgentConfigs
	// answer carries; the node asks again for the rest.
	maxConfigsPerResponse = 200
)

func (s *authService) GetAgentConfigs(ctx context.Context, req *dataplanev1.GetAgentConfigsRequest) (*dataplanev1.GetAgentConfigsResponse, error) {
	const op = "GetAgentConfigs"
	known := req.GetKnown()
	if len(known) > maxKnownConfigs {
		return nil, s.toConnect(ctx, op, invalid("known", "has %d agents, at most %d allowed", len(known), maxKnownConfigs))
	}
	ids := make([]int64, len(known))
	versions := make([]int64, len(known))
	for i, k := range known {
		if k.GetAgentId() <= 0 {
			return nil, s.toConnect(ctx, op, invalid(fmt.Sprintf("known[%d].agent_id", i), "must be a positive ID, got %d", k.GetAgentId()))
		}
		if k.GetVersion() < -1 {
			return nil, s.toConnect(ctx, op, invalid(fmt.Sprintf("known[%d].version", i), "must be -1 (none known) or more, got %d", k.GetVersion()))
		}
		ids[i], versions[i] = k.GetAgentId(), k.GetVersion()
	}
	changed, err := s.store.ChangedAgentConfigs(ctx, ids, versions, maxConfigsPerResponse+1)
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	resp := &dataplanev1.GetAgentConfigsResponse{}
	if len(changed) > maxConfigsPerResponse {
		changed, resp.Truncated = changed[:maxConfigsPerResponse], true
	}
	resp.Configs = make([]*dataplanev1.AgentConfig, len(changed))
	for i, c := range changed {
		resp.Configs[i] = &dataplanev1.AgentConfig{AgentId: c.AgentID, Version: c.Version, Yaml: c.YAML}
	}
	return resp, nil
}

// proxyCredential is an authenticated credential of the Kubernetes API proxy.
type proxyCredential struct {
	accessType string
	agentIDs   []int64 // explicit grants
	expiresAt  time.Time
	user       *managementv1.UserIdentity // nil for CI jobs without a user
	job        *managementv1.CIJob        // CI job tokens only
	session    *managementv1.CreateSessionRequest
	csrfHash   []byte // sessions only
}

func (c *proxyCredential) principal() string {
	if c.job != nil {
		return "ci_job:" + strconv.FormatInt(c.job.JobId, 10)
	}
	return "user:" + c.user.Username
}

// AuthorizeProxy decides, in this order: is the credential valid
// (else UNAUTHENTICATED); for a session cookie on an unsafe method, is the
// CSRF token right (else FORBIDDEN); does the agent exist (else the
// NotFound error); may the credential reach the agent (else FORBIDDEN).
// Allowed: explicitly granted agents, plus for CI jobs the agent's
// ci_access (and its own configuration project, as KAS) and for sessions
// its user_access. Access tokens reach their granted agents only.
func (s *authService) AuthorizeProxy(ctx context.Context, req *dataplanev1.AuthorizeProxyRequest) (*dataplanev1.AuthorizeProxyResponse, error) {
	const op = "AuthorizeProxy"
	if req.AgentId <= 0 {
		return nil, s.toConnect(ctx, op, invalid("agent_id", "must be positive"))
	}
	now := s.now()
	cred, reason, err := s.authenticate(ctx, req, now)
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	if cred == nil {
		return deny(dataplanev1.AuthorizeProxyResponse_DECISION_UNAUTHENTICATED, reason, ""), nil
	}
	if cred.accessType == accessTypeSession && req.UnsafeMethod &&
		(req.CsrfToken == "" || !secret.Matches(req.CsrfToken, cred.csrfHash)) {
		return deny(dataplanev1.AuthorizeProxyResponse_DECISION_FORBIDDEN, "missing or wrong X-Csrf-Token", cred.principal()), nil
	}
	head, err := s.store.AgentConfigHead(ctx, req.AgentId)
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	cfg, err := s.agentConfig(ctx, head)
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}

	explicit := slices.Contains(cred.agentIDs, req.AgentId)
	var as *dataplanev1.AccessAs
	switch cred.accessType {
	case accessTypePAT:
		if explicit {
			as = userAccessAs(cfg)
		}
	case accessTypeSession:
		if explicit || cfg.AllowsUser(cred.session.ProjectPaths, cred.session.GroupPaths) {
			as = userAccessAs(cfg)
		}
	case accessTypeCIJob:
		job := cred.job
		m, matched := cfg.MatchCIJob(agentcfg.CIJob{
			ProjectPath: job.ProjectPath,
			GroupPaths:  job.GroupPaths,
			Environment: job.Environment,
		})
		switch {
		case matched:
			as = ciAccessAs(m.AccessAs)
		case job.ProjectId == head.ProjectID:
			// KAS: CI jobs of the agent's configuration project may use it.
			as = &dataplanev1.AccessAs{As: &dataplanev1.AccessAs_Agent{Agent: &dataplanev1.AccessAsAgent{}}}
		case explicit:
			as = &dataplanev1.AccessAs{As: &dataplanev1.AccessAs_CiJob{CiJob: &dataplanev1.AccessAsCIJob{}}}
		}
	}
	if as == nil {
		reason := fmt.Sprintf("credential may not access agent %d", req.AgentId)
		if head.Version == 0 && cred.accessType != accessTypePAT {
			// The seed's "configuration file not found" case: say so.
			reason += " (the agent has no configuration, so no ci_access or user_access applies: push its config.yaml with PutAgentConfig)"
		}
		return deny(dataplanev1.AuthorizeProxyResponse_DECISION_FORBIDDEN, reason, cred.principal()), nil
	}
	ttl := min(AllowCacheTTL, cred.expiresAt.Sub(now))
	return &dataplanev1.AuthorizeProxyResponse{
		Decision:      dataplanev1.AuthorizeProxyResponse_DECISION_ALLOWED,
		Principal:     cred.principal(),
		AccessAs:      as,
		Impersonation: impersonation(as, cred, head),
		CacheTtl:      durationpb.New(ttl),
	}, nil
}

func deny(d dataplanev1.AuthorizeProxyResponse_Decision, reason, principal string) *dataplanev1.AuthorizeProxyResponse {
	return &dataplanev1.AuthorizeProxyResponse{
		Decision:  d,
		Reason:    reason,
		Principal: principal,
		CacheTtl:  durationpb.New(DenyCacheTTL),
	}
}

// authenticate finds the credential of req. A nil credential with a reason
// means unauthenticated; the reason is the same for unknown, malformed,
// expired and revoked credentials of a kind. err is for failures only.
func (s *authService) authenticate(ctx context.Context, req *dataplanev1.AuthorizeProxyRequest, now time.Time) (*proxyCredential, string, error) {
	unmarshal := protojson.UnmarshalOptions{DiscardUnknown: true}
	switch c := req.Credential.(type) {
	case *dataplanev1.AuthorizeProxyRequest_AccessToken:
		const reason = "invalid access token"
		id, random, ok := secret.Parse(secret.AccessToken, c.AccessToken)
		if !ok {
			return nil, reason, nil
		}
		t, err := s.store.AccessTokenForAuth(ctx, id)
		if err != nil {
			return nil, reason, ignoreNotFound(err)
		}
		if !usable(&t.ProxyCredential, random, now) {
			return nil, reason, nil
		}
		user := &managementv1.UserIdentity{Id: t.UserID, Username: t.Username, Groups: t.Groups}
		if err := json.Unmarshal(t.ExtraJSON, &user.Extra); err != nil {
			return nil, "", fmt.Errorf("decode user_extra of access token %d: %w", id, err)
		}
		return &proxyCredential{accessType: accessTypePAT, agentIDs: t.AgentIDs, expiresAt: t.ExpiresAt, user: user}, "", nil

	case *dataplanev1.AuthorizeProxyRequest_CiJobToken:
		const reason = "invalid CI job token"
		id, random, ok := secret.Parse(secret.CIJobToken, c.CiJobToken)
		if !ok {
			return nil, reason, nil
		}
		t, err := s.store.CIJobTokenForAuth(ctx, id)
		if err != nil {
			return nil, reason, ignoreNotFound(err)
		}
		if !usable(&t.ProxyCredential, random, now) {
			return nil, reason, nil
		}
		job := &managementv1.CIJob{}
		if err := unmarshal.Unmarshal(t.JobJSON, job); err != nil {
			return nil, "", fmt.Errorf("decode job of ci job token %d: %w", id, err)
		}
		return &proxyCredential{accessType: accessTypeCIJob, agentIDs: t.AgentIDs, expiresAt: t.ExpiresAt, user: job.User, job: job}, "", nil

	case *dataplanev1.AuthorizeProxyRequest_SessionCookie:
		const reason = "invalid session cookie"
		cookie := c.SessionCookie
		if strings.Contains(cookie, "%") { // KAS URL-unescapes the cookie value
			var err error
			if cookie, err = url.PathUnescape(cookie); err != nil {
				return nil, reason, nil
			}
		}
		sid, err := kascookie.Decrypt(s.opts.APISecretKey, cookie)
		for _, k := range s.opts.ExtraAPISecretKeys { // key rotation: cookies Rails sealed with another key
			if err == nil {
				break
			}
			sid, err = kascookie.Decrypt(k, cookie)
		}
		if err != nil {
			return nil, reason, nil
		}
		id, random, ok := secret.Parse(secret.Session, sid)
		if !ok {
			return nil, reason, nil
		}
		t, err := s.store.SessionForAuth(ctx, id)
		if err != nil {
			return nil, reason, ignoreNotFound(err)
		}
		if !usable(&t.ProxyCredential, random, now) {
			return nil, reason, nil
		}
		sess := &managementv1.CreateSessionRequest{}
		if err := unmarshal.Unmarshal(t.SessionJSON, sess); err != nil {
			return nil, "", fmt.Errorf("decode session %d: %w", id, err)
		}
		if sess.User == nil {
			return nil, "", fmt.Errorf("session %d has no user", id)
		}
		return &proxyCredential{accessType: accessTypeSession, agentIDs: t.AgentIDs, expiresAt: t.ExpiresAt,
			user: sess.User, session: sess, csrfHash: t.CSRFHash}, "", nil
	}
	return nil, "no credential", nil
}

// usable reports whether credential c matches random (in constant time)
// and is neither expired nor revoked at now.
func usable(c *store.ProxyCredential, random string, now time.Time) bool {
	return secret.Matches(random, c.SecretHash) && c.Valid(now)
}

// ignoreNotFound: an unknown credential is a refusal, not a failure.
func ignoreNotFound(err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}

// userAccessAs is how users (access tokens, sessions) reach an agent:
// user_access.access_as when configured, else as themselves.
func userAccessAs(cfg *agentcfg.Config) *dataplanev1.AccessAs {
	if cfg.UserAccessAsAgent() {
		return &dataplanev1.AccessAs{As: &dataplanev1.AccessAs_Agent{Agent: &dataplanev1.AccessAsAgent{}}}
	}
	return &dataplanev1.AccessAs{As: &dataplanev1.AccessAs_User{User: &dataplanev1.AccessAsUser{}}}
}

func ciAccessAs(a agentcfg.CIAccessAs) *dataplanev1.AccessAs {
	switch {
	case a.Impersonate != nil:
		im := &dataplanev1.AccessAsImpersonate{
			Username: a.Impersonate.Username,
			Groups:   a.Impersonate.Groups,
			Uid:      a.Impersonate.UID,
		}
		if len(a.Impersonate.Extra) > 0 {
			im.Extra = make(map[string]*dataplanev1.ExtraValues, len(a.Impersonate.Extra))
			for _, e := range a.Impersonate.Extra {
				im.Extra[e.Key] = &dataplanev1.ExtraValues{Values: e.Val}
			}
		}
		return &dataplanev1.AccessAs{As: &dataplanev1.AccessAs_Impersonate{Impersonate: im}}
	case a.CIJob != nil:
		return &dataplanev1.AccessAs{As: &dataplanev1.AccessAs_CiJob{CiJob: &dataplanev1.AccessAsCIJob{}}}
	}
	return &dataplanev1.AccessAs{As: &dataplanev1.AccessAs_Agent{Agent: &dataplanev1.AccessAsAgent{}}}
}

// Impersonate-Extra keys, as KAS sets them.
const extraPrefix = "agent.gitlab.com/"

// impersonation resolves access_as into the identity agentk applies, as KAS:
//   - agent: none;
//   - user: gitlab:user:<username>, groups gitlab:user and gitlab:group:<path>
//     for each of the user's groups (a group already starting with "gitlab:"
//     is kept as is), extras agent.gitlab.com/{id, username, access_type,
//     config_project_id} plus the user's own extras;
//   - ci_job: gitlab:ci_job:<job id>, groups gitlab:ci_job, gitlab:project:<id>,
//     gitlab:group:<path> per ancestor group and the environment groups,
//     extras agent.gitlab.com/{id, config_project_id, project_id,
//     ci_pipeline_id, ci_job_id, username, environment_slug, environment_tier};
//   - impersonate: as configured.
func impersonation(as *dataplanev1.AccessAs, cred *proxyCredential, head store.AgentConfigHead) *dataplanev1.Impersonation {
	extra := map[string]*dataplanev1.ExtraValues{}
	set := func(k, v string) {
		if v != "" {
			extra[extraPrefix+k] = &dataplanev1.ExtraValues{Values: []string{v}}
		}
	}
	agentID := strconv.FormatInt(head.AgentID, 10)
	configProject := strconv.FormatInt(head.ProjectID, 10)
	switch a := as.As.(type) {
	case *dataplanev1.AccessAs_User:
		u := cred.user
		groups := []string{"gitlab:user"}
		for _, g := range u.Groups {
			if !strings.HasPrefix(g, "gitlab:") {
				g = "gitlab:group:" + g
			}
			groups = append(groups, g)
		}
		for k, v := range u.Extra {
			extra[k] = &dataplanev1.ExtraValues{Values: []string{v}}
		}
		set("id", agentID)
		set("username", u.Username)
		set("access_type", cred.accessType)
		set("config_project_id", configProject)
		return &dataplanev1.Impersonation{Username: "gitlab:user:" + u.Username, Groups: groups, Extra: extra}

	case *dataplanev1.AccessAs_CiJob:
		job := cred.job
		project := strconv.FormatInt(job.ProjectId, 10)
		groups := []string{"gitlab:ci_job", "gitlab:project:" + project}
		for _, g := range job.GroupPaths {
			groups = append(groups, "gitlab:group:"+g)
		}
		if job.EnvironmentTier != "" {
			for _, g := range job.GroupPaths {
				groups = append(groups, "gitlab:group_env_tier:"+g+":"+job.EnvironmentTier)
			}
		}
		if job.Environment != "" {
			groups = append(groups, "gitlab:project_env:"+project+":"+job.Environment)
		}
		if job.EnvironmentTier != "" {
			groups = append(groups, "gitlab:project_env_tier:"+project+":"+job.EnvironmentTier)
		}
		set("id", agentID)
		set("config_project_id", configProject)
		set("project_id", project)
		set("ci_pipeline_id", job.PipelineId)
		set("ci_job_id", strconv.FormatInt(job.JobId, 10))
		if job.User != nil {
			set("username", job.User.Username)
		}
		set("environment_slug", job.Environment)
		set("environment_tier", job.EnvironmentTier)
		return &dataplanev1.Impersonation{Username: "gitlab:ci_job:" + strconv.FormatInt(job.JobId, 10), Groups: groups, Extra: extra}

	case *dataplanev1.AccessAs_Impersonate:
		im := a.Impersonate
		return &dataplanev1.Impersonation{Username: im.Username, Groups: im.Groups, Uid: im.Uid, Extra: im.Extra}
	}
	return &dataplanev1.Impersonation{} // agent: no impersonation
}

// agentConfig returns the agent's parsed configuration, nil when it has
// none (defaults: no ci_access, no user_access). A stored configuration
// that no longer parses counts as none, which grants nothing through it.
func (s *authService) agentConfig(ctx context.Context, head store.AgentConfigHead) (*agentcfg.Config, error) {
	if head.Version == 0 {
		return nil, nil
	}
	if c, ok := s.configs.get(head.AgentID, head.Version); ok {
		return c, nil
	}
	version, yaml, err := s.store.LatestAgentConfig(ctx, head.AgentID)
	if err != nil {
		return nil, err
	}
	c, err := agentcfg.Parse([]byte(yaml))
	if err != nil {
		s.log.WarnContext(ctx, "stored agent configuration does not parse; using defaults",
			"agent_id", head.AgentID, "version", version, errAttr(err))
		c = nil
	}
	s.configs.put(head.AgentID, version, c)
	return c, nil
}

// configCache memoises parsed configurations by (agent, version). Versions
// are immutable, so this is no state: any replica computes the same.
type configCache struct {
	mu sync.Mutex
	m  map[[2]int64]*agentcfg.Config
}

const configCacheSize = 1024

func (c *configCache) get(agentID, version int64) (*agentcfg.Config, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cfg, ok := c.m[[2]int64{agentID, version}]
	return cfg, ok
}

func (c *configCache) put(agentID, version int64, cfg *agentcfg.Config) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= configCacheSize {
		c.m = make(map[[2]int64]*agentcfg.Config)
	}
	c.m[[2]int64{agentID, version}] = cfg
}
