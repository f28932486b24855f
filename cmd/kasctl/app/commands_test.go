package app

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	dataplanev1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/internal/cptest"
	"github.com/kas-project/kas/internal/kascookie"
)

// kasctl runs the command line against env's control plane, stdin given.
type kasctl struct {
	t    *testing.T
	env  *cptest.Env
	vars map[string]string
}

func newKasctl(t *testing.T) *kasctl {
	env := cptest.Start(t)
	return &kasctl{t: t, env: env, vars: map[string]string{EnvServer: env.URL, EnvAPIKeyFile: writeKey(t, env.APIKey)}}
}

// run runs kasctl with args and stdin; it returns the exit code and output.
func (k *kasctl) run(stdin string, args ...string) (int, string, string) {
	k.t.Helper()
	var out, errb bytes.Buffer
	code := CLI{Stdout: &out, Stderr: &errb, Stdin: strings.NewReader(stdin), LookupEnv: func(name string) (string, bool) {
		v, ok := k.vars[name]
		return v, ok
	}}.Run(context.Background(), args)
	return code, out.String(), errb.String()
}

// ok runs kasctl and fails the test unless it exits 0; it returns stdout.
func (k *kasctl) ok(args ...string) string {
	k.t.Helper()
	code, out, errOut := k.run("", args...)
	if code != ExitOK {
		k.t.Fatalf("kasctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// json runs kasctl -o json and decodes stdout into resp.
func (k *kasctl) json(resp proto.Message, args ...string) {
	k.t.Helper()
	out := k.ok(append([]string{"-o", "json"}, args...)...)
	if err := protojson.Unmarshal([]byte(out), resp); err != nil {
		k.t.Fatalf("kasctl -o json %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// fails runs kasctl, expecting exit code and exactly one line on stderr
// (and nothing on stdout) that equals want, or starts with it when want
// ends in "…".
func (k *kasctl) fails(code int, want string, args ...string) {
	k.t.Helper()
	got, out, errOut := k.run("", args...)
	prefix, isPrefix := strings.CutSuffix(want, "…")
	match := errOut == want+"\n"
	if isPrefix {
		match = strings.HasPrefix(errOut, prefix) && strings.Count(errOut, "\n") == 1 && strings.HasSuffix(errOut, "\n")
	}
	if got != code || !match || out != "" {
		k.t.Errorf("kasctl %s: exit %d, stdout %q, stderr %q; want exit %d and the one line %q", strings.Join(args, " "), got, out, errOut, code, want)
	}
}

// table splits a table into rows of fields; it checks the header.
func table(t *testing.T, out string, header ...string) [][]string {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if got := strings.Join(strings.Fields(lines[0]), " "); got != strings.Join(header, " ") {
		t.Fatalf("table header %q, want %q\n%s", got, strings.Join(header, " "), out)
	}
	var rows [][]string
	for _, l := range lines[1:] {
		rows = append(rows, strings.Fields(l))
	}
	return rows
}

func id(n int64) string { return strconv.FormatInt(n, 10) }

func TestKasctlAgentsTokensConfig(t *testing.T) {
	k := newKasctl(t)
	ctx := t.Context()

	// agents create: table, json, id.
	rows := table(t, k.ok("agents", "create", "--name", "prod", "--project-id", "7"), "ID", "PROJECT", "NAME", "CONFIG", "VERSION", "CREATED")
	if len(rows) != 1 || rows[0][1] != "7" || rows[0][2] != "prod" || rows[0][3] != "-" {
		t.Fatalf("agents create rows %q", rows)
	}
	prod, _ := strconv.ParseInt(rows[0][0], 10, 64)
	var created managementv1.CreateAgentResponse
	k.json(&created, "agents", "create", "--name", "staging")
	staging := created.GetAgent().GetId()
	if created.GetAgent().GetName() != "staging" || created.GetAgent().GetProjectId() != 1 || staging <= prod {
		t.Fatalf("agents create -o json: %v", &created)
	}
	third := k.ok("agents", "create", "--name", "dev", "--project-id", "7", "-o", "id")
	devID, err := strconv.ParseInt(strings.TrimSuffix(third, "\n"), 10, 64)
	if err != nil || devID <= staging {
		t.Fatalf("agents create -o id: %q", third)
	}
	k.fails(ExitUsage, "kasctl: --name is required", "agents", "create")
	k.fails(ExitError, "kasctl: …", "agents", "create", "--name", "prod", "--project-id", "7") // already exists
	k.fails(ExitError, "kasctl: --name: …", "agents", "create", "--name", "Not A DNS Label")

	// agents list: every page, a project filter.
	rows = table(t, k.ok("agents", "list"), "ID", "PROJECT", "NAME", "CONFIG", "VERSION", "CREATED")
	if len(rows) != 3 || rows[0][2] != "prod" || rows[1][2] != "staging" || rows[2][2] != "dev" {
		t.Errorf("agents list rows %q", rows)
	}
	var list managementv1.ListAgentsResponse
	k.json(&list, "agents", "list", "--project-id", "7")
	if len(list.GetAgents()) != 2 || list.GetAgents()[0].GetId() != prod || list.GetAgents()[1].GetId() != devID {
		t.Errorf("agents list --project-id 7 -o json: %v", &list)
	}
	if got := k.ok("agents", "list", "-o", "id", "--project-id", "7"); got != id(prod)+"\n"+id(devID)+"\n" {
		t.Errorf("agents list -o id: %q", got)
	}

	// agents get: flags after the ID too.
	rows = table(t, k.ok("agents", "get", id(staging)), "ID", "PROJECT", "NAME", "CONFIG", "VERSION", "CREATED")
	if len(rows) != 1 || rows[0][0] != id(staging) || rows[0][2] != "staging" {
		t.Errorf("agents get rows %q", rows)
	}
	var got managementv1.GetAgentResponse
	k.json(&got, "agents", "get", id(prod))
	if got.GetAgent().GetName() != "prod" || got.GetAgent().GetCreatedAt() == nil {
		t.Errorf("agents get -o json: %v", &got)
	}
	k.fails(ExitNotFound, "kasctl: agent 999999 not found", "agents", "get", "999999")
	k.fails(ExitUsage, `kasctl: "abc" is not an agent ID (a positive number)`, "agents", "get", "abc")
	k.fails(ExitUsage, "kasctl: agents get: give one agent ID, e.g. kasctl agents get 42", "agents", "get")

	// tokens create: the secret printed once, or written to a file only.
	rows = table(t, k.ok("tokens", "create", "--agent-id", id(prod), "--name", "ci", "--description", "the CI runner"),
		"ID", "AGENT", "NAME", "DESCRIPTION", "CREATED", "LAST", "USED", "REVOKED", "SECRET")
	if len(rows) != 1 || rows[0][1] != id(prod) || rows[0][2] != "ci" || rows[0][len(rows[0])-2] != "-" {
		t.Fatalf("tokens create rows %q", rows)
	}
	secret := rows[0][len(rows[0])-1]
	auth, err := k.env.Auth.AuthenticateAgent(ctx, &dataplanev1.AuthenticateAgentRequest{Token: secret})
	if err != nil || auth.GetAgentId() != prod {
		t.Fatalf("the printed secret does not authenticate agent %d: %v, %v", prod, auth, err)
	}
	file := filepath.Join(t.TempDir(), "agentk-token")
	code, out, errOut := k.run("", "tokens", "create", "--agent-id", id(staging), "--out", file, "-o", "id")
	tokenID, _ := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if code != ExitOK || tokenID <= 0 || !strings.Contains(errOut, "wrote the secret of token "+id(tokenID)+" to "+file) {
		t.Fatalf("tokens create --out: exit %d, %q, %q", code, out, errOut)
	}
	b, err := os.ReadFile(file)
	if fi, _ := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, %v", fi, err)
	}
	if auth, err := k.env.Auth.AuthenticateAgent(ctx, &dataplanev1.AuthenticateAgentRequest{Token: strings.TrimSpace(string(b))}); err != nil || auth.GetTokenId() != tokenID {
		t.Fatalf("the secret in %s: %v, %v", file, auth, err)
	}
	var tok managementv1.CreateAgentTokenResponse
	k.json(&tok, "tokens", "create", "--agent-id", id(staging), "--out", filepath.Join(t.TempDir(), "t"))
	if tok.GetSecret() != "" || tok.GetToken().GetAgentId() != staging || tok.GetToken().GetName() != "default" {
		t.Errorf("tokens create --out -o json shows %v; want the token without its secret", &tok)
	}
	k.fails(ExitUsage, "kasctl: --agent-id is required", "tokens", "create")
	k.fails(ExitUsage, "kasctl: tokens create: -o id prints only the token's ID, so the secret needs --out FILE", "tokens", "create", "--agent-id", "1", "-o", "id")
	k.fails(ExitNotFound, "kasctl: agent 999999 not found", "tokens", "create", "--agent-id", "999999")

	// tokens list and revoke.
	rows = table(t, k.ok("tokens", "list", "--agent-id", id(staging)), "ID", "AGENT", "NAME", "DESCRIPTION", "CREATED", "LAST", "USED", "REVOKED")
	if len(rows) != 2 || rows[0][0] != id(tokenID) || rows[0][len(rows[0])-1] != "-" {
		t.Errorf("tokens list rows %q", rows)
	}
	rows = table(t, k.ok("tokens", "revoke", id(tokenID)), "ID", "AGENT", "NAME", "DESCRIPTION", "CREATED", "LAST", "USED", "REVOKED")
	if len(rows) != 1 || rows[0][len(rows[0])-1] == "-" {
		t.Errorf("tokens revoke rows %q", rows)
	}
	var tokens managementv1.ListAgentTokensResponse
	k.json(&tokens, "tokens", "list", "--agent-id", id(staging))
	if len(tokens.GetTokens()) != 2 || tokens.GetTokens()[0].GetRevokedAt() == nil || tokens.GetTokens()[1].GetRevokedAt() != nil {
		t.Errorf("tokens list -o json after a revoke: %v", &tokens)
	}
	if _, err := k.env.Auth.AuthenticateAgent(ctx, &dataplanev1.AuthenticateAgentRequest{Token: strings.TrimSpace(string(b))}); err == nil {
		t.Error("a revoked token still authenticates")
	}
	k.fails(ExitNotFound, "kasctl: agent token 999999 not found", "tokens", "revoke", "999999")

	// config put (file and stdin) and get.
	k.fails(ExitNotFound, "kasctl: configuration of agent "+id(prod)+" not found", "config", "get", "--agent-id", id(prod))
	cfgFile := filepath.Join(t.TempDir(), "config.yaml")
	const v1 = "observability:\n  logging:\n    level: debug\n"
	if err := os.WriteFile(cfgFile, []byte(v1), 0o600); err != nil {
		t.Fatal(err)
	}
	rows = table(t, k.ok("config", "put", "--agent-id", id(prod), cfgFile), "AGENT", "VERSION", "CREATED")
	if len(rows) != 1 || rows[0][0] != id(prod) || rows[0][1] != "1" {
		t.Errorf("config put rows %q", rows)
	}
	const v2 = "user_access:\n  access_as:\n    agent: {}\n"
	code, out, errOut = k.run(v2, "-o", "json", "config", "put", "--agent-id", id(prod), "--expected-version", "1", "-")
	var put managementv1.PutAgentConfigResponse
	if code != ExitOK || protojson.Unmarshal([]byte(out), &put) != nil || put.GetConfig().GetVersion() != 2 || put.GetConfig().GetYaml() != v2 {
		t.Fatalf("config put - -o json: exit %d, %q, %q", code, out, errOut)
	}
	code, _, errOut = k.run("# stale\n", "config", "put", "--agent-id", id(prod), "--expected-version", "1", "-")
	if code != ExitError || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "version 2") {
		t.Errorf("config put with a stale version: exit %d, %q", code, errOut)
	}
	code, _, errOut = k.run("no_such_setting: true\n", "config", "put", "--agent-id", id(prod), "-")
	if code != ExitError || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "no_such_setting") {
		t.Errorf("config put with an unknown setting: exit %d, %q", code, errOut)
	}
	out = k.ok("config", "get", "--agent-id", id(prod))
	if header, body, _ := strings.Cut(out, "\n"); !strings.HasPrefix(header, "# agent "+id(prod)+", configuration version 2, stored ") || body != v2 {
		t.Errorf("config get:\n%s", out)
	}
	var cfg managementv1.GetAgentConfigResponse
	k.json(&cfg, "config", "get", "--agent-id", id(prod), "--version", "1")
	if cfg.GetConfig().GetVersion() != 1 || cfg.GetConfig().GetYaml() != v1 {
		t.Errorf("config get --version 1 -o json: %v", &cfg)
	}
	if got := k.ok("agents", "get", id(prod), "-o", "json"); !strings.Contains(got, `"configVersion": "2"`) && !strings.Contains(got, `"configVersion":  "2"`) {
		t.Errorf("the agent does not show configuration version 2: %s", got)
	}
	k.fails(ExitNotFound, "kasctl: configuration version 7 of agent "+id(prod)+" not found", "config", "get", "--agent-id", id(prod), "--version", "7")
	k.fails(ExitUsage, "kasctl: config put: give the YAML file, or - for stdin, e.g. kasctl config put --agent-id 42 config.yaml", "config", "put", "--agent-id", id(prod))
	k.fails(ExitError, "kasctl: config put: read the configuration: …", "config", "put", "--agent-id", id(prod), filepath.Join(t.TempDir(), "missing.yaml"))

	// agents delete.
	if got := k.ok("agents", "delete", id(devID)); got != "deleted agent "+id(devID)+"\n" {
		t.Errorf("agents delete: %q", got)
	}
	if got := k.ok("agents", "delete", id(staging), "-o", "json"); strings.TrimSpace(got) != "{}" {
		t.Errorf("agents delete -o json: %q", got)
	}
	k.fails(ExitNotFound, "kasctl: agent "+id(devID)+" not found", "agents", "get", id(devID))
	k.fails(ExitNotFound, "kasctl: agent "+id(devID)+" not found", "agents", "delete", id(devID))
}

func TestKasctlCredentials(t *testing.T) {
	k := newKasctl(t)
	ctx := t.Context()
	a, err := k.env.Agents.CreateAgent(ctx, &managementv1.CreateAgentRequest{ProjectId: 1, Name: "prod"})
	if err != nil {
		t.Fatal(err)
	}
	agent := a.GetAgent().GetId()
	authorize := func(req *dataplanev1.AuthorizeProxyRequest) dataplanev1.AuthorizeProxyResponse_Decision {
		t.Helper()
		req.AgentId = agent
		resp, err := k.env.Auth.AuthorizeProxy(ctx, req)
		if err != nil {
			t.Fatalf("AuthorizeProxy: %v", err)
		}
		return resp.GetDecision()
	}
	const allowed = dataplanev1.AuthorizeProxyResponse_DECISION_ALLOWED

	// Access tokens.
	rows := table(t, k.ok("credentials", "access-token", "create", "--agent-id", id(agent), "--user-id", "7", "--username", "alice", "--groups", "grp/a,grp/b", "--name", "laptop"),
		"ID", "NAME", "USER", "ID", "USERNAME", "AGENTS", "EXPIRES", "CREATED", "REVOKED", "SECRET")
	if len(rows) != 1 || rows[0][1] != "laptop" || rows[0][2] != "7" || rows[0][3] != "alice" || rows[0][4] != id(agent) {
		t.Fatalf("access-token create rows %q", rows)
	}
	pat := rows[0][len(rows[0])-1]
	if authorize(&dataplanev1.AuthorizeProxyRequest{Credential: &dataplanev1.AuthorizeProxyRequest_AccessToken{AccessToken: pat}}) != allowed {
		t.Error("the printed access token is not allowed")
	}
	var created managementv1.CreateAccessTokenResponse
	k.json(&created, "credentials", "access-token", "create", "--agent-id", id(agent), "--user-id", "8", "--username", "bob", "--expires-in", "1h")
	if created.GetSecret() == "" || created.GetToken().GetUser().GetUsername() != "bob" ||
		time.Until(created.GetToken().GetExpiresAt().AsTime()) > time.Hour {
		t.Errorf("access-token create -o json: %v", &created)
	}
	k.fails(ExitUsage, "kasctl: --agent-id, --user-id and --username are required", "credentials", "access-token", "create")
	k.fails(ExitUsage, "kasctl: --expires-in: must be positive", "credentials", "access-token", "create", "--agent-id", "1", "--user-id", "1", "--username", "u", "--expires-in", "-1h")
	k.fails(ExitUsage, "kasctl: credentials access-token create: invalid value \"x\" for flag -agent-id: not a list of positive IDs", "credentials", "access-token", "create", "--agent-id", "x")
	k.fails(ExitError, "kasctl: --expires-in: …", "credentials", "access-token", "create", "--agent-id", id(agent), "--user-id", "1", "--username", "u", "--expires-in", "9000h")
	k.fails(ExitNotFound, "kasctl: agent 999999 not found", "credentials", "access-token", "create", "--agent-id", "999999", "--user-id", "1", "--username", "u")

	rows = table(t, k.ok("credentials", "access-token", "list", "--agent-id", id(agent)), "ID", "NAME", "USER", "ID", "USERNAME", "AGENTS", "EXPIRES", "CREATED", "REVOKED")
	if len(rows) != 2 || rows[0][3] != "alice" || rows[1][3] != "bob" {
		t.Errorf("access-token list rows %q", rows)
	}
	var list managementv1.ListAccessTokensResponse
	k.json(&list, "credentials", "access-token", "list", "--user-id", "7")
	if len(list.GetTokens()) != 1 || list.GetTokens()[0].GetName() != "laptop" || strings.Join(list.GetTokens()[0].GetUser().GetGroups(), ",") != "grp/a,grp/b" {
		t.Errorf("access-token list --user-id 7 -o json: %v", &list)
	}
	aliceID := list.GetTokens()[0].GetId()
	if got := k.ok("credentials", "access-token", "revoke", id(aliceID)); got != "revoked access token "+id(aliceID)+"\n" {
		t.Errorf("access-token revoke: %q", got)
	}
	if authorize(&dataplanev1.AuthorizeProxyRequest{Credential: &dataplanev1.AuthorizeProxyRequest_AccessToken{AccessToken: pat}}) == allowed {
		t.Error("a revoked access token is still allowed")
	}
	k.fails(ExitNotFound, "kasctl: access token 999999 not found", "credentials", "access-token", "revoke", "999999")

	// CI job tokens.
	rows = table(t, k.ok("credentials", "ci-token", "create", "--job-id", "55", "--project-id", "3", "--project-path", "grp/app", "--group-path", "grp",
		"--user-id", "7", "--username", "alice", "--agent-id", id(agent), "--environment", "prod", "--pipeline-id", "9"),
		"ID", "JOB", "PROJECT", "EXPIRES", "SECRET")
	if len(rows) != 1 || rows[0][1] != "55" || rows[0][2] != "grp/app" {
		t.Fatalf("ci-token create rows %q", rows)
	}
	ci := rows[0][4]
	if authorize(&dataplanev1.AuthorizeProxyRequest{Credential: &dataplanev1.AuthorizeProxyRequest_CiJobToken{CiJobToken: ci}}) != allowed {
		t.Error("the printed CI job token is not allowed")
	}
	var ciResp managementv1.CreateCIJobTokenResponse
	k.json(&ciResp, "credentials", "ci-token", "create", "--job-id", "56", "--project-id", "3", "--project-path", "grp/app")
	if ciResp.GetId() <= 0 || ciResp.GetSecret() == "" {
		t.Errorf("ci-token create -o json: %v", &ciResp)
	}
	k.fails(ExitUsage, "kasctl: --job-id, --project-id and --project-path are required", "credentials", "ci-token", "create")
	k.fails(ExitUsage, "kasctl: --user-id is required", "credentials", "ci-token", "create", "--job-id", "1", "--project-id", "1", "--project-path", "p", "--username", "u")
	rowID, _ := strconv.ParseInt(rows[0][0], 10, 64)
	if got := k.ok("credentials", "ci-token", "revoke", id(rowID)); got != "revoked CI job token "+id(rowID)+"\n" {
		t.Errorf("ci-token revoke: %q", got)
	}
	if authorize(&dataplanev1.AuthorizeProxyRequest{Credential: &dataplanev1.AuthorizeProxyRequest_CiJobToken{CiJobToken: ci}}) == allowed {
		t.Error("a revoked CI job token is still allowed")
	}
	k.fails(ExitNotFound, "kasctl: ci job token 999999 not found", "credentials", "ci-token", "revoke", "999999")

	// Sessions.
	var sess managementv1.CreateSessionResponse
	k.json(&sess, "credentials", "session", "create", "--user-id", "7", "--username", "alice", "--agent-id", id(agent))
	if sess.GetId() <= 0 || sess.GetSessionId() == "" || sess.GetCsrfToken() == "" {
		t.Fatalf("session create -o json: %v", &sess)
	}
	cookie, err := kascookie.Encrypt(k.env.APIKey, sess.GetSessionId())
	if err != nil {
		t.Fatal(err)
	}
	session := &dataplanev1.AuthorizeProxyRequest{
		Credential: &dataplanev1.AuthorizeProxyRequest_SessionCookie{SessionCookie: cookie},
		CsrfToken:  sess.GetCsrfToken(),
	}
	if authorize(session) != allowed {
		t.Error("the session is not allowed")
	}
	rows = table(t, k.ok("credentials", "session", "create", "--user-id", "8", "--username", "bob", "--project-path", "grp/app", "--expires-in", "1h"),
		"ID", "USERNAME", "EXPIRES", "SESSION", "ID", "CSRF", "TOKEN")
	if len(rows) != 1 || rows[0][1] != "bob" || len(rows[0]) != 5 {
		t.Errorf("session create rows %q", rows)
	}
	if got := k.ok("credentials", "session", "revoke", id(sess.GetId())); got != "revoked session "+id(sess.GetId())+"\n" {
		t.Errorf("session revoke: %q", got)
	}
	if authorize(session) == allowed {
		t.Error("a revoked session is still allowed")
	}
	k.fails(ExitUsage, "kasctl: --user-id and --username are required", "credentials", "session", "create")
	k.fails(ExitNotFound, "kasctl: session 999999 not found", "credentials", "session", "revoke", "999999")
	k.fails(ExitUsage, `kasctl: credentials: unknown command "pat"; use one of access-token, ci-token, session`, "credentials", "pat")
}

func TestKasctlRouting(t *testing.T) {
	k := newKasctl(t)
	ctx := t.Context()
	var agents []int64
	for _, name := range []string{"connected", "idle"} {
		a, err := k.env.Agents.CreateAgent(ctx, &managementv1.CreateAgentRequest{ProjectId: 1, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		agents = append(agents, a.GetAgent().GetId())
	}
	// A node holding two tunnels of the first agent, as a dataplane node
	// reports them.
	if _, err := k.env.Nodes.RegisterNode(ctx, &dataplanev1.RegisterNodeRequest{NodeId: "node-a", BootId: "boot-1", PrivateUrl: "grpc://10.0.0.1:8155", Version: "v9"}); err != nil {
		t.Fatal(err)
	}
	var tunnels []*dataplanev1.Tunnel
	for i, tid := range []string{"t1", "t2"} {
		tunnels = append(tunnels, &dataplanev1.Tunnel{TunnelId: tid, AgentId: agents[0], Seq: int64(i + 1), AgentVersion: "agentk/v1", ConnectedAt: timestamppb.Now()})
	}
	if _, err := k.env.Nodes.RegisterTunnels(ctx, &dataplanev1.RegisterTunnelsRequest{NodeId: "node-a", BootId: "boot-1", Tunnels: tunnels}); err != nil {
		t.Fatal(err)
	}

	rows := table(t, k.ok("nodes"), "NODE", "PRIVATE", "URL", "STATE", "TUNNELS", "VERSION", "REGISTERED", "HEARTBEAT", "LEASE", "EXPIRES")
	if len(rows) != 1 || strings.Join(rows[0][:5], " ") != "node-a grpc://10.0.0.1:8155 live 2 v9" {
		t.Errorf("nodes rows %q", rows)
	}
	var nodes managementv1.ListNodesResponse
	k.json(&nodes, "nodes")
	if len(nodes.GetNodes()) != 1 || nodes.GetNodes()[0].GetBootId() != "boot-1" || nodes.GetNodes()[0].GetTunnels() != 2 {
		t.Errorf("nodes -o json: %v", &nodes)
	}
	if got := k.ok("nodes", "-o", "id"); got != "node-a\n" {
		t.Errorf("nodes -o id: %q", got)
	}

	rows = table(t, k.ok("routes"), "AGENT", "NODE", "PRIVATE", "URL", "TUNNELS", "CONNECTED", "SINCE", "HEARTBEAT", "AGE", "STATE")
	if len(rows) != 1 || rows[0][0] != id(agents[0]) || rows[0][1] != "node-a" || rows[0][3] != "2" || rows[0][6] != "live" {
		t.Errorf("routes rows %q", rows)
	}
	var routes managementv1.ListRoutesResponse
	k.json(&routes, "routes", "--agent-id", id(agents[1]))
	if len(routes.GetRoutes()) != 0 {
		t.Errorf("routes of the idle agent: %v", &routes)
	}
	k.json(&routes, "routes", "--agent-id", id(agents[0]))
	if len(routes.GetRoutes()) != 1 || routes.GetRoutes()[0].GetPrivateUrl() != "grpc://10.0.0.1:8155" {
		t.Errorf("routes --agent-id -o json: %v", &routes)
	}

	// connected: the given agents, or every agent.
	for _, args := range [][]string{{"connected", id(agents[0]), id(agents[1])}, {"connected"}} {
		rows = table(t, k.ok(args...), "AGENT", "NODE", "PRIVATE", "URL", "TUNNELS", "CONNECTED", "SINCE", "AGENT", "VERSION", "DRAINING")
		if len(rows) != 1 || rows[0][0] != id(agents[0]) || rows[0][1] != "node-a" || rows[0][3] != "2" || rows[0][5] != "agentk/v1" || rows[0][6] != "false" {
			t.Errorf("%q rows %q", args, rows)
		}
	}
	var connected managementv1.ListConnectedAgentsResponse
	k.json(&connected, "connected", id(agents[0])+","+id(agents[1]))
	if len(connected.GetAgents()) != 1 || connected.GetAgents()[0].GetAgentId() != agents[0] || connected.GetAgents()[0].GetNodes()[0].GetTunnels() != 2 {
		t.Errorf("connected -o json: %v", &connected)
	}
	if got := k.ok("connected", "-o", "id", id(agents[1])); got != "" {
		t.Errorf("connected -o id of an idle agent: %q", got)
	}
	k.fails(ExitUsage, `kasctl: "x" is not an agent ID (a positive number)`, "connected", "x")
}

// Errors say what to fix in one line, with the exit code scripts rely on.
func TestKasctlErrors(t *testing.T) {
	k := newKasctl(t)
	server := k.vars[EnvServer]

	k.vars[EnvServer] = "http://127.0.0.1:1"
	k.fails(ExitError, "kasctl: cannot reach the control plane at http://127.0.0.1:1 (is kas running? set --server)", "agents", "list")
	k.vars[EnvServer] = server
	k.fails(ExitError, "kasctl: cannot reach the control plane at http://127.0.0.1:1 (is kas running? set --server)", "--server", "http://127.0.0.1:1", "nodes")
	k.fails(ExitUsage, `kasctl: --server: "ftp://x" must use http://, https:// or unix://…`, "nodes", "--server", "ftp://x")

	keyFile := k.vars[EnvAPIKeyFile]
	k.vars[EnvAPIKeyFile] = writeKey(t, make([]byte, 32))
	k.fails(ExitError, "kasctl: the control plane at "+server+" refused the call's signature: is --api-secret-key-file ("+k.vars[EnvAPIKeyFile]+") its api_secret_key?", "nodes")
	k.vars[EnvAPIKeyFile] = filepath.Join(t.TempDir(), "missing")
	k.fails(ExitError, "kasctl: --api-secret-key-file: open …", "nodes")
	delete(k.vars, EnvAPIKeyFile) // and no .kas/secrets/api_secret_key here
	k.fails(ExitError, "kasctl: --api-secret-key-file (or $KASCTL_API_SECRET_KEY_FILE) is required to call the control plane", "nodes")
	k.vars[EnvAPIKeyFile] = keyFile

	k.fails(ExitUsage, "kasctl: agents list: flag provided but not defined: -frob", "agents", "list", "--frob")
	k.fails(ExitUsage, "kasctl: routes: unexpected argument \"now\"", "routes", "now")
	k.fails(ExitUsage, `kasctl: agents: unknown command "remove"; use one of create, list, get, delete`, "agents", "remove")
	k.fails(ExitUsage, "kasctl: agents: give a command: create, list, get, delete (kasctl agents --help)", "agents")
	k.fails(ExitUsage, `kasctl: unknown command "agent" (kasctl --help lists them)`, "agent")
	k.fails(ExitUsage, `kasctl: --output: "yaml" is not table, json or id`, "-o", "yaml", "nodes")

	// Help on stdout, exit 0: the commands and the exit codes.
	code, out, _ := k.run("", "--help")
	for _, want := range []string{"agents", "tokens", "config", "credentials", "connected", "routes", "nodes", "kubeconfig", "3 not found", "-o, --output FORMAT"} {
		if code != ExitOK || !strings.Contains(out, want) {
			t.Errorf("kasctl --help: exit %d, lacks %q:\n%s", code, want, out)
		}
	}
	if code, out, _ := k.run("", "credentials", "access-token", "--help"); code != ExitOK || !strings.Contains(out, "Usage: kasctl credentials access-token <command>") || !strings.Contains(out, "revoke") {
		t.Errorf("credentials access-token --help: exit %d\n%s", code, out)
	}
	if code, out, _ := k.run("", "tokens", "create", "--help"); code != ExitOK || !strings.Contains(out, "-out") {
		t.Errorf("tokens create --help: exit %d\n%s", code, out)
	}
	// -o text is the table, as before.
	if out := k.ok("-o", "text", "nodes"); !strings.HasPrefix(out, "NODE") {
		t.Errorf("-o text: %q", out)
	}
}

// kasctl reaches a control plane on a unix socket, as the seed's
// single-node setup serves it.
func TestKasctlUnixSocket(t *testing.T) {
	k := newKasctl(t)
	dir, err := os.MkdirTemp("", "kasctl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "api.socket")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: k.env.Server.Handler()}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	k.vars[EnvServer] = "unix://" + sock
	if got := k.ok("agents", "create", "--name", "via-socket", "-o", "id"); got != "1\n" {
		t.Errorf("agents create over a unix socket: %q", got)
	}
}
