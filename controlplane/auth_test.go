package controlplane_test

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	dataplanev1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/internal/cptest"
	"github.com/kas-project/kas/internal/kascookie"
	"github.com/kas-project/kas/internal/secret"
)

func TestAuthenticateAgent(t *testing.T) {
	env, clk := routingEnv(t)
	ctx := t.Context()
	a := createAgent(t, env, 77, "prod")
	tok := must[*managementv1.CreateAgentTokenResponse](t)(env.Agents.CreateAgentToken(ctx, &managementv1.CreateAgentTokenRequest{AgentId: a.Id, Name: "main"}))

	lastUsed := func() *time.Time {
		var ts *time.Time
		if err := pool(env).QueryRow(ctx, `SELECT last_used_at FROM agent_tokens WHERE id = $1`, tok.Token.Id).Scan(&ts); err != nil {
			t.Fatal(err)
		}
		return ts
	}
	auth := func(token string) (*dataplanev1.AuthenticateAgentResponse, error) {
		return env.Auth.AuthenticateAgent(ctx, &dataplanev1.AuthenticateAgentRequest{Token: token})
	}

	got, err := auth(tok.Secret)
	if err != nil {
		t.Fatal(err)
	}
	want := &dataplanev1.AuthenticateAgentResponse{AgentId: a.Id, TokenId: tok.Token.Id, AgentName: "prod", ProjectId: 77}
	if !proto.Equal(got, want) {
		t.Fatalf("AuthenticateAgent = %v, want %v", got, want)
	}
	first := clk.Now()
	if lu := lastUsed(); lu == nil || !lu.Equal(first) {
		t.Fatalf("last_used_at = %v, want %v", lu, first)
	}
	// Within a minute: no write.
	clk.Add(30 * time.Second)
	if _, err := auth(tok.Secret); err != nil {
		t.Fatal(err)
	}
	if lu := lastUsed(); !lu.Equal(first) {
		t.Fatalf("last_used_at moved to %v within a minute", lu)
	}
	clk.Add(31 * time.Second)
	if _, err := auth(tok.Secret); err != nil {
		t.Fatal(err)
	}
	if lu := lastUsed(); !lu.Equal(clk.Now()) {
		t.Fatalf("last_used_at = %v, want %v", lu, clk.Now())
	}

	id, random := randomPart(t, secret.AgentToken, tok.Secret)
	flipped := []byte(random)
	flipped[0] ^= 1
	if flipped[0] == '_' || flipped[0] == '-' { // stay in the alphabet
		flipped[0] = 'A'
	}
	bad := map[string]string{
		"empty":        "",
		"garbage":      "not-a-token",
		"wrong prefix": secret.AccessToken + strings.TrimPrefix(tok.Secret, secret.AgentToken),
		"wrong secret": secret.AgentToken + "_" + strconv.FormatInt(id, 10) + "_" + string(flipped),
		"unknown id":   secret.AgentToken + "_" + strconv.FormatInt(id+1000, 10) + "_" + random,
	}
	for name, token := range bad {
		_, err := auth(token)
		if connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.HasSuffix(err.Error(), ": invalid agent token") {
			t.Errorf("%s: got %v, want the uniform Unauthenticated \"invalid agent token\"", name, err)
		}
	}
	if _, err := env.Agents.RevokeAgentToken(ctx, &managementv1.RevokeAgentTokenRequest{TokenId: tok.Token.Id}); err != nil {
		t.Fatal(err)
	}
	_, err = auth(tok.Secret)
	wantCode(t, err, connect.CodeUnauthenticated, "invalid agent token")
}

