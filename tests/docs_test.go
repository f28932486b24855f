package tests

// The documentation under docs/ is tested here, so that it cannot drift
// from the code: the Ruby of docs/rails.md runs against a real control
// plane, the SQL of docs/sql.md against a real database filled through
// the control plane's API, and docs/operator.md's settings, configuration
// examples, quoted messages and metric names are checked against what kas
// really has and says.
//
// Code blocks take part through a marker on the line right above them:
//
//	<!-- test: connect grpc -->   docs/rails.md: Ruby groups the block belongs to
//	<!-- test: sql NAME -->       docs/sql.md: the recipe NAME (see sqlRecipes)
//	<!-- test: config ROLE -->    docs/operator.md: a configuration file for ROLE
//	<!-- test: verify-config -->  docs/operator.md: kas.yaml, then a console session
//	<!-- test: k8s -->            docs/operator.md: a Kubernetes manifest fragment

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"
	"gopkg.in/yaml.v3"

	"github.com/kas-project/kas/cmd/kas/app"
	"github.com/kas-project/kas/controlplane"
	"github.com/kas-project/kas/dataplane/discovery"
	dataplanev1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/config"
	"github.com/kas-project/kas/internal/cptest"
	"github.com/kas-project/kas/internal/kascookie"
	"github.com/kas-project/kas/internal/pgtest"
)

// docWait bounds every wait on a condition in these tests.
const docWait = 30 * time.Second

// docBlock is a fenced code block of a document.
type docBlock struct {
	Lang   string
	Body   string
	Marker []string // the fields after "test:" in the comment right above; nil without one
	Line   int      // of the opening fence
}

var docMarkerRE = regexp.MustCompile(`^<!--\s*test:\s*(.*?)\s*-->$`)

func readDoc(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "docs", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// docBlocks returns the fenced blocks of doc in order.
func docBlocks(doc string) []docBlock {
	lines := strings.Split(doc, "\n")
	var blocks []docBlock
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "```") {
			continue
		}
		start := i
		b := docBlock{Lang: strings.TrimSpace(strings.TrimPrefix(lines[i], "```")), Line: start + 1}
		var body []string
		for i++; i < len(lines) && lines[i] != "```"; i++ {
			body = append(body, lines[i])
		}
		b.Body = strings.Join(body, "\n") + "\n"
		for j := start - 1; j >= 0; j-- {
			l := strings.TrimSpace(lines[j])
			if l == "" {
				continue
			}
			if m := docMarkerRE.FindStringSubmatch(l); m != nil {
				b.Marker = strings.Fields(m[1])
			}
			break
		}
		blocks = append(blocks, b)
	}
	return blocks
}

