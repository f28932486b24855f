package app

import (
	"context"
	"flag"
	"fmt"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
)

// Credentials that reach agents through the Kubernetes API proxy: the
// CredentialService.

func runCredentials(ctx context.Context, cli CLI, g *globals, args []string) error {
	return runGroup(ctx, cli, g, "credentials", []subcommand{
		{"access-token", "create, list or revoke access tokens (Authorization: Bearer pat:<agent-id>:<secret>)", runAccessTokens},
		{"ci-token", "create or revoke CI job tokens (Authorization: Bearer ci:<agent-id>:<secret>)", runCITokens},
		{"session", "create or revoke browser sessions (the _gitlab_kas cookie)", runSessions},
	}, args)
}

// userFlags are the flags of a UserIdentity.
type userFlags struct {
	id       *int64
	username *string
	groups   stringList
}

func registerUser(fs *flag.FlagSet, what string) *userFlags {
	u := &userFlags{
		id:       fs.Int64("user-id", 0, what+": the GitLab user's ID"),
		username: fs.String("username", "", what+": the GitLab user's name (impersonated as gitlab:user:<name> when access_as is user)"),
	}
	fs.Var(&u.groups, "groups", what+": the user's group paths (comma-separated or repeated)")
	return u
}

func (u *userFlags) identity() *managementv1.UserIdentity {
	return &managementv1.UserIdentity{Id: *u.id, Username: *u.username, Groups: u.groups}
}

func (u *userFlags) given() bool { return *u.id != 0 || *u.username != "" || len(u.groups) > 0 }

func (u *userFlags) check() error {
	return required("--user-id", *u.id != 0, "--username", *u.username != "")
}

// expiry returns now+d as a timestamp, checking d.
func expiry(cli CLI, d time.Duration) (*timestamppb.Timestamp, error) {
	if d <= 0 {
		return nil, usageError{"--expires-in: must be positive"}
	}
	return timestamppb.New(cli.Now().Add(d)), nil
}

func runAccessTokens(ctx context.Context, cli CLI, g *globals, args []string) error {
	return runGroup(ctx, cli, g, "credentials access-token", []subcommand{
		{"create", "create an access token for a user, granted the given agents", accessTokenCreate},
		{"list", "list access tokens (--user-id, --agent-id filter)", accessTokenList},
		{"revoke", "revoke an access token: kasctl credentials access-token revoke ID", accessTokenRevoke},
	}, args)
}

func accessTokenTable(secret string, tokens ...*managementv1.AccessToken) func(*tabwriter.Writer) {
	return func(tw *tabwriter.Writer) {
		header := []any{"ID", "NAME", "USER ID", "USERNAME", "AGENTS", "EXPIRES", "CREATED", "REVOKED"}
		if secret != "" {
			header = append(header, "SECRET")
		}
		row(tw, header...)
		for _, t := range tokens {
			cells := []any{t.GetId(), orDash(t.GetName()), t.GetUser().GetId(), t.GetUser().GetUsername(), joinIDs(t.GetAgentIds()),
				when(t.GetExpiresAt()), when(t.GetCreatedAt()), when(t.GetRevokedAt())}
			if secret != "" {
				cells = append(cells, secret)
			}
			row(tw, cells...)
		}
	}
}

func accessTokenCreate(ctx context.Context, cli CLI, g *globals, args []string) error {
	fs := newFlagSet("credentials access-token create")
	g.register(fs)
	var agents idList
	fs.Var(&agents, "agent-id", "an agent the token may reach (required; repeated or comma-separated)")
	user := registerUser(fs, "required")
	name := fs.String("name", "", "the token's name")
	expiresIn := fs.Duration("expires-in", DefaultTokenLifetime, "lifetime (at most a year)")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs("credentials access-token create", rest); err != nil {
		return err
	}
	if err := required("--agent-id", len(agents) > 0, "--user-id", *user.id != 0, "--username", *user.username != ""); err != nil {
		return err
	}
	expires, err := expiry(cli, *expiresIn)
	if err != nil {
		return err
	}
	s, cancel, err := g.dial(ctx, fs)
	if err != nil {
		return err
	}
	defer cancel()
	resp, err := s.credentials.CreateAccessToken(s.ctx, &managementv1.CreateAccessTokenRequest{
		User: user.identity(), AgentIds: agents, ExpiresAt: expires, Name: *name,
	})
	if err != nil {
		return s.fail(err)
	}
	if g.output == outputTable {
		fmt.Fprintf(cli.Stderr, "kasctl: the secret is shown once; send it as Authorization: Bearer pat:<agent-id>:<secret>\n")
	}
	return s.out(cli.Stdout, resp, accessTokenTable(resp.GetSecret(), resp.GetToken()), resp.GetToken().GetId())
}

