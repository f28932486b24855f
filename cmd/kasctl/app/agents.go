package app

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
)

// Agents, their tokens and configuration, and which nodes hold their
// tunnels: the AgentService.

func runAgents(ctx context.Context, cli CLI, g *globals, args []string) error {
	return runGroup(ctx, cli, g, "agents", []subcommand{
		{"create", "register an agent (--name, --project-id)", agentsCreate},
		{"list", "list agents, optionally of one project", agentsList},
		{"get", "show one agent: kasctl agents get ID", agentsGet},
		{"delete", "delete an agent with its tokens, configuration and routes", agentsDelete},
	}, args)
}

func agentTable(agents ...*managementv1.Agent) func(*tabwriter.Writer) {
	return func(tw *tabwriter.Writer) {
		row(tw, "ID", "PROJECT", "NAME", "CONFIG VERSION", "CREATED")
		for _, a := range agents {
			cfg := "-"
			if v := a.GetConfigVersion(); v > 0 {
				cfg = fmt.Sprint(v)
			}
			row(tw, a.GetId(), a.GetProjectId(), a.GetName(), cfg, when(a.GetCreatedAt()))
		}
	}
}

func agentsCreate(ctx context.Context, cli CLI, g *globals, args []string) error {
	fs := newFlagSet("agents create")
	g.register(fs)
	project := fs.Int64("project-id", 1, "the GitLab project the agent belongs to")
	name := fs.String("name", "", "the agent's name: a DNS label, unique in the project (required)")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs("agents create", rest); err != nil {
		return err
	}
	if err := required("--name", *name != ""); err != nil {
		return err
	}
	s, cancel, err := g.dial(ctx, fs)
	if err != nil {
		return err
	}
	defer cancel()
	resp, err := s.agents.CreateAgent(s.ctx, &managementv1.CreateAgentRequest{ProjectId: *project, Name: *name})
	if err != nil {
		return s.fail(err)
	}
	return s.out(cli.Stdout, resp, agentTable(resp.GetAgent()), resp.GetAgent().GetId())
}

func agentsList(ctx context.Context, cli CLI, g *globals, args []string) error {
	fs := newFlagSet("agents list")
	g.register(fs)
	project := fs.Int64("project-id", 0, "only the agents of this project")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs("agents list", rest); err != nil {
		return err
	}
	s, cancel, err := g.dial(ctx, fs)
	if err != nil {
		return err
	}
	defer cancel()
	all, err := s.listAgents(*project)
	if err != nil {
		return err
	}
	ids := make([]int64, len(all.Agents))
	for i, a := range all.Agents {
		ids[i] = a.GetId()
	}
	return s.out(cli.Stdout, all, agentTable(all.Agents...), ids...)
}