func TestDataplaneGetAgentConfig(t *testing.T) {
	env, _ := routingEnv(t)
	ctx := t.Context()
	a := createAgent(t, env, 1, "cfg")
	get := func(id int64) (*dataplanev1.GetAgentConfigResponse, error) {
		return env.Auth.GetAgentConfig(ctx, &dataplanev1.GetAgentConfigRequest{AgentId: id})
	}
	got, err := get(a.Id)
	if err != nil || got.Version != 0 || got.Yaml != "" {
		t.Fatalf("no configuration: %v, %v; want version 0, empty", got, err)
	}
	for _, y := range []string{"observability: {logging: {level: debug}}\n", "user_access: {access_as: {agent: {}}}\n"} {
		if _, err := env.Agents.PutAgentConfig(ctx, &managementv1.PutAgentConfigRequest{AgentId: a.Id, Yaml: y}); err != nil {
			t.Fatal(err)
		}
	}
	got, err = get(a.Id)
	if err != nil || got.Version != 2 || got.Yaml != "user_access: {access_as: {agent: {}}}\n" {
		t.Fatalf("GetAgentConfig = %v, %v; want version 2", got, err)
	}
	_, err = get(a.Id + 1000)
	wantCode(t, err, connect.CodeNotFound)
	_, err = get(0)
	wantCode(t, err, connect.CodeInvalidArgument, "agent_id")
}

// TestDataplaneGetAgentConfigs: one call answers the configuration of
// every known agent whose version differs from the node's, version 0 for
// none, leaves unknown agents out and pages long answers.
func TestDataplaneGetAgentConfigs(t *testing.T) {
	env, _ := routingEnv(t)
	ctx := t.Context()
	a := createAgent(t, env, 1, "versioned")
	b := createAgent(t, env, 1, "unconfigured")
	const y = "observability: {logging: {level: debug}}\n"
	for range 3 {
		if _, err := env.Agents.PutAgentConfig(ctx, &managementv1.PutAgentConfigRequest{AgentId: a.Id, Yaml: y}); err != nil {
			t.Fatal(err)
		}
	}
	get := func(known ...int64) (*dataplanev1.GetAgentConfigsResponse, error) {
		req := &dataplanev1.GetAgentConfigsRequest{}
		for i := 0; i+1 < len(known); i += 2 {
			req.Known = append(req.Known, &dataplanev1.AgentConfigVersion{AgentId: known[i], Version: known[i+1]})
		}
		return env.Auth.GetAgentConfigs(ctx, req)
	}
	got, err := get(b.Id, -1, a.Id+b.Id+1000, -1, a.Id, -1)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Configs) != 2 || got.Truncated ||
		got.Configs[0].AgentId != a.Id || got.Configs[0].Version != 3 || got.Configs[0].Yaml != y ||
		got.Configs[1].AgentId != b.Id || got.Configs[1].Version != 0 || got.Configs[1].Yaml != "" {
		t.Fatalf("nothing known: %v", got)
	}
	if got, err := get(a.Id, 3, b.Id, 0); err != nil || len(got.Configs) != 0 {
		t.Errorf("everything known: %v, %v; want no configs", got, err)
	}
	if got, err := get(a.Id, 2, b.Id, 0); err != nil || len(got.Configs) != 1 || got.Configs[0].Version != 3 {
		t.Errorf("a at 2: %v, %v; want a at 3", got, err)
	}
	_, err = get(a.Id, 3, -1, 0)
	wantCode(t, err, connect.CodeInvalidArgument, "known[1].agent_id")
	_, err = get(a.Id, -2)
	wantCode(t, err, connect.CodeInvalidArgument, "known[0].version")
	_, err = env.Auth.GetAgentConfigs(ctx, &dataplanev1.GetAgentConfigsRequest{Known: make([]*dataplanev1.AgentConfigVersion, 10_001)})
	wantCode(t, err, connect.CodeInvalidArgument, "at most 10000")

	// More changed agents than one answer holds: truncated, then the rest.
	var known []int64
	for i := range 250 {
		known = append(known, createAgent(t, env, 2, fmt.Sprintf("many-%d", i)).Id, -1)
	}
	first, err := get(known...)
	if err != nil || len(first.Configs) != 200 || !first.Truncated {
		t.Fatalf("250 unknown: %d configs, truncated %v, %v; want 200, true", len(first.Configs), first.Truncated, err)
	}
	for i := 0; i < len(known); i += 2 {
		if i/2 < 200 {
			known[i+1] = 0
		}
	}
	rest, err := get(known...)
	if err != nil || len(rest.Configs) != 50 || rest.Truncated {
		t.Fatalf("the rest: %d configs, truncated %v, %v; want 50, false", len(rest.Configs), rest.Truncated, err)
	}
}