// stripFences removes the fenced blocks of doc, leaving its prose.
func stripFences(doc string) string {
	var out []string
	in := false
	for _, l := range strings.Split(doc, "\n") {
		if strings.HasPrefix(l, "```") {
			in = !in
			continue
		}
		if !in {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// writeDocKeyFile writes key as a key file (base64 text) and returns its path.
func writeDocKeyFile(t *testing.T, key []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// ---------------------------------------------------------------------------
// docs/rails.md

// railsReport is what the epilogue appended to the Ruby of docs/rails.md
// prints: the variables the page's blocks define.
type railsReport struct {
	AgentID           int64   `json:"agent_id"`
	AgentToken        string  `json:"agent_token"`
	TokenID           int64   `json:"token_id"`
	ConfigVersion     int64   `json:"config_version"`
	PATAuthorization  string  `json:"pat_authorization"`
	CIAuthorization   string  `json:"ci_authorization"`
	SessionID         string  `json:"session_id"`
	Cookie            string  `json:"cookie"`
	CSRFToken         string  `json:"csrf_token"`
	ConnectedAgentIDs []int64 `json:"connected_agent_ids"`
	SameAgentID       int64   `json:"same_agent_id"`
	ConfigError       string  `json:"config_error"`
}

const railsEpilogue = `
puts 'KAS_DOCS_REPORT ' + JSON.generate(
  agent_id: agent_id, agent_token: agent_token, token_id: token_id, config_version: config_version,
  pat_authorization: pat_authorization, ci_authorization: ci_authorization,
  session_id: session_id, cookie: cookie, csrf_token: csrf_token,
  connected_agent_ids: connected_agent_ids, same_agent_id: same_agent_id, config_error: config_error
)
`

// TestDocsRails runs the Ruby of docs/rails.md, each client's blocks in
// order as one script, against a real control plane, and checks through
// the control plane what the script made.
func TestDocsRails(t *testing.T) {
	doc := readDoc(t, "rails.md")
	groups := map[string][]string{}
	for _, b := range docBlocks(doc) {
		if b.Lang != "ruby" {
			continue
		}
		if len(b.Marker) == 0 {
			t.Errorf("docs/rails.md:%d: ```ruby block without a <!-- test: connect|grpc --> marker", b.Line)
			continue
		}
		for _, g := range b.Marker {
			if g != "connect" && g != "grpc" {
				t.Errorf("docs/rails.md:%d: unknown test group %q", b.Line, g)
			}
			groups[g] = append(groups[g], fmt.Sprintf("# docs/rails.md:%d\n%s", b.Line, b.Body))
		}
	}
	if len(groups["connect"]) < 5 || len(groups["grpc"]) < 5 {
		t.Fatalf("docs/rails.md: %d connect and %d grpc blocks; the page shows every call both ways", len(groups["connect"]), len(groups["grpc"]))
	}
	t.Run("connect", func(t *testing.T) {
		ruby := requireTool(t, "ruby", `require "net/http"; require "openssl"; OpenSSL::KDF.respond_to?(:hkdf) or abort "no OpenSSL::KDF.hkdf"`)
		runRailsDoc(t, ruby, groups["connect"])
	})
	t.Run("grpc", func(t *testing.T) {
		ruby := requireTool(t, "ruby", `require "grpc"`)
		runRailsDoc(t, ruby, groups["grpc"])
	})
}

func runRailsDoc(t *testing.T, ruby string, blocks []string) {
	env := cptest.Start(t)
	ctx := context.Background()
	const projectID = 42 // the page's project

	// An agent of the project with a tunnel, for "connected agents".
	existing, err := env.Agents.CreateAgent(ctx, &managementv1.CreateAgentRequest{ProjectId: projectID, Name: "existing"})
	if err != nil {
		t.Fatal(err)
	}
	existingID := existing.Agent.Id
	if _, err := env.Nodes.RegisterNode(ctx, &dataplanev1.RegisterNodeRequest{NodeId: "node-1", BootId: "boot-1", PrivateUrl: "grpc://10.0.0.1:8155"}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Nodes.RegisterTunnels(ctx, &dataplanev1.RegisterTunnelsRequest{NodeId: "node-1", BootId: "boot-1", Tunnels: []*dataplanev1.Tunnel{
		{TunnelId: "t1", AgentId: existingID, Seq: 1, AgentVersion: "v1", ConnectedAt: timestamppb.Now()},
	}}); err != nil {
		t.Fatal(err)
	}

	stubs, err := filepath.Abs(filepath.Join("ruby", "stubs"))
	if err != nil {
		t.Fatal(err)
	}
	script := strings.Join(blocks, "\n") + railsEpilogue
	cmd := exec.Command(ruby, "-I", stubs, "-")
	cmd.Stdin = strings.NewReader(script)
	cmd.Env = append(os.Environ(),
		"KAS_URL="+env.URL,
		"KAS_GRPC_TARGET="+strings.TrimPrefix(env.URL, "http://"),
		"KAS_API_SECRET_KEY_FILE="+writeDocKeyFile(t, env.APIKey))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("the Ruby of docs/rails.md failed: %v\nstderr:\n%s\nstdout:\n%s", err, stderr.String(), stdout.String())
	}
	var r railsReport
	var found bool
	for _, l := range strings.Split(stdout.String(), "\n") {
		if rest, ok := strings.CutPrefix(l, "KAS_DOCS_REPORT "); ok {
			if err := json.Unmarshal([]byte(rest), &r); err != nil {
				t.Fatalf("report: %v\n%s", err, rest)
			}
			found = true
		}
	}
	if !found {
		t.Fatalf("no report in the output:\n%s", stdout.String())
	}

	// The agent exists in the project, with the configuration put.
	got, err := env.Agents.GetAgent(ctx, &managementv1.GetAgentRequest{AgentId: r.AgentID})
	if err != nil || got.Agent.Name != "production" || got.Agent.ProjectId != projectID {
		t.Fatalf("GetAgent(agent_id %d) = %v, %v; want production in project %d", r.AgentID, got, err, projectID)
	}
	if r.ConfigVersion != 1 || got.Agent.ConfigVersion != 1 {
		t.Errorf("config_version = %d, agent's = %d; want 1 (the invalid put must not count)", r.ConfigVersion, got.Agent.ConfigVersion)
	}
	cfg, err := env.Agents.GetAgentConfig(ctx, &managementv1.GetAgentConfigRequest{AgentId: r.AgentID})
	if err != nil || !strings.Contains(cfg.Config.Yaml, "id: group/app") {
		t.Errorf("GetAgentConfig = %v, %v", cfg, err)
	}
	// The agent token authenticates the agent.
	a, err := env.Auth.AuthenticateAgent(ctx, &dataplanev1.AuthenticateAgentRequest{Token: r.AgentToken})
	if err != nil || a.AgentId != r.AgentID || a.TokenId != r.TokenID {
		t.Errorf("AuthenticateAgent(agent_token) = %v, %v; want agent %d token %d", a, err, r.AgentID, r.TokenID)
	}

	authorize := func(what string, req *dataplanev1.AuthorizeProxyRequest, want dataplanev1.AuthorizeProxyResponse_Decision) {
		t.Helper()
		req.AgentId = r.AgentID
		resp, err := env.Auth.AuthorizeProxy(ctx, req)
		if err != nil || resp.Decision != want {
			t.Errorf("AuthorizeProxy(%s) = %v, %v; want %v", what, resp, err, want)
		}
	}
	secretOf := func(authz, kind string) string {
		t.Helper()
		prefix := fmt.Sprintf("Bearer %s:%d:", kind, r.AgentID)
		s, ok := strings.CutPrefix(authz, prefix)
		if !ok || s == "" {
			t.Errorf("%s authorization %q does not start with %q", kind, authz, prefix)
		}
		return s
	}
	allowed := dataplanev1.AuthorizeProxyResponse_DECISION_ALLOWED
	authorize("pat", &dataplanev1.AuthorizeProxyRequest{Credential: &dataplanev1.AuthorizeProxyRequest_AccessToken{AccessToken: secretOf(r.PATAuthorization, "pat")}}, allowed)
	authorize("ci", &dataplanev1.AuthorizeProxyRequest{Credential: &dataplanev1.AuthorizeProxyRequest_CiJobToken{CiJobToken: secretOf(r.CIAuthorization, "ci")}}, allowed)

	// The cookie sealed in Ruby opens with kas's key to the session ID, and
	// the session reaches the agent through its user_access, CSRF-checked.
	if sid, err := kascookie.Decrypt(env.APIKey, r.Cookie); err != nil || sid != r.SessionID || sid == "" {
		t.Errorf("kascookie.Decrypt(cookie) = %q, %v; want the session ID %q", sid, err, r.SessionID)
	}
	cookie := func(csrf string) *dataplanev1.AuthorizeProxyRequest {
		return &dataplanev1.AuthorizeProxyRequest{Credential: &dataplanev1.AuthorizeProxyRequest_SessionCookie{SessionCookie: r.Cookie},
			UnsafeMethod: true, CsrfToken: csrf}
	}
	authorize("cookie with X-Csrf-Token", cookie(r.CSRFToken), allowed)
	authorize("cookie without X-Csrf-Token", cookie(""), dataplanev1.AuthorizeProxyResponse_DECISION_FORBIDDEN)

	if !slices.Equal(r.ConnectedAgentIDs, []int64{existingID}) {
		t.Errorf("connected_agent_ids = %v, want [%d]", r.ConnectedAgentIDs, existingID)
	}
	if want := fmt.Sprintf("agent %d: node-1 (1 tunnels)\n", existingID); !strings.Contains(stdout.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, stdout.String())
	}
	if r.SameAgentID != r.AgentID {
		t.Errorf("find_or_create_agent = %d, want the existing %d", r.SameAgentID, r.AgentID)
	}
	if !strings.Contains(r.ConfigError, "ci_access.projects[0].id") || !strings.Contains(r.ConfigError, "line 3") {
		t.Errorf("config_error = %q, want the field ci_access.projects[0].id and line 3", r.ConfigError)
	}
	if !strings.Contains(stripFences(readDoc(t, "rails.md")), "invalid agent configuration: line 3: ci_access.projects[0].id: ") ||
		!strings.HasPrefix(r.ConfigError, "invalid agent configuration: line 3: ci_access.projects[0].id: ") {
		t.Errorf("docs/rails.md quotes the configuration error as kas words it; kas says %q", r.ConfigError)
	}
}

// ---------------------------------------------------------------------------
// docs/sql.md

// sqlRecipes checks the rows of each recipe of docs/sql.md, as text
// projections of the columns named, against the routing set up by
// TestDocsSQL. Every recipe here must be on the page and every SQL block
// of the page here.
var sqlRecipes = map[string]struct {
	cols []string
	want []string
}{
	"nodes-of-agent":            {[]string{"node_id", "state", "tunnels"}, []string{"node-a live 2", "node-b live 1"}},
	"agents-without-live-route": {[]string{"name", "routes"}, []string{"moving node-c (draining)", "orphan node-d (stale)", "idle never connected or gone"}},
	"single-node-agents":        {[]string{"agent_name", "node_id", "tunnels"}, []string{"staging node-a 1"}},
	"stale-routes":              {[]string{"agent_name", "node_id", "tunnels"}, []string{"orphan node-d 1"}},
	"tunnels-per-node":          {[]string{"node_id", "state", "tunnels", "agents"}, []string{"node-a live 3 2", "node-c draining 2 2", "node-b live 1 1", "node-d stale 1 1"}},
	"old-heartbeats":            {[]string{"node_id", "state", "tunnels"}, []string{"node-d stale 1"}},
	"draining-nodes":            {[]string{"node_id", "agent_name", "tunnels", "moved"}, []string{"node-c staging 1 t", "node-c moving 1 f"}},
	"agent-versions":            {[]string{"agent_version", "agents", "tunnels"}, []string{"v1.1.0 1 1", "v1.2.0 2 5"}},
	"unlogged":                  {[]string{"relname", "unlogged"}, []string{"agents f", "nodes t", "tunnels t"}},
}

// psqlVarRE matches a psql variable (:name), not a cast (::type).
var psqlVarRE = regexp.MustCompile(`(^|[^:]):([a-z_]+)\b`)

// TestDocsSQL runs every recipe of docs/sql.md against a database filled
// through the control plane's API: live nodes, a draining one and a stale
// one (registered through a control plane whose clock is behind).
func TestDocsSQL(t *testing.T) {
	doc := readDoc(t, "sql.md")
	ctx := context.Background()
	pool := pgtest.Pool(t)
	apiKey, privateKey := cptest.Key(t), cptest.Key(t)
	// Long leases, so that a slow machine cannot turn live nodes stale
	// during the test: node-d, registered 15 minutes "ago", expired 5
	// minutes ago and stays visible (stale) for 20 minutes.
	serve := func(now func() time.Time) *cptest.Env {
		srv, err := controlplane.New(controlplane.Options{Pool: pool, APISecretKey: apiKey, PrivateAPISecretKey: privateKey,
			LeaseTTL: 10 * time.Minute, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return cptest.Serve(t, srv, apiKey, privateKey)
	}
	env := serve(nil)
	behind := serve(func() time.Time { return time.Now().Add(-15 * time.Minute) })

	ids := map[string]int64{}
	for _, name := range []string{"production", "staging", "moving", "orphan", "idle"} {
		a, err := env.Agents.CreateAgent(ctx, &managementv1.CreateAgentRequest{ProjectId: 42, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		ids[name] = a.Agent.Id
	}
	type tun struct {
		agent, version string
	}
	place := func(cp *cptest.Env, node string, tunnels ...tun) {
		t.Helper()
		boot := "boot-" + node
		if _, err := cp.Nodes.RegisterNode(ctx, &dataplanev1.RegisterNodeRequest{NodeId: node, BootId: boot, PrivateUrl: "grpc://" + node + ".kas:8155", Version: "test"}); err != nil {
			t.Fatalf("RegisterNode %s: %v", node, err)
		}
		var ts []*dataplanev1.Tunnel
		for i, tu := range tunnels {
			ts = append(ts, &dataplanev1.Tunnel{TunnelId: fmt.Sprintf("%s-%d", node, i), AgentId: ids[tu.agent], Seq: int64(i + 1),
				AgentVersion: tu.version, ConnectedAt: timestamppb.Now()})
		}
		resp, err := cp.Nodes.RegisterTunnels(ctx, &dataplanev1.RegisterTunnelsRequest{NodeId: node, BootId: boot, Tunnels: ts})
		if err != nil || int(resp.Applied) != len(ts) {
			t.Fatalf("RegisterTunnels %s = %v, %v", node, resp, err)
		}
	}
	place(behind, "node-d", tun{"orphan", "v1.0.0"})
	place(env, "node-a", tun{"production", "v1.2.0"}, tun{"production", "v1.2.0"}, tun{"staging", "v1.2.0"})
	place(env, "node-b", tun{"production", "v1.2.0"})
	place(env, "node-c", tun{"staging", "v1.2.0"}, tun{"moving", "v1.1.0"})
	if _, err := env.Nodes.SetDraining(ctx, &dataplanev1.SetDrainingRequest{NodeId: "node-c", BootId: "boot-node-c"}); err != nil {
		t.Fatal(err)
	}

	seen := map[string]bool{}
	for _, b := range docBlocks(doc) {
		if b.Lang != "sql" {
			continue
		}
		if len(b.Marker) != 2 || b.Marker[0] != "sql" {
			t.Errorf("docs/sql.md:%d: ```sql block without a <!-- test: sql NAME --> marker", b.Line)
			continue
		}
		name := b.Marker[1]
		recipe, ok := sqlRecipes[name]
		if !ok {
			t.Errorf("docs/sql.md:%d: recipe %q has no expected rows in sqlRecipes", b.Line, name)
			continue
		}
		seen[name] = true
		query := psqlVarRE.ReplaceAllStringFunc(b.Body, func(m string) string {
			sub := psqlVarRE.FindStringSubmatch(m)
			if sub[2] != "agent_id" {
				t.Errorf("docs/sql.md:%d: unknown psql variable :%s", b.Line, sub[2])
			}
			return sub[1] + strconv.FormatInt(ids["production"], 10)
		})
		got, err := queryProjection(ctx, pool.Query, query, recipe.cols)
		if err != nil {
			t.Errorf("docs/sql.md:%d (%s): %v\n%s", b.Line, name, err, query)
			continue
		}
		if !slices.Equal(got, recipe.want) {
			t.Errorf("docs/sql.md:%d (%s) returned\n  %q\nwant\n  %q", b.Line, name, got, recipe.want)
		}
	}
	for name := range sqlRecipes {
		if !seen[name] {
			t.Errorf("docs/sql.md lacks the recipe %q", name)
		}
	}
	// The columns the page documents are the views' columns.
	for _, view := range []string{"node_status", "agent_routes"} {
		rows, err := pool.Query(ctx, "SELECT * FROM "+view+" LIMIT 0")
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range rows.FieldDescriptions() {
			if !strings.Contains(doc, "| `"+f.Name+"` |") {
				t.Errorf("docs/sql.md does not document column %s of %s", f.Name, view)
			}
		}
		rows.Close()
	}
}

// queryProjection runs query and returns, per row, the named columns as
// text (t and f for booleans, as psql) joined by spaces.
func queryProjection(ctx context.Context, query func(context.Context, string, ...any) (pgx.Rows, error), sql string, cols []string) ([]string, error) {
	// The simple protocol returns every value as text, as psql shows it.
	rows, err := query(ctx, sql, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	idx := map[string]int{}
	for i, f := range rows.FieldDescriptions() {
		idx[f.Name] = i
	}
	for _, c := range cols {
		if _, ok := idx[c]; !ok {
			return nil, fmt.Errorf("no column %q", c)
		}
	}
	var out []string
	for rows.Next() {
		vals := rows.RawValues()
		var parts []string
		for _, c := range cols {
			v := "NULL"
			if vals[idx[c]] != nil {
				v = string(vals[idx[c]])
			}
			parts = append(parts, v)
		}
		out = append(out, strings.Join(parts, " "))
	}
	return out, rows.Err()
}

// ---------------------------------------------------------------------------
// docs/operator.md

// seedSettings are the settings of GitLab's KAS installation page
// (shared/seed), each of which docs/operator.md must map to kas.
var seedSettings = []string{
	"gitlab_kas['enable']",
	"gitlab_kas['internal_api_listen_network']",
	"gitlab_kas['internal_api_listen_address']",
	"gitlab_kas['private_api_listen_network']",
	"gitlab_kas['private_api_listen_address']",
	"gitlab_kas['env']",
	"gitlab_kas['api_secret_key']",
	"gitlab_kas['private_api_secret_key']",
	"OWN_PRIVATE_API_URL",
	"OWN_PRIVATE_API_HOST",
	"OWN_PRIVATE_API_CIDR",
	"OWN_PRIVATE_API_PORT",
	"OWN_PRIVATE_API_SCHEME",
	"SSL_CERT_DIR",
	"gitlab_kas_external_url",
	"gitlab_rails['gitlab_kas_external_url']",
	"gitlab_rails['gitlab_kas_external_k8s_proxy_url']",
	"gitlab_rails['gitlab_kas_internal_url']",
	"gitlab_kas['gitlab_address']",
}

var (
	inlineCodeRE  = regexp.MustCompile("`([^`\n]+)`")
	settingPathRE = regexp.MustCompile(`^((?:database|controlplane|dataplane|observability)(?:\.[a-z_]+)+|(?:private_)?api_secret_key_file)\b`)
	envNameRE     = regexp.MustCompile(`\b(KAS_[A-Z0-9_]+|OWN_PRIVATE_API_[A-Z_]+)\b`)
	metricNameRE  = regexp.MustCompile(`\bkas_(?:dataplane|http)_[a-z0-9_]+\b`)
)

// TestDocsOperatorSettings checks that docs/operator.md names only
// settings and variables kas has, lists every setting with its variable
// and default, and maps every setting of the seed page.
func TestDocsOperatorSettings(t *testing.T) {
	doc := readDoc(t, "operator.md")
	settings := config.Default().Settings()
	paths := map[string]config.Setting{}
	groups := map[string]bool{}
	envs := map[string]bool{}
	for _, s := range settings {
		paths[s.Path] = s
		envs[s.Env] = true
		for p := s.Path; strings.Contains(p, "."); {
			p = p[:strings.LastIndex(p, ".")]
			groups[p] = true
		}
	}

	// Every setting-like name in the prose and in the YAML must exist.
	prose := stripFences(doc)
	for _, m := range inlineCodeRE.FindAllStringSubmatch(prose, -1) {
		if p := settingPathRE.FindString(m[1]); p != "" {
			if _, ok := paths[p]; !ok && !groups[p] {
				t.Errorf("docs/operator.md names %q, which is not a setting of internal/config", p)
			}
		}
	}
	agentk, err := os.ReadFile(filepath.Join("..", "cmd", "agentk", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range envNameRE.FindAllString(doc, -1) {
		if !envs[name] && !bytes.Contains(agentk, []byte(`"`+name+`"`)) {
			t.Errorf("docs/operator.md names the variable %s, which neither internal/config nor agentk reads", name)
		}
	}

	// The reference table: every setting, its variable, its default.
	rows := map[string][]string{}
	for _, l := range strings.Split(doc, "\n") {
		cells := strings.Split(l, "|")
		if len(cells) < 5 || !strings.HasPrefix(l, "| `") {
			continue
		}
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		name := strings.Trim(cells[1], "`")
		if _, ok := paths[name]; ok {
			if rows[name] != nil {
				t.Errorf("docs/operator.md lists %s twice in its tables", name)
			}
			rows[name] = cells[2:]
		}
	}
	for _, s := range settings {
		row := rows[s.Path]
		if row == nil {
			t.Errorf("docs/operator.md's settings reference lacks %s", s.Path)
			continue
		}
		if row[0] != "`"+s.Env+"`" {
			t.Errorf("docs/operator.md: %s's variable is %s, not %s", s.Path, s.Env, row[0])
		}
		def := row[1]
		switch v := s.String(); {
		case strings.HasPrefix(def, "`"):
			if got := strings.SplitN(def, "`", 3)[1]; got != v {
				t.Errorf("docs/operator.md: %s's default is %q, not %q", s.Path, v, got)
			}
		case v != "":
			t.Errorf("docs/operator.md: %s's default is `%s`, the page says %q", s.Path, v, def)
		}
	}
	for _, name := range seedSettings {
		if !strings.Contains(doc, "`"+name) {
			t.Errorf("docs/operator.md does not map the seed's setting %s", name)
		}
	}
}

// TestDocsOperatorConfig loads and validates every configuration example of
// docs/operator.md, and runs its --verify-config sessions.
func TestDocsOperatorConfig(t *testing.T) {
	doc := readDoc(t, "operator.md")
	blocks := docBlocks(doc)
	certFile, keyFile := writeDocCert(t)
	apiKeyFile, privateKeyFile := writeDocKeyFile(t, cptest.Key(t)), writeDocKeyFile(t, cptest.Key(t))
	counts := map[string]int{}
	for i, b := range blocks {
		if b.Lang != "yaml" && b.Lang != "console" {
			continue
		}
		if b.Lang == "console" {
			if i == 0 || len(blocks[i-1].Marker) == 0 || blocks[i-1].Marker[0] != "verify-config" {
				t.Errorf("docs/operator.md:%d: ```console block that does not follow a <!-- test: verify-config --> block", b.Line)
			}
			continue
		}
		if len(b.Marker) == 0 {
			t.Errorf("docs/operator.md:%d: ```yaml block without a <!-- test: config ROLE|verify-config|k8s --> marker", b.Line)
			continue
		}
		counts[b.Marker[0]]++
		switch b.Marker[0] {
		case "config":
			if len(b.Marker) != 2 {
				t.Errorf("docs/operator.md:%d: want <!-- test: config controlplane|dataplane -->", b.Line)
				continue
			}
			checkDocConfig(t, b, b.Marker[1], apiKeyFile, privateKeyFile, certFile, keyFile)
		case "verify-config":
			if i+1 >= len(blocks) || blocks[i+1].Lang != "console" {
				t.Errorf("docs/operator.md:%d: a verify-config block must be followed by a ```console block", b.Line)
				continue
			}
			checkDocVerifyConfig(t, b, blocks[i+1])
		case "k8s":
			var v any
			if err := yaml.Unmarshal([]byte(b.Body), &v); err != nil {
				t.Errorf("docs/operator.md:%d: not YAML: %v", b.Line, err)
			}
		default:
			t.Errorf("docs/operator.md:%d: unknown marker %q", b.Line, b.Marker)
		}
	}
	if counts["config"] < 3 || counts["verify-config"] < 2 {
		t.Errorf("docs/operator.md: %d config and %d verify-config examples; expected the control plane's, the dataplane's and two sessions", counts["config"], counts["verify-config"])
	}
}

// checkDocConfig loads a configuration example for role, with the key
// files and TLS files it names replaced by real ones, and validates it,
// deriving the dataplane's private URL on a host with the addresses
// 127.0.0.1, 10.0.0.5 and ::1.
func checkDocConfig(t *testing.T, b docBlock, role, apiKeyFile, privateKeyFile, certFile, keyFile string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kas.yaml")
	if err := os.WriteFile(path, []byte(b.Body), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"KAS_API_SECRET_KEY_FILE": apiKeyFile, "KAS_PRIVATE_API_SECRET_KEY_FILE": privateKeyFile}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cfg, err := config.Load(path, lookup)
	if err != nil {
		t.Errorf("docs/operator.md:%d: %v", b.Line, err)
		return
	}
	// Point the TLS files the example names at a real pair.
	for _, s := range cfg.Settings() {
		if s.String() == "" {
			continue
		}
		switch {
		case strings.HasSuffix(s.Path, ".certificate_file"):
			env[s.Env] = certFile
		case strings.HasSuffix(s.Path, ".key_file"):
			env[s.Env] = keyFile
		}
	}
	if cfg, err = config.Load(path, lookup); err != nil {
		t.Fatal(err)
	}
	var r config.Role
	switch role {
	case "controlplane":
		r = config.RoleControlplane
	case "dataplane":
		r = config.RoleDataplane
	default:
		t.Errorf("docs/operator.md:%d: unknown role %q", b.Line, role)
		return
	}
	if err := cfg.Validate(r); err != nil {
		t.Errorf("docs/operator.md:%d: the %s example does not validate:\n%v", b.Line, role, err)
	}
	if r == config.RoleDataplane {
		o, l := cfg.Dataplane.OwnPrivateAPI, cfg.Dataplane.PrivateAPI.Listen
		_, err := discovery.PrivateURL(discovery.PrivateURLOptions{URL: o.URL, CIDR: o.CIDR, Port: o.Port, Scheme: o.Scheme, Host: o.Host,
			ListenNetwork: l.Network, ListenAddress: l.Address, InterfaceAddrs: docInterfaceAddrs("127.0.0.1/8", "10.0.0.5/8", "::1/128")})
		if err != nil {
			t.Errorf("docs/operator.md:%d: the dataplane example has no private URL: %v", b.Line, err)
		}
	}
}

// checkDocVerifyConfig runs the console session of a verify-config example
// with its file as kas.yaml and compares the output.
func checkDocVerifyConfig(t *testing.T, file, session docBlock) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(session.Body, "\n"), "\n")
	command, ok := strings.CutPrefix(lines[0], "$ ")
	if !ok {
		t.Errorf("docs/operator.md:%d: the session must start with `$ `", session.Line)
		return
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "kas.yaml")
	if err := os.WriteFile(path, []byte(file.Body), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	fields := strings.Fields(command)
	for len(fields) > 0 && strings.Contains(fields[0], "=") {
		k, v, _ := strings.Cut(fields[0], "=")
		env[k] = v
		fields = fields[1:]
	}
	if len(fields) == 0 || fields[0] != "kas" {
		t.Errorf("docs/operator.md:%d: the command must be kas, got %q", session.Line, command)
		return
	}
	args := fields[1:]
	for i, a := range args {
		if a == "kas.yaml" {
			args[i] = path
		}
	}
	var stdout, stderr bytes.Buffer
	cli := app.CLI{Stdout: &stdout, Stderr: &stderr, LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }}
	code := cli.Run(context.Background(), args)
	want := strings.Join(lines[1:], "\n") + "\n"
	wantCode := app.ExitOK
	if strings.HasPrefix(want, "kas: invalid configuration") {
		wantCode = app.ExitError
	}
	if got := stdout.String() + stderr.String(); got != want || code != wantCode {
		t.Errorf("docs/operator.md:%d: `%s` exits %d with\n%s\nthe page says (exit %d)\n%s", session.Line, command, code, got, wantCode, want)
	}
}

// TestDocsOperatorMessages checks that the start-up messages quoted in
// docs/operator.md are the ones kas produces.
func TestDocsOperatorMessages(t *testing.T) {
	doc := readDoc(t, "operator.md")
	cases := []discovery.PrivateURLOptions{
		{CIDR: "10.20.0.0/16", ListenAddress: "[::]:8155", InterfaceAddrs: docInterfaceAddrs("127.0.0.1/8", "10.0.0.5/24", "::1/128")},
		{CIDR: "10.0.0.0/8", ListenAddress: "[::]:8155", InterfaceAddrs: docInterfaceAddrs("127.0.0.1/8", "10.0.0.5/24", "10.1.0.7/24")},
		{ListenAddress: "[::]:8155"}, // a wildcard listener, as the bound address reads
		{URL: "grpc://0.0.0.0:8155", ListenAddress: "[::]:8155"},
	}
	for _, o := range cases {
		_, err := discovery.PrivateURL(o)
		if err == nil {
			t.Errorf("PrivateURL(%+v) succeeded", o)
			continue
		}
		if !strings.Contains(doc, "`"+err.Error()+"`") {
			t.Errorf("docs/operator.md does not quote the message kas gives:\n  %s", err)
		}
	}
}

// docLogs records the log records of a role and lets a test wait for one.
type docLogs struct {
	mu      sync.Mutex
	records []slog.Record
	changed chan struct{}
	attrs   []slog.Attr
}

func newDocLogs() *docLogs { return &docLogs{changed: make(chan struct{})} }

func (l *docLogs) Enabled(context.Context, slog.Level) bool { return true }
func (l *docLogs) Handle(_ context.Context, r slog.Record) error {
	r = r.Clone()
	r.AddAttrs(l.attrs...)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.records = append(l.records, r)
	close(l.changed)
	l.changed = make(chan struct{})
	return nil
}
func (l *docLogs) WithAttrs(as []slog.Attr) slog.Handler {
	return &docLogsChild{parent: l, attrs: as}
}
func (l *docLogs) WithGroup(string) slog.Handler { return l }

// docLogsChild is a docLogs with attributes added (logger.With).
type docLogsChild struct {
	parent *docLogs
	attrs  []slog.Attr
}

func (c *docLogsChild) Enabled(context.Context, slog.Level) bool { return true }
func (c *docLogsChild) Handle(ctx context.Context, r slog.Record) error {
	r = r.Clone()
	r.AddAttrs(c.attrs...)
	return c.parent.Handle(ctx, r)
}
func (c *docLogsChild) WithAttrs(as []slog.Attr) slog.Handler {
	return &docLogsChild{parent: c.parent, attrs: append(slices.Clone(c.attrs), as...)}
}
func (c *docLogsChild) WithGroup(string) slog.Handler { return c }

// wait returns the first record whose message starts with prefix,
// waiting for it.
func (l *docLogs) wait(t *testing.T, prefix string) slog.Record {
	t.Helper()
	deadline := time.NewTimer(docWait)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		for _, r := range l.records {
			if strings.HasPrefix(r.Message, prefix) {
				l.mu.Unlock()
				return r
			}
		}
		changed := l.changed
		l.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("no log record %q within %v", prefix, docWait)
		}
	}
}

// attr returns the value of a record's attribute.
func attr(r slog.Record, key string) string {
	var v string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v = a.Value.String()
			return false
		}
		return true
	})
	return v
}

// docRole is a kas role running in-process, as the binary runs it.
type docRole struct {
	s    *app.Server
	logs *docLogs
}

func startDocRole(t *testing.T, role config.Role, cfg *config.Config) *docRole {
	t.Helper()
	cfg.Observability.Listen = config.Listen{Network: "tcp", Address: "127.0.0.1:0"}
	logs := newDocLogs()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := app.New(ctx, app.Options{Role: role, Config: cfg, Logger: slog.New(logs)})
	if err != nil {
		cancel()
		t.Fatalf("start %s: %v", role, err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s Run: %v", role, err)
		}
		s.Close()
	})
	return &docRole{s: s, logs: logs}
}

func (r *docRole) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + r.s.Addr("observability.listen").String() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// startDocDataplane runs `kas dataplane` against the control plane at url.
func startDocDataplane(t *testing.T, id, url, privateKeyFile string) *docRole {
	t.Helper()
	cfg := config.Default()
	cfg.PrivateAPISecretKeyFile = privateKeyFile
	cfg.Dataplane.ControlplaneURL = url
	cfg.Dataplane.NodeID = id
	local := config.Listen{Network: "tcp", Address: "127.0.0.1:0"}
	cfg.Dataplane.Agent.Listen, cfg.Dataplane.KubernetesAPI.Listen, cfg.Dataplane.PrivateAPI.Listen = local, local, local
	return startDocRole(t, config.RoleDataplane, cfg)
}

// docAgentNumbers rewrites agent IDs in a message to the page's 7.
var docAgentNumbers = regexp.MustCompile(`agent \d+`)

// TestDocsOperatorRuntime runs the troubleshooting cases of
// docs/operator.md with the real roles: a control plane on a real
// database and dataplane nodes, one with the wrong key and one pointed at
// a closed port; it checks the messages, the metrics the page names, and
// the recovery after the routing tables are emptied, as by a crash.
func TestDocsOperatorRuntime(t *testing.T) {
	doc := readDoc(t, "operator.md")
	ctx := context.Background()
	dsn := pgtest.DSN(t)
	apiKey, privateKey := cptest.Key(t), cptest.Key(t)
	apiKeyFile, privateKeyFile := writeDocKeyFile(t, apiKey), writeDocKeyFile(t, privateKey)

	cpCfg := config.Default()
	cpCfg.Database.URL = dsn
	cpCfg.APISecretKeyFile, cpCfg.PrivateAPISecretKeyFile = apiKeyFile, privateKeyFile
	cpCfg.Controlplane.Listen = config.Listen{Network: "tcp", Address: "127.0.0.1:0"}
	cpCfg.Controlplane.LeaseTTL = 2 * time.Second // heartbeats every 500 ms
	cp := startDocRole(t, config.RoleControlplane, cpCfg)
	cpURL := "http://" + cp.s.Addr("controlplane.listen").String()

	node := startDocDataplane(t, "docs-node", cpURL, privateKeyFile)
	waitFor(t, "the node's /readyz", func() bool { code, _ := node.get(t, "/readyz"); return code == http.StatusOK })
	proxyAddr := attr(node.logs.wait(t, "dataplane node"), "kubernetes_api_listener")

	mgmt := connect.WithInterceptors(authn.ClientInterceptor(authn.NewSigner(apiKey, authn.IssuerRails, authn.AudienceManagement, "docs")))
	agents := managementv1connect.NewAgentServiceClient(http.DefaultClient, cpURL, mgmt)
	creds := managementv1connect.NewCredentialServiceClient(http.DefaultClient, cpURL, mgmt)
	quoted := func(what, msg string) {
		t.Helper()
		msg = docAgentNumbers.ReplaceAllString(msg, "agent 7")
		if !strings.Contains(doc, msg) {
			t.Errorf("docs/operator.md does not quote %s as kas says it:\n  %s", what, msg)
		}
	}

	t.Run("an agent without configuration", func(t *testing.T) {
		a, err := agents.CreateAgent(ctx, &managementv1.CreateAgentRequest{ProjectId: 42, Name: "no-config"})
		if err != nil {
			t.Fatal(err)
		}
		id := a.Agent.Id
		_, err = agents.GetAgentConfig(ctx, &managementv1.GetAgentConfigRequest{AgentId: id})
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != connect.CodeNotFound {
			t.Fatalf("GetAgentConfig without configuration = %v, want not_found", err)
		}
		quoted("GetAgentConfig's answer", ce.Message())

		expires := timestamppb.New(time.Now().Add(time.Hour))
		job, err := creds.CreateCIJobToken(ctx, &managementv1.CreateCIJobTokenRequest{
			Job: &managementv1.CIJob{JobId: 1, ProjectId: 99, ProjectPath: "other/project"}, ExpiresAt: expires})
		if err != nil {
			t.Fatal(err)
		}
		code, msg := docProxyGet(t, proxyAddr, fmt.Sprintf("Bearer ci:%d:%s", id, job.Secret))
		if code != http.StatusForbidden {
			t.Errorf("a CI job of another project: %d %q, want 403", code, msg)
		}
		quoted("the proxy's refusal", msg)

		pat, err := creds.CreateAccessToken(ctx, &managementv1.CreateAccessTokenRequest{
			User: &managementv1.UserIdentity{Id: 1, Username: "alice"}, AgentIds: []int64{id}, ExpiresAt: expires})
		if err != nil {
			t.Fatal(err)
		}
		code, msg = docProxyGet(t, proxyAddr, fmt.Sprintf("Bearer pat:%d:%s", id, pat.Secret))
		if code != http.StatusServiceUnavailable {
			t.Errorf("an agent that is not connected: %d %q, want 503", code, msg)
		}
		quoted("the proxy's answer for an agent that is not connected", msg)
		docProxyGet(t, proxyAddr, "") // a 401, for the proxy's request metric
	})

	t.Run("metrics", func(t *testing.T) {
		names := map[string]bool{}
		for _, r := range []*docRole{node, cp} {
			_, body := r.get(t, "/metrics")
			sc := bufio.NewScanner(strings.NewReader(body))
			for sc.Scan() {
				if rest, ok := strings.CutPrefix(sc.Text(), "# TYPE "); ok {
					names[strings.Fields(rest)[0]] = true
				}
			}
		}
		named := slices.Compact(slices.Sorted(slices.Values(metricNameRE.FindAllString(doc, -1))))
		if len(named) < 10 {
			t.Fatalf("docs/operator.md names %d metrics", len(named))
		}
		for _, name := range named {
			if !names[name] {
				t.Errorf("docs/operator.md names the metric %s, which kas does not export", name)
			}
		}
	})

	t.Run("routing tables emptied by a crash", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "TRUNCATE nodes, tunnels"); err != nil {
			t.Fatal(err)
		}
		r := node.logs.wait(t, "control plane lost this node's registration")
		quoted("the node's log line", r.Message)
		waitFor(t, "the node back in node_status", func() bool {
			var n int
			return conn.QueryRow(ctx, "SELECT count(*) FROM node_status WHERE node_id = 'docs-node' AND state = 'live'").Scan(&n) == nil && n == 1
		})
	})

	t.Run("a node with another private_api_secret_key", func(t *testing.T) {
		other := startDocDataplane(t, "docs-wrong-key", cpURL, writeDocKeyFile(t, cptest.Key(t)))
		r := other.logs.wait(t, "control plane refused this node")
		quoted("the node's log line", r.Message)
	})

	t.Run("a node that cannot reach the control plane", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := "http://" + l.Addr().String()
		l.Close()
		lost := startDocDataplane(t, "docs-unreachable", closed, privateKeyFile)
		r := lost.logs.wait(t, "cannot reach the control plane")
		if !strings.Contains(attr(r, "err"), "connection refused") {
			t.Errorf("err = %q, want connection refused", attr(r, "err"))
		}
		quoted("the node's log line", strings.ReplaceAll(r.Message, closed, "http://kas-controlplane:8153"))
		code, body := lost.get(t, "/readyz")
		if code != http.StatusServiceUnavailable {
			t.Errorf("/readyz = %d %q", code, body)
		}
		quoted("/readyz", strings.TrimSpace(body))
		if _, m := lost.get(t, "/metrics"); !strings.Contains(m, "\nkas_dataplane_registered 0\n") {
			t.Errorf("kas_dataplane_registered is not 0")
		}
	})
}

// docProxyGet sends a GET through the Kubernetes API proxy at addr and
// returns the status and the Status message.
func docProxyGet(t *testing.T, addr, authorization string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/k8s-proxy/api/v1/namespaces", nil)
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var status struct{ Message string }
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &status); err != nil {
		t.Errorf("the proxy answered %d with something other than a Status: %s", resp.StatusCode, b)
	}
	return resp.StatusCode, status.Message
}

// waitFor waits until cond holds, polling, and fails after docWait.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(docWait)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// docInterfaceAddrs returns a fixed list of interface addresses.
func docInterfaceAddrs(cidrs ...string) func() ([]net.Addr, error) {
	return func() ([]net.Addr, error) {
		var out []net.Addr
		for _, c := range cidrs {
			ip, n, err := net.ParseCIDR(c)
			if err != nil {
				return nil, err
			}
			n.IP = ip
			out = append(out, n)
		}
		return out, nil
	}
}

// writeDocCert writes a self-signed certificate and its key (PEM).
func writeDocCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kas docs"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