// listAgents pages through every agent (of project, when not 0) and
// returns them as one response.
func (s *session) listAgents(project int64) (*managementv1.ListAgentsResponse, error) {
	all := &managementv1.ListAgentsResponse{}
	req := &managementv1.ListAgentsRequest{ProjectId: project, PageSize: 1000}
	for {
		resp, err := s.agents.ListAgents(s.ctx, req)
		if err != nil {
			return nil, s.fail(err)
		}
		all.Agents = append(all.Agents, resp.GetAgents()...)
		if resp.GetNextPageToken() == "" {
			return all, nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

func agentsGet(ctx context.Context, cli CLI, g *globals, args []string) error {
	fs := newFlagSet("agents get")
	g.register(fs)
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	id, err := oneID("agents get", "agent", rest)
	if err != nil {
		return err
	}
	s, cancel, err := g.dial(ctx, fs)
	if err != nil {
		return err
	}
	defer cancel()
	resp, err := s.agents.GetAgent(s.ctx, &managementv1.GetAgentRequest{AgentId: id})
	if err != nil {
		return s.fail(err)
	}
	return s.out(cli.Stdout, resp, agentTable(resp.GetAgent()), id)
}

func agentsDelete(ctx context.Context, cli CLI, g *globals, args []string) error {
	fs := newFlagSet("agents delete")
	g.register(fs)
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	id, err := oneID("agents delete", "agent", rest)
	if err != nil {
		return err
	}
	s, cancel, err := g.dial(ctx, fs)
	if err != nil {
		return err
	}
	defer cancel()
	resp, err := s.agents.DeleteAgent(s.ctx, &managementv1.DeleteAgentRequest{AgentId: id})
	if err != nil {
		return s.fail(err)
	}
	return s.out(cli.Stdout, resp, func(tw *tabwriter.Writer) { row(tw, fmt.Sprintf("deleted agent %d", id)) }, id)
}

func runTokens(ctx context.Context, cli CLI, g *globals, args []string) error {
	return runGroup(ctx, cli, g, "tokens", []subcommand{
		{"create", "mint a token for agentk (--agent-id; --out FILE keeps the secret off the screen)", tokensCreate},
		{"list", "list an agent's tokens (--agent-id)", tokensList},
		{"revoke", "revoke a token: kasctl tokens revoke TOKEN_ID (its tunnels close within a minute)", tokensRevoke},
	}, args)
}

func tokenTable(secret string, tokens ...*managementv1.AgentToken) func(*tabwriter.Writer) {
	return func(tw *tabwriter.Writer) {
		header := []any{"ID", "AGENT", "NAME", "DESCRIPTION", "CREATED", "LAST USED", "REVOKED"}
		if secret != "" {
			header = append(header, "SECRET")
		}
		row(tw, header...)
		for _, t := range tokens {
			cells := []any{t.GetId(), t.GetAgentId(), t.GetName(), orDash(t.GetDescription()), when(t.GetCreatedAt()), when(t.GetLastUsedAt()), when(t.GetRevokedAt())}
			if secret != "" {
				cells = append(cells, secret)
			}
			row(tw, cells...)
		}
	}
}

func tokensCreate(ctx context.Context, cli CLI, g *globals, args []string) error {
	fs := newFlagSet("tokens create")
	g.register(fs)
	agentID := fs.Int64("agent-id", 0, "the agent (required)")
	name := fs.String("name", "default", "the token's name")
	description := fs.String("description", "", "what the token is for")
	out := fs.String("out", "", "write the secret to this file (mode 0600) instead of printing it; agentk reads it with --token-file")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs("tokens create", rest); err != nil {
		return err
	}
	if err := required("--agent-id", *agentID != 0); err != nil {
		return err
	}
	if g.output == outputID && *out == "" {
		return usageError{"tokens create: -o id prints only the token's ID, so the secret needs --out FILE"}
	}
	s, cancel, err := g.dial(ctx, fs)
	if err != nil {
		return err
	}
	defer cancel()
	resp, err := s.agents.CreateAgentToken(s.ctx, &managementv1.CreateAgentTokenRequest{AgentId: *agentID, Name: *name, Description: *description})
	if err != nil {
		return s.fail(err)
	}
	secret := resp.GetSecret()
	if *out != "" {
		if err := writeFileAtomic(*out, []byte(secret+"\n")); err != nil {
			return &exitError{code: ExitError, msg: fmt.Sprintf("--out: token %d was created but its secret could not be written (revoke it): %v", resp.GetToken().GetId(), err)}
		}
		fmt.Fprintf(cli.Stderr, "kasctl: wrote the secret of token %d to %s (give it to agentk: --token-file %s)\n", resp.GetToken().GetId(), *out, *out)
		resp.Secret = "" // off the screen
		secret = ""
	} else if g.output == outputTable {
		fmt.Fprintf(cli.Stderr, "kasctl: the secret is shown once; only its hash is stored\n")
	}
	return s.out(cli.Stdout, resp, tokenTable(secret, resp.GetToken()), resp.GetToken().GetId())
}

func tokensList(ctx context.Context, cli CLI, g *globals, args []string) error {
	fs := newFlagSet("tokens list")
	g.register(fs)
	agentID := fs.Int64("agent-id", 0, "the agent (required)")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs("tokens list", rest); err != nil {
		return err
	}
	if err := required("--agent-id", *agentID != 0); err != nil {
		return err
	}
	s, cancel, err := g.dial(ctx, fs)
	if err != nil {
		return err
	}
	defer cancel()
	resp, err := s.agents.ListAgentTokens(s.ctx, &managementv1.ListAgentTokensRequest{AgentId: *agentID})
	if err != nil {
		return s.fail(err)
	}
	ids := make([]int64, len(resp.GetTokens()))
	for i, t := range resp.GetTokens() {
		ids[i] = t.GetId()
	}
	return s.out(cli.Stdout, resp, tokenTable("", resp.GetTokens()...), ids...)
}

func tokensRevoke(ctx context.Context, cli CLI, g *globals, args []string) error {
	fs := newFlagSet("tokens revoke")
	g.register(fs)
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	id, err := oneID("tokens revoke", "token", rest)
	if err != nil {
		return err
	}
	s, cancel, err := g.dial(ctx, fs)
	if err != nil {
		return err
	}
	defer cancel()
	resp, err := s.agents.RevokeAgentToken(s.ctx, &managementv1.RevokeAgentTokenRequest{TokenId: id})
	if err != nil {
		return s.fail(err)
	}
	return s.out(cli.Stdout, resp, tokenTable("", resp.GetToken()), id)
}

func runConfig(ctx context.Context, cli CLI, g *globals, args []string) error {
	return runGroup(ctx, cli, g, "config", []subcommand{
		{"put", "store a new version of an agent's configuration: kasctl config put --agent-id ID FILE (- reads stdin)", configPut},
		{"get", "print an agent's configuration (--agent-id; --version for an older one)", configGet},
	}, args)
}

// maxConfigSize is the control plane's limit on an agent configuration.
const maxConfigSize = 128 << 10

func configPut(ctx context.Context, cli CLI, g *globals, args []string) error {
	fs := newFlagSet("config put")
	g.register(fs)
	agentID := fs.Int64("agent-id", 0, "the agent (required)")
	expected := fs.Int64("expected-version", 0, "store only if the current version is this one (0: whatever it is)")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := required("--agent-id", *agentID != 0); err != nil {
		return err
	}
	if len(rest) != 1 {
		return usageError{"config put: give the YAML file, or - for stdin, e.g. kasctl config put --agent-id 42 config.yaml"}
	}
	var b []byte
	if rest[0] == "-" {
		b, err = io.ReadAll(io.LimitReader(cli.stdin(), maxConfigSize+1))
	} else {
		b, err = os.ReadFile(rest[0])
	}
	if err != nil {
		return &exitError{code: ExitError, msg: fmt.Sprintf("config put: read the configuration: %v", err)}
	}
	if len(b) > maxConfigSize {
		return usageError{fmt.Sprintf("config put: the configuration is larger than %d KiB", maxConfigSize>>10)}
	}
	s, cancel, err := g.dial(ctx, fs)
	if err != nil {
		return err
	}
	defer cancel()
	resp, err := s.agents.PutAgentConfig(s.ctx, &managementv1.PutAgentConfigRequest{AgentId: *agentID, Yaml: string(b), ExpectedVersion: *expected})
	if err != nil {
		return s.fail(err)
	}
	c := resp.GetConfig()
	return s.out(cli.Stdout, resp, func(tw *tabwriter.Writer) {
		row(tw, "AGENT", "VERSION", "CREATED")
		row(tw, c.GetAgentId(), c.GetVersion(), when(c.GetCreatedAt()))
	}, c.GetVersion())
}

func configGet(ctx context.Context, cli CLI, g *globals, args []string) error {
	fs := newFlagSet("config get")
	g.register(fs)
	agentID := fs.Int64("agent-id", 0, "the agent (required)")
	version := fs.Int64("version", 0, "the version to print (0: the latest)")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs("config get", rest); err != nil {
		return err
	}
	if err := required("--agent-id", *agentID != 0); err != nil {
		return err
	}
	s, cancel, err := g.dial(ctx, fs)
	if err != nil {
		return err
	}
	defer cancel()
	resp, err := s.agents.GetAgentConfig(s.ctx, &managementv1.GetAgentConfigRequest{AgentId: *agentID, Version: *version})
	if err != nil {
		return s.fail(err)
	}
	c := resp.GetConfig()
	if g.output == outputTable {
		// The YAML as put, after a comment: the output is a configuration
		// still.
		y := c.GetYaml()
		if y != "" && !strings.HasSuffix(y, "\n") {
			y += "\n"
		}
		_, err := fmt.Fprintf(cli.Stdout, "# agent %d, configuration version %d, stored %s\n%s", c.GetAgentId(), c.GetVersion(), when(c.GetCreatedAt()), y)
		return err
	}
	return s.out(cli.Stdout, resp, nil, c.GetVersion())
}

func runConnected(ctx context.Context, cli CLI, g *globals, args []string) error {
	fs := newFlagSet("connected")
	g.register(fs)
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	ids, err := parseIDs("an agent", rest)
	if err != nil {
		return err
	}
	s, cancel, err := g.dial(ctx, fs)
	if err != nil {
		return err
	}
	defer cancel()
	if len(ids) == 0 { // every agent
		all, err := s.listAgents(0)
		if err != nil {
			return err
		}
		for _, a := range all.GetAgents() {
			ids = append(ids, a.GetId())
		}
	}
	resp := &managementv1.ListConnectedAgentsResponse{}
	for len(ids) > 0 {
		n := min(len(ids), 1000)
		part, err := s.agents.ListConnectedAgents(s.ctx, &managementv1.ListConnectedAgentsRequest{AgentIds: ids[:n]})
		if err != nil {
			return s.fail(err)
		}
		resp.Agents = append(resp.Agents, part.GetAgents()...)
		ids = ids[n:]
	}
	var connected []int64
	for _, a := range resp.GetAgents() {
		connected = append(connected, a.GetAgentId())
	}
	return s.out(cli.Stdout, resp, func(tw *tabwriter.Writer) {
		row(tw, "AGENT", "NODE", "PRIVATE URL", "TUNNELS", "CONNECTED SINCE", "AGENT VERSION", "DRAINING")
		for _, a := range resp.GetAgents() {
			for _, n := range a.GetNodes() {
				row(tw, a.GetAgentId(), n.GetNodeId(), n.GetPrivateUrl(), n.GetTunnels(), when(n.GetConnectedSince()), orDash(n.GetAgentVersion()), n.GetDraining())
			}
		}
	}, connected...)
}