// authzFixture holds agents and credentials for the AuthorizeProxy matrix.
type authzFixture struct {
	env *cptest.Env
	clk *clock
	// Agents.
	configured *managementv1.Agent // ci_access + user_access (as user)
	asAgent    *managementv1.Agent // user_access as agent
	plain      *managementv1.Agent // no configuration
	// Credentials.
	pat       string // alice, granted plain
	ciApp     string // job in grp/app, env production, granted plain
	ciTeam    string // job in grp/team/svc
	ciConfig  string // job in the configured agent's own project
	ciOther   string // job in elsewhere/x
	cookie    string // bob: member of grp/devs and grp/app
	csrf      string
	cookieOut string // carol: no matching membership, granted plain
}

const configuredYAML = `ci_access:
  projects:
  - id: grp/app
    environments: [prod*]
  groups:
  - id: grp/team
    access_as:
      impersonate:
        username: deployer
        groups: [deployers]
        uid: "42"
        extra:
        - key: reason
          val: [ci]
user_access:
  access_as: {user: {}}
  groups:
  - id: grp/devs
`

func newAuthzFixture(t *testing.T) *authzFixture {
	t.Helper()
	env, clk := routingEnv(t)
	ctx := t.Context()
	f := &authzFixture{env: env, clk: clk}
	f.configured = createAgent(t, env, 10, "configured")
	f.asAgent = createAgent(t, env, 11, "as-agent")
	f.plain = createAgent(t, env, 12, "plain")
	for _, c := range []struct {
		agent int64
		yaml  string
	}{
		{f.configured.Id, configuredYAML},
		{f.asAgent.Id, "user_access:\n  access_as: {agent: {}}\n  projects: [{id: grp/app}]\n"},
	} {
		if _, err := env.Agents.PutAgentConfig(ctx, &managementv1.PutAgentConfigRequest{AgentId: c.agent, Yaml: c.yaml}); err != nil {
			t.Fatal(err)
		}
	}
	expires := timestamppb.New(clk.Now().Add(time.Hour))
	f.pat = must[*managementv1.CreateAccessTokenResponse](t)(env.Credentials.CreateAccessToken(ctx, &managementv1.CreateAccessTokenRequest{
		User:     &managementv1.UserIdentity{Id: 1, Username: "alice", Groups: []string{"grp/devs"}, Extra: map[string]string{"acme.com/team": "blue"}},
		AgentIds: []int64{f.plain.Id}, ExpiresAt: expires,
	})).Secret
	ci := func(job *managementv1.CIJob, agents ...int64) string {
		return must[*managementv1.CreateCIJobTokenResponse](t)(env.Credentials.CreateCIJobToken(ctx, &managementv1.CreateCIJobTokenRequest{
			Job: job, AgentIds: agents, ExpiresAt: expires,
		})).Secret
	}
	user := &managementv1.UserIdentity{Id: 3, Username: "ci-runner-user"}
	f.ciApp = ci(&managementv1.CIJob{JobId: 1001, ProjectId: 20, ProjectPath: "grp/app", GroupPaths: []string{"grp"},
		Environment: "production", EnvironmentTier: "production", PipelineId: "555", User: user}, f.plain.Id)
	f.ciTeam = ci(&managementv1.CIJob{JobId: 1002, ProjectId: 21, ProjectPath: "grp/team/svc", GroupPaths: []string{"grp", "grp/team"}})
	f.ciConfig = ci(&managementv1.CIJob{JobId: 1003, ProjectId: 10, ProjectPath: "ops/agents"})
	f.ciOther = ci(&managementv1.CIJob{JobId: 1004, ProjectId: 22, ProjectPath: "elsewhere/x", GroupPaths: []string{"elsewhere"}})
	sess := must[*managementv1.CreateSessionResponse](t)(env.Credentials.CreateSession(ctx, &managementv1.CreateSessionRequest{
		User:         &managementv1.UserIdentity{Id: 2, Username: "bob", Groups: []string{"grp/devs"}},
		ExpiresAt:    expires,
		ProjectPaths: []string{"grp/app"},
		GroupPaths:   []string{"grp/devs"},
	}))
	f.cookie = encrypt(t, env.APIKey, sess.SessionId)
	f.csrf = sess.CsrfToken
	out := must[*managementv1.CreateSessionResponse](t)(env.Credentials.CreateSession(ctx, &managementv1.CreateSessionRequest{
		User: &managementv1.UserIdentity{Id: 4, Username: "carol"}, ExpiresAt: expires, AgentIds: []int64{f.plain.Id},
		ProjectPaths: []string{"other/p"},
	}))
	f.cookieOut = encrypt(t, env.APIKey, out.SessionId)
	return f
}