func accessTokenList(ctx context.Context, cli CLI, g *globals, args []string) error {
	fs := newFlagSet("credentials access-token list")
	g.register(fs)
	userID := fs.Int64("user-id", 0, "only this user's tokens")
	agentID := fs.Int64("agent-id", 0, "only the tokens that may reach this agent")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs("credentials access-token list", rest); err != nil {
		return err
	}
	s, cancel, err := g.dial(ctx, fs)
	if err != nil {
		return err
	}
	defer cancel()
	resp, err := s.credentials.ListAccessTokens(s.ctx, &managementv1.ListAccessTokensRequest{UserId: *userID, AgentId: *agentID})
	if err != nil {
		return s.fail(err)
	}
	ids := make([]int64, len(resp.GetTokens()))
	for i, t := range resp.GetTokens() {
		ids[i] = t.GetId()
	}
	return s.out(cli.Stdout, resp, accessTokenTable("", resp.GetTokens()...), ids...)
}

func accessTokenRevoke(ctx context.Context, cli CLI, g *globals, args []string) error {
	return revoke(ctx, cli, g, args, "credentials access-token revoke", "access token", func(s *session, id int64) (*managementv1.RevokeAccessTokenResponse, error) {
		return s.credentials.RevokeAccessToken(s.ctx, &managementv1.RevokeAccessTokenRequest{TokenId: id})
	})
}

// revoke runs a "revoke ID" command whose response is empty.
func revoke[R proto.Message](ctx context.Context, cli CLI, g *globals, args []string, cmd, what string, call func(*session, int64) (R, error)) error {
	fs := newFlagSet(cmd)
	g.register(fs)
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	id, err := oneID(cmd, what, rest)
	if err != nil {
		return err
	}
	s, cancel, err := g.dial(ctx, fs)
	if err != nil {
		return err
	}
	defer cancel()
	resp, err := call(s, id)
	if err != nil {
		return s.fail(err)
	}
	return s.out(cli.Stdout, resp, func(tw *tabwriter.Writer) { row(tw, fmt.Sprintf("revoked %s %d", what, id)) }, id)
}

func runCITokens(ctx context.Context, cli CLI, g *globals, args []string) error {
	return runGroup(ctx, cli, g, "credentials ci-token", []subcommand{
		{"create", "register a CI job's token (--job-id, --project-id, --project-path)", ciTokenCreate},
		{"revoke", "revoke a CI job token: kasctl credentials ci-token revoke ID", ciTokenRevoke},
	}, args)
}

func ciTokenCreate(ctx context.Context, cli CLI, g *globals, args []string) error {
	fs := newFlagSet("credentials ci-token create")
	g.register(fs)
	job := fs.Int64("job-id", 0, "the CI job's ID (required)")
	project := fs.Int64("project-id", 0, "the job's project ID (required)")
	projectPath := fs.String("project-path", "", "the job's full project path, matched against ci_access.projects (required)")
	var groupPaths stringList
	fs.Var(&groupPaths, "group-path", "an ancestor group path of the project, matched against ci_access.groups (repeated or comma-separated)")
	user := registerUser(fs, "optional")
	environment := fs.String("environment", "", "the job's environment")
	tier := fs.String("environment-tier", "", "the environment's tier")
	pipeline := fs.String("pipeline-id", "", "the job's pipeline")
	var agents idList
	fs.Var(&agents, "agent-id", "an agent the job may reach besides those whose ci_access allows the project (repeated or comma-separated)")
	expiresIn := fs.Duration("expires-in", time.Hour, "lifetime (at most a week)")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs("credentials ci-token create", rest); err != nil {
		return err
	}
	if err := required("--job-id", *job != 0, "--project-id", *project != 0, "--project-path", *projectPath != ""); err != nil {
		return err
	}
	var u *managementv1.UserIdentity
	if user.given() {
		if err := user.check(); err != nil {
			return err
		}
		u = user.identity()
	}
	expires, err := expiry(cli, *expiresIn)
	if err != nil {
		return err
	}
	s, cancel, err := g.dial(ctx, fs)
	if err != nil {
		return err
	}
	defer cancel()
	resp, err := s.credentials.CreateCIJobToken(s.ctx, &managementv1.CreateCIJobTokenRequest{
		Job: &managementv1.CIJob{
			JobId: *job, ProjectId: *project, ProjectPath: *projectPath, GroupPaths: groupPaths, User: u,
			Environment: *environment, EnvironmentTier: *tier, PipelineId: *pipeline,
		},
		AgentIds:  agents,
		ExpiresAt: expires,
	})
	if err != nil {
		return s.fail(err)
	}
	if g.output == outputTable {
		fmt.Fprintf(cli.Stderr, "kasctl: the secret is shown once; send it as Authorization: Bearer ci:<agent-id>:<secret>\n")
	}
	return s.out(cli.Stdout, resp, func(tw *tabwriter.Writer) {
		row(tw, "ID", "JOB", "PROJECT", "EXPIRES", "SECRET")
		row(tw, resp.GetId(), *job, *projectPath, when(expires), resp.GetSecret())
	}, resp.GetId())
}