func encrypt(t *testing.T, key []byte, sessionID string) string {
	t.Helper()
	c, err := kascookie.Encrypt(key, sessionID)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *authzFixture) authorize(t *testing.T, req *dataplanev1.AuthorizeProxyRequest) *dataplanev1.AuthorizeProxyResponse {
	t.Helper()
	resp, err := f.env.Auth.AuthorizeProxy(t.Context(), req)
	if err != nil {
		t.Fatalf("AuthorizeProxy(%v): %v", req, err)
	}
	return resp
}

func pat(agent int64, tok string) *dataplanev1.AuthorizeProxyRequest {
	return &dataplanev1.AuthorizeProxyRequest{AgentId: agent, Credential: &dataplanev1.AuthorizeProxyRequest_AccessToken{AccessToken: tok}}
}

func ciTok(agent int64, tok string) *dataplanev1.AuthorizeProxyRequest {
	return &dataplanev1.AuthorizeProxyRequest{AgentId: agent, Credential: &dataplanev1.AuthorizeProxyRequest_CiJobToken{CiJobToken: tok}}
}

func cookie(agent int64, c string, unsafe bool, csrf string) *dataplanev1.AuthorizeProxyRequest {
	return &dataplanev1.AuthorizeProxyRequest{AgentId: agent, Credential: &dataplanev1.AuthorizeProxyRequest_SessionCookie{SessionCookie: c},
		UnsafeMethod: unsafe, CsrfToken: csrf}
}

const (
	allowed  = dataplanev1.AuthorizeProxyResponse_DECISION_ALLOWED
	unauthn  = dataplanev1.AuthorizeProxyResponse_DECISION_UNAUTHENTICATED
	forbiddn = dataplanev1.AuthorizeProxyResponse_DECISION_FORBIDDEN
)

func accessKind(as *dataplanev1.AccessAs) string {
	switch as.GetAs().(type) {
	case *dataplanev1.AccessAs_Agent:
		return "agent"
	case *dataplanev1.AccessAs_User:
		return "user"
	case *dataplanev1.AccessAs_CiJob:
		return "ci_job"
	case *dataplanev1.AccessAs_Impersonate:
		return "impersonate"
	}
	return ""
}

func TestAuthorizeProxyMatrix(t *testing.T) {
	f := newAuthzFixture(t)
	cases := []struct {
		name      string
		req       *dataplanev1.AuthorizeProxyRequest
		decision  dataplanev1.AuthorizeProxyResponse_Decision
		access    string // for allowed
		principal string
		reason    string // for refusals, a substring
	}{
		// Access tokens: explicit grants only.
		{"pat explicit", pat(f.plain.Id, f.pat), allowed, "user", "user:alice", ""},
		{"pat not granted, even if user_access would match", pat(f.configured.Id, f.pat), forbiddn, "", "user:alice", "may not access agent"},
		// CI job tokens: ci_access, the configuration project, explicit grants.
		{"ci config project entry", ciTok(f.configured.Id, f.ciApp), allowed, "agent", "ci_job:1001", ""},
		{"ci explicit grant without config", ciTok(f.plain.Id, f.ciApp), allowed, "ci_job", "ci_job:1001", ""},
		{"ci config group entry", ciTok(f.configured.Id, f.ciTeam), allowed, "impersonate", "ci_job:1002", ""},
		{"ci agent's own project", ciTok(f.configured.Id, f.ciConfig), allowed, "agent", "ci_job:1003", ""},
		{"ci not allowed", ciTok(f.configured.Id, f.ciOther), forbiddn, "", "ci_job:1004", "may not access agent"},
		{"ci no config no grant", ciTok(f.plain.Id, f.ciTeam), forbiddn, "", "ci_job:1002", "may not access agent " + strconv.FormatInt(f.plain.Id, 10) + " (the agent has no configuration"},
		// Sessions: user_access and explicit grants; CSRF on unsafe methods.
		{"cookie user_access group", cookie(f.configured.Id, f.cookie, false, ""), allowed, "user", "user:bob", ""},
		{"cookie user_access as agent", cookie(f.asAgent.Id, f.cookie, false, ""), allowed, "agent", "user:bob", ""},
		{"cookie no match", cookie(f.plain.Id, f.cookie, false, ""), forbiddn, "", "user:bob", "may not access agent"},
		{"cookie explicit grant", cookie(f.plain.Id, f.cookieOut, false, ""), allowed, "user", "user:carol", ""},
		{"cookie explicit grant elsewhere", cookie(f.configured.Id, f.cookieOut, false, ""), forbiddn, "", "user:carol", "may not access agent"},
		{"cookie unsafe with csrf", cookie(f.configured.Id, f.cookie, true, f.csrf), allowed, "user", "user:bob", ""},
		{"cookie unsafe without csrf", cookie(f.configured.Id, f.cookie, true, ""), forbiddn, "", "user:bob", "missing or wrong X-Csrf-Token"},
		{"cookie unsafe wrong csrf", cookie(f.configured.Id, f.cookie, true, f.csrf+"x"), forbiddn, "", "user:bob", "missing or wrong X-Csrf-Token"},
		{"cookie url-escaped", cookie(f.configured.Id, "%"+strings.ToUpper(hex2(f.cookie[0]))+url.PathEscape(f.cookie[1:]), false, ""), allowed, "user", "user:bob", ""},
		// Bad credentials of every kind.
		{"no credential", &dataplanev1.AuthorizeProxyRequest{AgentId: f.plain.Id}, unauthn, "", "", "no credential"},
		{"pat garbage", pat(f.plain.Id, "nope"), unauthn, "", "", "invalid access token"},
		{"pat wrong secret", pat(f.plain.Id, tamper(f.pat)), unauthn, "", "", "invalid access token"},
		{"pat as ci token", ciTok(f.plain.Id, f.pat), unauthn, "", "", "invalid CI job token"},
		{"ci unknown id", ciTok(f.plain.Id, otherID(t, secret.CIJobToken, f.ciApp)), unauthn, "", "", "invalid CI job token"},
		{"cookie other key", cookie(f.configured.Id, encrypt(t, cptest.Key(t), sessionOf(t, f, f.cookie)), false, ""), unauthn, "", "", "invalid session cookie"},
		{"cookie tampered", cookie(f.configured.Id, tamper(f.cookie), false, ""), unauthn, "", "", "invalid session cookie"},
		{"cookie plain session id", cookie(f.configured.Id, sessionOf(t, f, f.cookie), false, ""), unauthn, "", "", "invalid session cookie"},
		{"cookie bad escape", cookie(f.configured.Id, "%zz", false, ""), unauthn, "", "", "invalid session cookie"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := f.authorize(t, tc.req)
			if resp.Decision != tc.decision || resp.Principal != tc.principal {
				t.Fatalf("got %v (principal %q, reason %q), want %v (principal %q)", resp.Decision, resp.Principal, resp.Reason, tc.decision, tc.principal)
			}
			if tc.decision == allowed {
				if got := accessKind(resp.AccessAs); got != tc.access {
					t.Errorf("access_as = %s, want %s", got, tc.access)
				}
				if resp.Reason != "" {
					t.Errorf("allowed with reason %q", resp.Reason)
				}
				if got := resp.CacheTtl.AsDuration(); got != 60*time.Second {
					t.Errorf("cache_ttl = %v, want 60s", got)
				}
				return
			}
			if !strings.Contains(resp.Reason, tc.reason) {
				t.Errorf("reason %q, want it to contain %q", resp.Reason, tc.reason)
			}
			if resp.AccessAs != nil || resp.Impersonation != nil {
				t.Errorf("refusal carries access_as %v / impersonation %v", resp.AccessAs, resp.Impersonation)
			}
			if got := resp.CacheTtl.AsDuration(); got != 10*time.Second {
				t.Errorf("cache_ttl = %v, want 10s", got)
			}
		})
	}
}