func ciTokenRevoke(ctx context.Context, cli CLI, g *globals, args []string) error {
	return revoke(ctx, cli, g, args, "credentials ci-token revoke", "CI job token", func(s *session, id int64) (*managementv1.RevokeCIJobTokenResponse, error) {
		return s.credentials.RevokeCIJobToken(s.ctx, &managementv1.RevokeCIJobTokenRequest{Id: id})
	})
}

func runSessions(ctx context.Context, cli CLI, g *globals, args []string) error {
	return runGroup(ctx, cli, g, "credentials session", []subcommand{
		{"create", "record a browser session for a user (--user-id, --username)", sessionCreate},
		{"revoke", "revoke a session: kasctl credentials session revoke ID", sessionRevoke},
	}, args)
}

func sessionCreate(ctx context.Context, cli CLI, g *globals, args []string) error {
	fs := newFlagSet("credentials session create")
	g.register(fs)
	user := registerUser(fs, "required")
	var agents idList
	fs.Var(&agents, "agent-id", "an agent the session may reach besides those whose user_access allows the user (repeated or comma-separated)")
	var projects, groups stringList
	fs.Var(&projects, "project-path", "a project the user may act in, for user_access (repeated or comma-separated)")
	fs.Var(&groups, "group-path", "a group the user may act in, for user_access (repeated or comma-separated)")
	expiresIn := fs.Duration("expires-in", 24*time.Hour, "lifetime (at most 30 days)")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs("credentials session create", rest); err != nil {
		return err
	}
	if err := user.check(); err != nil {
		return err
	}
	expires, err := expiry(cli, *expiresIn)
	if err != nil {
		return err
	}
	s, cancel, err := g.dial(ctx, fs)
	if err != nil {
		return err
	}
	defer cancel()
	resp, err := s.credentials.CreateSession(s.ctx, &managementv1.CreateSessionRequest{
		User: user.identity(), AgentIds: agents, ExpiresAt: expires, ProjectPaths: projects, GroupPaths: groups,
	})
	if err != nil {
		return s.fail(err)
	}
	if g.output == outputTable {
		fmt.Fprintf(cli.Stderr, "kasctl: shown once: encrypt the session ID into the _gitlab_kas cookie (docs/cookie.md); send the CSRF token as X-Csrf-Token\n")
	}
	return s.out(cli.Stdout, resp, func(tw *tabwriter.Writer) {
		row(tw, "ID", "USERNAME", "EXPIRES", "SESSION ID", "CSRF TOKEN")
		row(tw, resp.GetId(), *user.username, when(expires), resp.GetSessionId(), resp.GetCsrfToken())
	}, resp.GetId())
}

func sessionRevoke(ctx context.Context, cli CLI, g *globals, args []string) error {
	return revoke(ctx, cli, g, args, "credentials session revoke", "session", func(s *session, id int64) (*managementv1.RevokeSessionResponse, error) {
		return s.credentials.RevokeSession(s.ctx, &managementv1.RevokeSessionRequest{Id: id})
	})
}