func TestAuthorizeProxyImpersonation(t *testing.T) {
	f := newAuthzFixture(t)
	agentID := strconv.FormatInt(f.plain.Id, 10)
	configuredID := strconv.FormatInt(f.configured.Id, 10)
	ev := func(v ...string) *dataplanev1.ExtraValues { return &dataplanev1.ExtraValues{Values: v} }
	cases := []struct {
		name string
		req  *dataplanev1.AuthorizeProxyRequest
		want *dataplanev1.Impersonation
	}{
		{"user", pat(f.plain.Id, f.pat), &dataplanev1.Impersonation{
			Username: "gitlab:user:alice",
			Groups:   []string{"gitlab:user", "gitlab:group:grp/devs"},
			Extra: map[string]*dataplanev1.ExtraValues{
				"agent.gitlab.com/id":                ev(agentID),
				"agent.gitlab.com/username":          ev("alice"),
				"agent.gitlab.com/access_type":       ev("personal_access_token"),
				"agent.gitlab.com/config_project_id": ev("12"),
				"acme.com/team":                      ev("blue"),
			},
		}},
		{"user by session", cookie(f.configured.Id, f.cookie, false, ""), &dataplanev1.Impersonation{
			Username: "gitlab:user:bob",
			Groups:   []string{"gitlab:user", "gitlab:group:grp/devs"},
			Extra: map[string]*dataplanev1.ExtraValues{
				"agent.gitlab.com/id":                ev(configuredID),
				"agent.gitlab.com/username":          ev("bob"),
				"agent.gitlab.com/access_type":       ev("session_cookie"),
				"agent.gitlab.com/config_project_id": ev("10"),
			},
		}},
		{"ci_job", ciTok(f.plain.Id, f.ciApp), &dataplanev1.Impersonation{
			Username: "gitlab:ci_job:1001",
			Groups: []string{"gitlab:ci_job", "gitlab:project:20", "gitlab:group:grp", "gitlab:group_env_tier:grp:production",
				"gitlab:project_env:20:production", "gitlab:project_env_tier:20:production"},
			Extra: map[string]*dataplanev1.ExtraValues{
				"agent.gitlab.com/id":                ev(agentID),
				"agent.gitlab.com/config_project_id": ev("12"),
				"agent.gitlab.com/project_id":        ev("20"),
				"agent.gitlab.com/ci_pipeline_id":    ev("555"),
				"agent.gitlab.com/ci_job_id":         ev("1001"),
				"agent.gitlab.com/username":          ev("ci-runner-user"),
				"agent.gitlab.com/environment_slug":  ev("production"),
				"agent.gitlab.com/environment_tier":  ev("production"),
			},
		}},
		{"impersonate", ciTok(f.configured.Id, f.ciTeam), &dataplanev1.Impersonation{
			Username: "deployer", Groups: []string{"deployers"}, Uid: "42",
			Extra: map[string]*dataplanev1.ExtraValues{"reason": ev("ci")},
		}},
		{"agent", ciTok(f.configured.Id, f.ciConfig), &dataplanev1.Impersonation{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := f.authorize(t, tc.req)
			if resp.Decision != allowed {
				t.Fatalf("decision %v (%s)", resp.Decision, resp.Reason)
			}
			if !proto.Equal(resp.Impersonation, tc.want) {
				t.Fatalf("impersonation\n got %v\nwant %v", resp.Impersonation, tc.want)
			}
		})
	}
	// The configured impersonation is also in access_as.
	resp := f.authorize(t, ciTok(f.configured.Id, f.ciTeam))
	im := resp.AccessAs.GetImpersonate()
	if im.GetUsername() != "deployer" || !slices.Equal(im.GetGroups(), []string{"deployers"}) || im.GetUid() != "42" {
		t.Errorf("access_as = %v", resp.AccessAs)
	}
}

func TestAuthorizeProxyLifecycle(t *testing.T) {
	f := newAuthzFixture(t)
	ctx := t.Context()
	// Unknown agent: an error, but only for a valid credential.
	_, err := f.env.Auth.AuthorizeProxy(ctx, pat(999999, f.pat))
	wantCode(t, err, connect.CodeNotFound, "agent 999999")
	if resp := f.authorize(t, pat(999999, "garbage")); resp.Decision != unauthn {
		t.Errorf("garbage credential for unknown agent: %v", resp.Decision)
	}
	_, err = f.env.Auth.AuthorizeProxy(ctx, pat(0, f.pat))
	wantCode(t, err, connect.CodeInvalidArgument, "agent_id")

	// Revocation takes effect at once.
	id, _ := randomPart(t, secret.CIJobToken, f.ciApp)
	if _, err := f.env.Credentials.RevokeCIJobToken(ctx, &managementv1.RevokeCIJobTokenRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	if resp := f.authorize(t, ciTok(f.plain.Id, f.ciApp)); resp.Decision != unauthn || resp.Reason != "invalid CI job token" {
		t.Errorf("revoked CI token: %v %q", resp.Decision, resp.Reason)
	}
	sid, _ := randomPart(t, secret.Session, sessionOf(t, f, f.cookie))
	if _, err := f.env.Credentials.RevokeSession(ctx, &managementv1.RevokeSessionRequest{Id: sid}); err != nil {
		t.Fatal(err)
	}
	if resp := f.authorize(t, cookie(f.configured.Id, f.cookie, false, "")); resp.Decision != unauthn {
		t.Errorf("revoked session: %v", resp.Decision)
	}

	// Near expiry the allow is cached only until the credential expires.
	f.clk.Add(time.Hour - 20*time.Second)
	resp := f.authorize(t, pat(f.plain.Id, f.pat))
	if resp.Decision != allowed || resp.CacheTtl.AsDuration() != 20*time.Second {
		t.Errorf("near expiry: %v, cache_ttl %v; want allowed for 20s", resp.Decision, resp.CacheTtl.AsDuration())
	}
	// Expired: unauthenticated.
	f.clk.Add(time.Minute)
	for name, req := range map[string]*dataplanev1.AuthorizeProxyRequest{
		"pat":    pat(f.plain.Id, f.pat),
		"ci":     ciTok(f.configured.Id, f.ciTeam),
		"cookie": cookie(f.plain.Id, f.cookieOut, false, ""),
	} {
		if resp := f.authorize(t, req); resp.Decision != unauthn {
			t.Errorf("expired %s: %v", name, resp.Decision)
		}
	}
}

// TestAuthorizeProxyConfigChange: a new configuration version applies to
// the next decision (the parsed-config memo is keyed by version).
func TestAuthorizeProxyConfigChange(t *testing.T) {
	f := newAuthzFixture(t)
	ctx := t.Context()
	if resp := f.authorize(t, ciTok(f.configured.Id, f.ciOther)); resp.Decision != forbiddn {
		t.Fatalf("before: %v", resp.Decision)
	}
	y := configuredYAML + "" // grant elsewhere/x by adding an instance entry
	y = strings.Replace(y, "user_access:", "  instance:\n    access_as: {ci_job: {}}\nuser_access:", 1)
	if _, err := f.env.Agents.PutAgentConfig(ctx, &managementv1.PutAgentConfigRequest{AgentId: f.configured.Id, Yaml: y}); err != nil {
		t.Fatal(err)
	}
	resp := f.authorize(t, ciTok(f.configured.Id, f.ciOther))
	if resp.Decision != allowed || accessKind(resp.AccessAs) != "ci_job" {
		t.Fatalf("after: %v %v", resp.Decision, resp.AccessAs)
	}
}

// sessionOf decrypts a cookie of the fixture.
func sessionOf(t *testing.T, f *authzFixture, c string) string {
	t.Helper()
	sid, err := kascookie.Decrypt(f.env.APIKey, c)
	if err != nil {
		t.Fatal(err)
	}
	return sid
}

// tamper changes a character in the middle of a secret or cookie (the
// last one of unpadded base64 may carry unused bits).
func tamper(s string) string {
	i := len(s) - 5
	repl := byte('A')
	if s[i] == 'A' {
		repl = 'B'
	}
	return s[:i] + string(repl) + s[i+1:]
}

// otherID rewrites a secret to point at another row.
func otherID(t *testing.T, prefix, tok string) string {
	id, random := randomPart(t, prefix, tok)
	return prefix + "_" + strconv.FormatInt(id+1000, 10) + "_" + random
}

func hex2(b byte) string { return strconv.FormatInt(int64(b)|0x100, 16)[1:] }
