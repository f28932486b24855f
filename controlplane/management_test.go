package controlplane_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kas-project/kas/controlplane"
	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/cptest"
	"github.com/kas-project/kas/internal/secret"
)

// wantCode fails unless err is a Connect error with code and a message
// containing every fragment.
func wantCode(t *testing.T, err error, code connect.Code, fragments ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", code)
	}
	if got := connect.CodeOf(err); got != code {
		t.Fatalf("got code %v (%v), want %v", got, err, code)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("error %q does not mention %q", err, f)
		}
	}
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func pool(env *cptest.Env) *pgxpool.Pool { return env.Server.Store().Pool() }

func createAgent(t *testing.T, env *cptest.Env, project int64, name string) *managementv1.Agent {
	t.Helper()
	resp, err := env.Agents.CreateAgent(t.Context(), &managementv1.CreateAgentRequest{ProjectId: project, Name: name})
	if err != nil {
		t.Fatalf("create agent %s: %v", name, err)
	}
	return resp.Agent
}

func count(t *testing.T, env *cptest.Env, query string, args ...any) int {
	t.Helper()
	var n int
	if err := pool(env).QueryRow(t.Context(), query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// assertNotStored fails if any row of any table contains needle.
func assertNotStored(t *testing.T, env *cptest.Env, needle string) {
	t.Helper()
	ctx := t.Context()
	rows, err := pool(env).Query(ctx, `SELECT table_name FROM information_schema.tables
		WHERE table_schema = 'public' AND table_type = 'BASE TABLE'`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) < 5 {
		t.Fatalf("found only tables %v", tables)
	}
	for _, table := range tables {
		n := count(t, env, fmt.Sprintf(`SELECT count(*) FROM %s r WHERE strpos(r::text, $1) > 0`,
			pgx.Identifier{table}.Sanitize()), needle)
		if n != 0 {
			t.Errorf("table %s holds the plaintext secret in %d rows", table, n)
		}
	}
}

// randomPart is the part of a secret made by secret.New that is hashed.
func randomPart(t *testing.T, prefix, tok string) (int64, string) {
	t.Helper()
	id, r, ok := secret.Parse(prefix, tok)
	if !ok {
		t.Fatalf("secret %q is not a %s secret", tok, prefix)
	}
	return id, r
}

func TestAgentCRUD(t *testing.T) {
	env := cptest.Start(t)
	ctx := t.Context()

	a := createAgent(t, env, 7, "prod-cluster")
	if a.Id <= 0 || a.ProjectId != 7 || a.Name != "prod-cluster" || a.ConfigVersion != 0 || a.CreatedAt == nil {
		t.Fatalf("created %v", a)
	}
	got := must[*managementv1.GetAgentResponse](t)(env.Agents.GetAgent(ctx, &managementv1.GetAgentRequest{AgentId: a.Id}))
	if !proto.Equal(got.Agent, a) {
		t.Fatalf("get = %v, want %v", got.Agent, a)
	}

	_, err := env.Agents.CreateAgent(ctx, &managementv1.CreateAgentRequest{ProjectId: 7, Name: "prod-cluster"})
	wantCode(t, err, connect.CodeAlreadyExists, `"prod-cluster"`)
	// The same name in another project is another agent.
	other := createAgent(t, env, 8, "prod-cluster")

	_, err = env.Agents.DeleteAgent(ctx, &managementv1.DeleteAgentRequest{AgentId: a.Id})
	if err != nil {
		t.Fatal(err)
	}
	_, err = env.Agents.GetAgent(ctx, &managementv1.GetAgentRequest{AgentId: a.Id})
	wantCode(t, err, connect.CodeNotFound, fmt.Sprintf("agent %d", a.Id))
	_, err = env.Agents.DeleteAgent(ctx, &managementv1.DeleteAgentRequest{AgentId: a.Id})
	wantCode(t, err, connect.CodeNotFound, fmt.Sprintf("agent %d", a.Id))
	_, err = env.Agents.GetAgent(ctx, &managementv1.GetAgentRequest{})
	wantCode(t, err, connect.CodeInvalidArgument, "agent_id")

	list := must[*managementv1.ListAgentsResponse](t)(env.Agents.ListAgents(ctx, &managementv1.ListAgentsRequest{}))
	if len(list.Agents) != 1 || list.Agents[0].Id != other.Id || list.NextPageToken != "" {
		t.Fatalf("list after delete = %v", list)
	}
	// A name freed by deletion can be taken again.
	createAgent(t, env, 7, "prod-cluster")
}

func TestCreateAgentValidation(t *testing.T) {
	env := cptest.Start(t)
	for _, tc := range []struct {
		project int64
		name    string
		field   string
	}{
		{0, "ok", "project_id"},
		{-3, "ok", "project_id"},
		{1, "", "name"},
		{1, strings.Repeat("a", 64), "name"},
		{1, "Upper", "name"},
		{1, "under_score", "name"},
		{1, "-lead", "name"},
		{1, "trail-", "name"},
		{1, "dot.ted", "name"},
		{1, "ünicode", "name"},
	} {
		_, err := env.Agents.CreateAgent(t.Context(), &managementv1.CreateAgentRequest{ProjectId: tc.project, Name: tc.name})
		wantCode(t, err, connect.CodeInvalidArgument, tc.field)
	}
	// The longest and the shortest names are fine.
	createAgent(t, env, 1, strings.Repeat("a", 63))
	createAgent(t, env, 1, "a")
	if n := count(t, env, `SELECT count(*) FROM agents`); n != 2 {
		t.Fatalf("%d agents stored, want 2", n)
	}
}

func TestListAgentsPaging(t *testing.T) {
	env := cptest.Start(t)
	ctx := t.Context()
	var all, inProject2 []int64
	for i := range 23 {
		project := int64(1 + i%2)
		a := createAgent(t, env, project, fmt.Sprintf("agent-%d", i))
		all = append(all, a.Id)
		if project == 2 {
			inProject2 = append(inProject2, a.Id)
		}
	}

	page := func(project int64, size int32) (ids []int64, pages int) {
		t.Helper()
		tok := ""
		for {
			resp, err := env.Agents.ListAgents(ctx, &managementv1.ListAgentsRequest{ProjectId: project, PageSize: size, PageToken: tok})
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Agents) > int(size) {
				t.Fatalf("page of %d agents, asked for %d", len(resp.Agents), size)
			}
			pages++
			for _, a := range resp.Agents {
				ids = append(ids, a.Id)
			}
			if tok = resp.NextPageToken; tok == "" {
				return ids, pages
			}
			if pages > 100 {
				t.Fatal("paging does not end")
			}
		}
	}
	ids, pages := page(0, 5)
	if !slices.Equal(ids, all) || pages != 5 {
		t.Fatalf("paged %v in %d pages, want %v in 5", ids, pages, all)
	}
	// 11 agents in project 2: pages of 11 end without an empty extra page.
	ids, pages = page(2, 11)
	if !slices.Equal(ids, inProject2) || pages != 1 {
		t.Fatalf("project 2: %v in %d pages, want %v in 1", ids, pages, inProject2)
	}
	ids, pages = page(2, 3)
	if !slices.Equal(ids, inProject2) || pages != 4 {
		t.Fatalf("project 2: %v in %d pages, want %v in 4", ids, pages, inProject2)
	}
	// Default page size holds everything here.
	resp := must[*managementv1.ListAgentsResponse](t)(env.Agents.ListAgents(ctx, &managementv1.ListAgentsRequest{}))
	if len(resp.Agents) != 23 || resp.NextPageToken != "" {
		t.Fatalf("default page: %d agents, next %q", len(resp.Agents), resp.NextPageToken)
	}

	for _, size := range []int32{-1, 1001} {
		_, err := env.Agents.ListAgents(ctx, &managementv1.ListAgentsRequest{PageSize: size})
		wantCode(t, err, connect.CodeInvalidArgument, "page_size")
	}
	for _, tok := range []string{"garbage", "!!!", "AQ", strings.Repeat("A", 40)} {
		_, err := env.Agents.ListAgents(ctx, &managementv1.ListAgentsRequest{PageToken: tok})
		wantCode(t, err, connect.CodeInvalidArgument, "page_token")
	}
	first := must[*managementv1.ListAgentsResponse](t)(env.Agents.ListAgents(ctx, &managementv1.ListAgentsRequest{ProjectId: 2, PageSize: 2}))
	_, err := env.Agents.ListAgents(ctx, &managementv1.ListAgentsRequest{ProjectId: 1, PageToken: first.NextPageToken})
	wantCode(t, err, connect.CodeInvalidArgument, "page_token")
}

// TestInvalidUTF8 sends raw requests, as a client in another language could,
// with a name that is not UTF-8: Connect must answer InvalidArgument.
func TestInvalidUTF8(t *testing.T) {
	env := cptest.Start(t)
	tok, err := authn.NewSigner(env.APIKey, authn.IssuerRails, authn.AudienceManagement, "raw").Token()
	if err != nil {
		t.Fatal(err)
	}
	var protoBody []byte
	protoBody = protowire.AppendTag(protoBody, 1, protowire.VarintType)
	protoBody = protowire.AppendVarint(protoBody, 1)
	protoBody = protowire.AppendTag(protoBody, 2, protowire.BytesType)
	protoBody = protowire.AppendBytes(protoBody, []byte("bad\xffname"))

	for _, tc := range []struct {
		contentType string
		body        []byte
	}{
		{"application/json", []byte("{\"projectId\":\"1\",\"name\":\"bad\xffname\"}")},
		{"application/proto", protoBody},
	} {
		t.Run(tc.contentType, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), http.MethodPost,
				env.URL+"/kas.management.v1.AgentService/CreateAgent", bytes.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", tc.contentType)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := env.HTTPClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			var ce struct{ Code, Message string }
			if err := json.Unmarshal(body, &ce); err != nil {
				t.Fatalf("status %d, body %q: %v", resp.StatusCode, body, err)
			}
			if resp.StatusCode != http.StatusBadRequest || ce.Code != "invalid_argument" {
				t.Fatalf("status %d, body %s; want 400 invalid_argument", resp.StatusCode, body)
			}
			if !strings.Contains(ce.Message, "UTF-8") {
				t.Errorf("message %q does not say what is wrong", ce.Message)
			}
			t.Logf("%s: %s", tc.contentType, ce.Message)
		})
	}
	if n := count(t, env, `SELECT count(*) FROM agents`); n != 0 {
		t.Fatalf("%d agents stored", n)
	}
}

func TestAgentTokens(t *testing.T) {
	env := cptest.Start(t)
	ctx := t.Context()
	a := createAgent(t, env, 1, "tokens")

	created := must[*managementv1.CreateAgentTokenResponse](t)(env.Agents.CreateAgentToken(ctx,
		&managementv1.CreateAgentTokenRequest{AgentId: a.Id, Name: "ci", Description: "for the CI cluster"}))
	tok := created.Token
	if tok.Id <= 0 || tok.AgentId != a.Id || tok.Name != "ci" || tok.Description != "for the CI cluster" ||
		tok.CreatedAt == nil || tok.RevokedAt != nil {
		t.Fatalf("created %v", tok)
	}
	id, random := randomPart(t, secret.AgentToken, created.Secret)
	if id != tok.Id {
		t.Fatalf("secret names row %d, token is %d", id, tok.Id)
	}
	var stored []byte
	if err := pool(env).QueryRow(ctx, `SELECT secret_hash FROM agent_tokens WHERE id = $1`, tok.Id).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if !secret.Matches(random, stored) {
		t.Fatal("stored hash does not match the secret")
	}
	assertNotStored(t, env, random)

	second := must[*managementv1.CreateAgentTokenResponse](t)(env.Agents.CreateAgentToken(ctx,
		&managementv1.CreateAgentTokenRequest{AgentId: a.Id, Name: "other"}))
	if second.Secret == created.Secret {
		t.Fatal("two tokens with one secret")
	}

	list := must[*managementv1.ListAgentTokensResponse](t)(env.Agents.ListAgentTokens(ctx, &managementv1.ListAgentTokensRequest{AgentId: a.Id}))
	if len(list.Tokens) != 2 || !proto.Equal(list.Tokens[0], tok) || list.Tokens[1].Id != second.Token.Id {
		t.Fatalf("list = %v", list.Tokens)
	}
	raw, err := protojson.Marshal(list)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(random)) {
		t.Fatal("ListAgentTokens returned a secret")
	}

	rev := must[*managementv1.RevokeAgentTokenResponse](t)(env.Agents.RevokeAgentToken(ctx, &managementv1.RevokeAgentTokenRequest{TokenId: tok.Id}))
	if rev.Token.RevokedAt == nil || rev.Token.Id != tok.Id {
		t.Fatalf("revoked %v", rev.Token)
	}
	again := must[*managementv1.RevokeAgentTokenResponse](t)(env.Agents.RevokeAgentToken(ctx, &managementv1.RevokeAgentTokenRequest{TokenId: tok.Id}))
	if !proto.Equal(again.Token, rev.Token) {
		t.Fatalf("second revoke changed the token: %v, then %v", rev.Token, again.Token)
	}
	list = must[*managementv1.ListAgentTokensResponse](t)(env.Agents.ListAgentTokens(ctx, &managementv1.ListAgentTokensRequest{AgentId: a.Id}))
	if list.Tokens[0].RevokedAt == nil || list.Tokens[1].RevokedAt != nil {
		t.Fatalf("after revoke: %v", list.Tokens)
	}

	_, err = env.Agents.RevokeAgentToken(ctx, &managementv1.RevokeAgentTokenRequest{TokenId: 999999})
	wantCode(t, err, connect.CodeNotFound, "agent token 999999")
	_, err = env.Agents.CreateAgentToken(ctx, &managementv1.CreateAgentTokenRequest{AgentId: 999999, Name: "x"})
	wantCode(t, err, connect.CodeNotFound, "agent 999999")
	_, err = env.Agents.ListAgentTokens(ctx, &managementv1.ListAgentTokensRequest{AgentId: 999999})
	wantCode(t, err, connect.CodeNotFound, "agent 999999")
	for _, tc := range []struct {
		req   *managementv1.CreateAgentTokenRequest
		field string
	}{
		{&managementv1.CreateAgentTokenRequest{AgentId: a.Id}, "name"},
		{&managementv1.CreateAgentTokenRequest{AgentId: a.Id, Name: strings.Repeat("n", 256)}, "name"},
		{&managementv1.CreateAgentTokenRequest{AgentId: a.Id, Name: "x", Description: strings.Repeat("d", 1025)}, "description"},
		{&managementv1.CreateAgentTokenRequest{Name: "x"}, "agent_id"},
	} {
		_, err := env.Agents.CreateAgentToken(ctx, tc.req)
		wantCode(t, err, connect.CodeInvalidArgument, tc.field)
	}
	if n := count(t, env, `SELECT count(*) FROM agent_tokens`); n != 2 {
		t.Fatalf("%d tokens stored, want 2", n)
	}
}

func TestAgentConfig(t *testing.T) {
	env := cptest.Start(t)
	ctx := t.Context()
	a := createAgent(t, env, 1, "configured")

	_, err := env.Agents.GetAgentConfig(ctx, &managementv1.GetAgentConfigRequest{AgentId: a.Id})
	wantCode(t, err, connect.CodeNotFound, fmt.Sprintf("agent %d", a.Id))

	put := func(yaml string, expected int64) (*managementv1.AgentConfig, error) {
		resp, err := env.Agents.PutAgentConfig(ctx, &managementv1.PutAgentConfigRequest{AgentId: a.Id, Yaml: yaml, ExpectedVersion: expected})
		return resp.GetConfig(), err
	}
	v1 := must[*managementv1.AgentConfig](t)(put("# first\n", 0))
	v2 := must[*managementv1.AgentConfig](t)(put("# second\n", 1))
	if v1.Version != 1 || v2.Version != 2 || v2.Yaml != "# second\n" || v2.AgentId != a.Id {
		t.Fatalf("versions %v, %v", v1, v2)
	}
	_, err = put("# stale\n", 1)
	wantCode(t, err, connect.CodeFailedPrecondition, "version 2")

	latest := must[*managementv1.GetAgentConfigResponse](t)(env.Agents.GetAgentConfig(ctx, &managementv1.GetAgentConfigRequest{AgentId: a.Id}))
	if !proto.Equal(latest.Config, v2) {
		t.Fatalf("latest = %v, want %v", latest.Config, v2)
	}
	first := must[*managementv1.GetAgentConfigResponse](t)(env.Agents.GetAgentConfig(ctx, &managementv1.GetAgentConfigRequest{AgentId: a.Id, Version: 1}))
	if !proto.Equal(first.Config, v1) {
		t.Fatalf("version 1 = %v, want %v", first.Config, v1)
	}
	_, err = env.Agents.GetAgentConfig(ctx, &managementv1.GetAgentConfigRequest{AgentId: a.Id, Version: 3})
	wantCode(t, err, connect.CodeNotFound, "version 3")
	got := must[*managementv1.GetAgentResponse](t)(env.Agents.GetAgent(ctx, &managementv1.GetAgentRequest{AgentId: a.Id}))
	if got.Agent.ConfigVersion != 2 {
		t.Fatalf("agent config_version = %d, want 2", got.Agent.ConfigVersion)
	}

	_, err = put(strings.Repeat("#", 128<<10+1), 0)
	wantCode(t, err, connect.CodeInvalidArgument, "yaml", "131073 bytes")
	// The parser's problems reach the caller, naming the setting.
	_, err = put("no_such_setting: true\n", 0)
	wantCode(t, err, connect.CodeInvalidArgument, "no_such_setting")
	_, err = env.Agents.PutAgentConfig(ctx, &managementv1.PutAgentConfigRequest{AgentId: 999999, Yaml: "# x\n"})
	wantCode(t, err, connect.CodeNotFound, "agent 999999")
	_, err = env.Agents.GetAgentConfig(ctx, &managementv1.GetAgentConfigRequest{AgentId: 999999})
	wantCode(t, err, connect.CodeNotFound, "agent 999999")
	if n := count(t, env, `SELECT count(*) FROM agent_configs`); n != 2 {
		t.Fatalf("%d configurations stored, want 2", n)
	}

	// Concurrent puts each get their own version.
	const n = 8
	var wg sync.WaitGroup
	versions := make([]int64, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			c, err := put(fmt.Sprintf("# concurrent %d\n", i), 0)
			versions[i], errs[i] = c.GetVersion(), err
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(versions)
	for i, v := range versions {
		if v != int64(3+i) {
			t.Fatalf("concurrent versions %v, want 3..%d", versions, 2+n)
		}
	}
	// Exactly one of two puts expecting the same version wins.
	var wins, stale int
	var mu sync.Mutex
	for range 2 {
		wg.Go(func() {
			_, err := put("# race\n", 2+n)
			mu.Lock()
			defer mu.Unlock()
			switch connect.CodeOf(err) {
			case connect.CodeFailedPrecondition:
				stale++
			default:
				if err == nil {
					wins++
				}
			}
		})
	}
	wg.Wait()
	if wins != 1 || stale != 1 {
		t.Fatalf("%d puts won and %d were stale, want 1 and 1", wins, stale)
	}
}

// clock is an injectable server clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func addNode(t *testing.T, env *cptest.Env, id string, draining bool, leaseExpires time.Time) {
	t.Helper()
	_, err := pool(env).Exec(t.Context(), `INSERT INTO nodes (node_id, boot_id, private_url, version, draining, lease_expires_at)
		VALUES ($1, 'boot-'||$1, 'grpc://'||$1||':8155', 'v1.0.0', $2, $3)`, id, draining, leaseExpires)
	if err != nil {
		t.Fatal(err)
	}
}

func addTunnel(t *testing.T, env *cptest.Env, node, tunnel string, agent int64, open bool, version string, connected time.Time) {
	t.Helper()
	_, err := pool(env).Exec(t.Context(), `INSERT INTO tunnels (node_id, tunnel_id, agent_id, seq, open, agent_version, connected_at)
		VALUES ($1, $2, $3, 1, $4, $5, $6)`, node, tunnel, agent, open, version, connected)
	if err != nil {
		t.Fatal(err)
	}
}

func TestListConnectedAgents(t *testing.T) {
	clk := &clock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	env := cptest.Start(t, func(o *controlplane.Options) { o.Now = clk.Now })
	ctx := t.Context()
	a := createAgent(t, env, 1, "a")
	b := createAgent(t, env, 1, "b")
	c := createAgent(t, env, 1, "c")
	t0 := clk.Now()
	addNode(t, env, "n1", false, t0.Add(20*time.Second))
	addNode(t, env, "n2", true, t0.Add(60*time.Second))
	addNode(t, env, "n3", false, t0.Add(-time.Second)) // lease expired
	addTunnel(t, env, "n1", "t1", a.Id, true, "v17.0", t0.Add(-time.Minute))
	addTunnel(t, env, "n1", "t2", a.Id, true, "v17.1", t0.Add(-time.Second))
	addTunnel(t, env, "n1", "t3", a.Id, false, "v17.1", t0.Add(-time.Hour)) // closed
	addTunnel(t, env, "n2", "t4", a.Id, true, "v17.1", t0.Add(-2*time.Minute))
	addTunnel(t, env, "n3", "t5", b.Id, true, "v17.1", t0.Add(-2*time.Minute))
	addTunnel(t, env, "n1", "t6", c.Id, true, "v17.1", t0.Add(-2*time.Minute))

	resp := must[*managementv1.ListConnectedAgentsResponse](t)(env.Agents.ListConnectedAgents(ctx,
		&managementv1.ListConnectedAgentsRequest{AgentIds: []int64{a.Id, b.Id, a.Id, 424242}}))
	want := &managementv1.ListConnectedAgentsResponse{Agents: []*managementv1.ConnectedAgent{{
		AgentId: a.Id,
		Nodes: []*managementv1.ConnectedNode{
			{NodeId: "n1", PrivateUrl: "grpc://n1:8155", Tunnels: 2, ConnectedSince: timestamppb.New(t0.Add(-time.Minute)), AgentVersion: "v17.1"},
			{NodeId: "n2", PrivateUrl: "grpc://n2:8155", Tunnels: 1, ConnectedSince: timestamppb.New(t0.Add(-2 * time.Minute)), AgentVersion: "v17.1", Draining: true},
		},
	}}}
	if !proto.Equal(resp, want) {
		t.Fatalf("got %v\nwant %v", resp, want)
	}

	// Past n1's lease, on the server's clock, only n2 is left.
	clk.Add(30 * time.Second)
	resp = must[*managementv1.ListConnectedAgentsResponse](t)(env.Agents.ListConnectedAgents(ctx,
		&managementv1.ListConnectedAgentsRequest{AgentIds: []int64{a.Id, c.Id}}))
	if len(resp.Agents) != 1 || len(resp.Agents[0].Nodes) != 1 || resp.Agents[0].Nodes[0].NodeId != "n2" {
		t.Fatalf("after n1's lease: %v", resp)
	}

	empty := must[*managementv1.ListConnectedAgentsResponse](t)(env.Agents.ListConnectedAgents(ctx, &managementv1.ListConnectedAgentsRequest{}))
	if len(empty.Agents) != 0 {
		t.Fatalf("no agents asked, got %v", empty)
	}
	_, err := env.Agents.ListConnectedAgents(ctx, &managementv1.ListConnectedAgentsRequest{AgentIds: make([]int64, 1001)})
	wantCode(t, err, connect.CodeInvalidArgument, "agent_ids")
	_, err = env.Agents.ListConnectedAgents(ctx, &managementv1.ListConnectedAgentsRequest{AgentIds: []int64{a.Id, -1}})
	wantCode(t, err, connect.CodeInvalidArgument, "agent_ids[1]")
}

func TestDeleteAgentRemovesEverything(t *testing.T) {
	env := cptest.Start(t)
	ctx := t.Context()
	a := createAgent(t, env, 1, "doomed")
	keep := createAgent(t, env, 1, "kept")
	must[*managementv1.CreateAgentTokenResponse](t)(env.Agents.CreateAgentToken(ctx, &managementv1.CreateAgentTokenRequest{AgentId: a.Id, Name: "t"}))
	must[*managementv1.PutAgentConfigResponse](t)(env.Agents.PutAgentConfig(ctx, &managementv1.PutAgentConfigRequest{AgentId: a.Id, Yaml: "# c\n"}))
	pat := must[*managementv1.CreateAccessTokenResponse](t)(env.Credentials.CreateAccessToken(ctx, &managementv1.CreateAccessTokenRequest{
		User: &managementv1.UserIdentity{Id: 1, Username: "u"}, AgentIds: []int64{a.Id, keep.Id},
		ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)),
	}))
	addNode(t, env, "n1", false, time.Now().Add(time.Hour))
	addTunnel(t, env, "n1", "t1", a.Id, true, "", time.Now())
	addTunnel(t, env, "n1", "t2", keep.Id, true, "", time.Now())

	if _, err := env.Agents.DeleteAgent(ctx, &managementv1.DeleteAgentRequest{AgentId: a.Id}); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"agent_tokens", "agent_configs", "tunnels"} {
		if n := count(t, env, `SELECT count(*) FROM `+table+` WHERE agent_id = $1`, a.Id); n != 0 {
			t.Errorf("%s still holds %d rows of the deleted agent", table, n)
		}
	}
	if n := count(t, env, `SELECT count(*) FROM tunnels WHERE agent_id = $1`, keep.Id); n != 1 {
		t.Errorf("the other agent's tunnel is gone")
	}
	list := must[*managementv1.ListAccessTokensResponse](t)(env.Credentials.ListAccessTokens(ctx, &managementv1.ListAccessTokensRequest{}))
	if len(list.Tokens) != 1 || list.Tokens[0].Id != pat.Token.Id || !slices.Equal(list.Tokens[0].AgentIds, []int64{keep.Id}) {
		t.Fatalf("access tokens after delete: %v", list.Tokens)
	}
}

func TestAccessTokens(t *testing.T) {
	env := cptest.Start(t)
	ctx := t.Context()
	a := createAgent(t, env, 1, "a")
	b := createAgent(t, env, 1, "b")
	expires := time.Now().Add(24 * time.Hour).Truncate(time.Microsecond)
	user := &managementv1.UserIdentity{Id: 42, Username: "alice", Groups: []string{"g1", "g1/sub"}, Extra: map[string]string{"role": "maintainer"}}

	created := must[*managementv1.CreateAccessTokenResponse](t)(env.Credentials.CreateAccessToken(ctx, &managementv1.CreateAccessTokenRequest{
		User: user, AgentIds: []int64{a.Id, b.Id, a.Id}, ExpiresAt: timestamppb.New(expires), Name: "laptop",
	}))
	tok := created.Token
	if tok.Id <= 0 || !proto.Equal(tok.User, user) || !slices.Equal(tok.AgentIds, []int64{a.Id, b.Id}) ||
		!tok.ExpiresAt.AsTime().Equal(expires) || tok.Name != "laptop" || tok.RevokedAt != nil {
		t.Fatalf("created %v", tok)
	}
	id, random := randomPart(t, secret.AccessToken, created.Secret)
	if id != tok.Id {
		t.Fatalf("secret names row %d, token is %d", id, tok.Id)
	}
	var stored, extra []byte
	var groups []string
	if err := pool(env).QueryRow(ctx, `SELECT secret_hash, user_groups, user_extra FROM access_tokens WHERE id = $1`, tok.Id).
		Scan(&stored, &groups, &extra); err != nil {
		t.Fatal(err)
	}
	if !secret.Matches(random, stored) || !slices.Equal(groups, user.Groups) || !json.Valid(extra) || !strings.Contains(string(extra), `"maintainer"`) {
		t.Fatalf("stored hash ok=%v groups %v extra %s", secret.Matches(random, stored), groups, extra)
	}
	assertNotStored(t, env, random)

	other := must[*managementv1.CreateAccessTokenResponse](t)(env.Credentials.CreateAccessToken(ctx, &managementv1.CreateAccessTokenRequest{
		User: &managementv1.UserIdentity{Id: 43, Username: "bob"}, AgentIds: []int64{b.Id}, ExpiresAt: timestamppb.New(expires),
	}))
	list := func(req *managementv1.ListAccessTokensRequest) []int64 {
		t.Helper()
		resp := must[*managementv1.ListAccessTokensResponse](t)(env.Credentials.ListAccessTokens(ctx, req))
		var ids []int64
		for _, tk := range resp.Tokens {
			ids = append(ids, tk.Id)
		}
		raw, _ := protojson.Marshal(resp)
		if bytes.Contains(raw, []byte(random)) {
			t.Fatal("ListAccessTokens returned a secret")
		}
		return ids
	}
	for _, tc := range []struct {
		req  *managementv1.ListAccessTokensRequest
		want []int64
	}{
		{&managementv1.ListAccessTokensRequest{}, []int64{tok.Id, other.Token.Id}},
		{&managementv1.ListAccessTokensRequest{UserId: 42}, []int64{tok.Id}},
		{&managementv1.ListAccessTokensRequest{AgentId: a.Id}, []int64{tok.Id}},
		{&managementv1.ListAccessTokensRequest{AgentId: b.Id}, []int64{tok.Id, other.Token.Id}},
		{&managementv1.ListAccessTokensRequest{UserId: 43, AgentId: a.Id}, nil},
	} {
		if got := list(tc.req); !slices.Equal(got, tc.want) {
			t.Errorf("list %v = %v, want %v", tc.req, got, tc.want)
		}
	}

	if _, err := env.Credentials.RevokeAccessToken(ctx, &managementv1.RevokeAccessTokenRequest{TokenId: tok.Id}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Credentials.RevokeAccessToken(ctx, &managementv1.RevokeAccessTokenRequest{TokenId: tok.Id}); err != nil {
		t.Fatalf("revoke twice: %v", err)
	}
	resp := must[*managementv1.ListAccessTokensResponse](t)(env.Credentials.ListAccessTokens(ctx, &managementv1.ListAccessTokensRequest{UserId: 42}))
	if resp.Tokens[0].RevokedAt == nil {
		t.Fatal("revoked token shows no revoked_at")
	}
	_, err := env.Credentials.RevokeAccessToken(ctx, &managementv1.RevokeAccessTokenRequest{TokenId: 999999})
	wantCode(t, err, connect.CodeNotFound, "access token 999999")

	// Nothing half-written: one unknown agent, no row.
	before := count(t, env, `SELECT count(*) FROM access_tokens`)
	_, err = env.Credentials.CreateAccessToken(ctx, &managementv1.CreateAccessTokenRequest{
		User: user, AgentIds: []int64{a.Id, 777777}, ExpiresAt: timestamppb.New(expires),
	})
	wantCode(t, err, connect.CodeNotFound, "agent 777777")
	if n := count(t, env, `SELECT count(*) FROM access_tokens`); n != before {
		t.Fatalf("%d access tokens after a failed create, want %d", n, before)
	}

	valid := func() *managementv1.CreateAccessTokenRequest {
		return &managementv1.CreateAccessTokenRequest{User: proto.CloneOf(user), AgentIds: []int64{a.Id}, ExpiresAt: timestamppb.New(expires)}
	}
	for _, tc := range []struct {
		name   string
		modify func(*managementv1.CreateAccessTokenRequest)
		field  string
	}{
		{"no user", func(r *managementv1.CreateAccessTokenRequest) { r.User = nil }, "user"},
		{"no user id", func(r *managementv1.CreateAccessTokenRequest) { r.User.Id = 0 }, "user.id"},
		{"no username", func(r *managementv1.CreateAccessTokenRequest) { r.User.Username = "" }, "user.username"},
		{"long username", func(r *managementv1.CreateAccessTokenRequest) { r.User.Username = strings.Repeat("u", 256) }, "user.username"},
		{"empty group", func(r *managementv1.CreateAccessTokenRequest) { r.User.Groups = []string{"ok", ""} }, "user.groups[1]"},
		{"no agents", func(r *managementv1.CreateAccessTokenRequest) { r.AgentIds = nil }, "agent_ids"},
		{"bad agent id", func(r *managementv1.CreateAccessTokenRequest) { r.AgentIds = []int64{0} }, "agent_ids[0]"},
		{"no expiry", func(r *managementv1.CreateAccessTokenRequest) { r.ExpiresAt = nil }, "expires_at"},
		{"expired", func(r *managementv1.CreateAccessTokenRequest) {
			r.ExpiresAt = timestamppb.New(time.Now().Add(-time.Minute))
		}, "expires_at"},
		{"too far", func(r *managementv1.CreateAccessTokenRequest) {
			r.ExpiresAt = timestamppb.New(time.Now().Add(366 * 24 * time.Hour))
		}, "expires_at"},
		{"long name", func(r *managementv1.CreateAccessTokenRequest) { r.Name = strings.Repeat("n", 256) }, "name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := valid()
			tc.modify(req)
			_, err := env.Credentials.CreateAccessToken(ctx, req)
			wantCode(t, err, connect.CodeInvalidArgument, tc.field)
		})
	}
	if n := count(t, env, `SELECT count(*) FROM access_tokens`); n != before {
		t.Fatalf("%d access tokens after invalid creates, want %d", n, before)
	}
}

func TestCIJobTokens(t *testing.T) {
	env := cptest.Start(t)
	ctx := t.Context()
	a := createAgent(t, env, 1, "a")
	job := &managementv1.CIJob{
		JobId: 1001, ProjectId: 5, ProjectPath: "group/project", GroupPaths: []string{"group"},
		User:        &managementv1.UserIdentity{Id: 42, Username: "alice"},
		Environment: "production", EnvironmentTier: "production", PipelineId: "77",
	}
	expires := timestamppb.New(time.Now().Add(time.Hour))
	created := must[*managementv1.CreateCIJobTokenResponse](t)(env.Credentials.CreateCIJobToken(ctx,
		&managementv1.CreateCIJobTokenRequest{Job: job, AgentIds: []int64{a.Id}, ExpiresAt: expires}))
	id, random := randomPart(t, secret.CIJobToken, created.Secret)
	if id != created.Id {
		t.Fatalf("secret names row %d, token is %d", id, created.Id)
	}
	var stored, rawJob []byte
	var agents []int64
	if err := pool(env).QueryRow(ctx, `SELECT secret_hash, job, agent_ids FROM ci_job_tokens WHERE id = $1`, id).
		Scan(&stored, &rawJob, &agents); err != nil {
		t.Fatal(err)
	}
	var gotJob managementv1.CIJob
	if err := protojson.Unmarshal(rawJob, &gotJob); err != nil {
		t.Fatalf("stored job %s: %v", rawJob, err)
	}
	if !secret.Matches(random, stored) || !proto.Equal(&gotJob, job) || !slices.Equal(agents, []int64{a.Id}) {
		t.Fatalf("stored job %s, agents %v, hash ok %v", rawJob, agents, secret.Matches(random, stored))
	}
	assertNotStored(t, env, random)

	// Explicit agents are optional.
	must[*managementv1.CreateCIJobTokenResponse](t)(env.Credentials.CreateCIJobToken(ctx,
		&managementv1.CreateCIJobTokenRequest{Job: job, ExpiresAt: expires}))

	if _, err := env.Credentials.RevokeCIJobToken(ctx, &managementv1.RevokeCIJobTokenRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, env, `SELECT count(*) FROM ci_job_tokens WHERE id = $1 AND revoked_at IS NOT NULL`, id); n != 1 {
		t.Fatal("token not revoked")
	}
	_, err := env.Credentials.RevokeCIJobToken(ctx, &managementv1.RevokeCIJobTokenRequest{Id: 999999})
	wantCode(t, err, connect.CodeNotFound, "ci job token 999999")

	_, err = env.Credentials.CreateCIJobToken(ctx, &managementv1.CreateCIJobTokenRequest{Job: job, AgentIds: []int64{a.Id, 888888}, ExpiresAt: expires})
	wantCode(t, err, connect.CodeNotFound, "agent 888888")
	for _, tc := range []struct {
		name   string
		modify func(*managementv1.CreateCIJobTokenRequest)
		field  string
	}{
		{"no job", func(r *managementv1.CreateCIJobTokenRequest) { r.Job = nil }, "job"},
		{"no job id", func(r *managementv1.CreateCIJobTokenRequest) { r.Job.JobId = 0 }, "job.job_id"},
		{"no project id", func(r *managementv1.CreateCIJobTokenRequest) { r.Job.ProjectId = 0 }, "job.project_id"},
		{"no project path", func(r *managementv1.CreateCIJobTokenRequest) { r.Job.ProjectPath = "" }, "job.project_path"},
		{"bad user", func(r *managementv1.CreateCIJobTokenRequest) { r.Job.User.Username = "" }, "job.user.username"},
		{"over a week", func(r *managementv1.CreateCIJobTokenRequest) {
			r.ExpiresAt = timestamppb.New(time.Now().Add(8 * 24 * time.Hour))
		}, "expires_at"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := &managementv1.CreateCIJobTokenRequest{Job: proto.CloneOf(job), ExpiresAt: expires}
			tc.modify(req)
			_, err := env.Credentials.CreateCIJobToken(ctx, req)
			wantCode(t, err, connect.CodeInvalidArgument, tc.field)
		})
	}
	if n := count(t, env, `SELECT count(*) FROM ci_job_tokens`); n != 2 {
		t.Fatalf("%d CI job tokens stored, want 2", n)
	}
}

func TestSessions(t *testing.T) {
	env := cptest.Start(t)
	ctx := t.Context()
	a := createAgent(t, env, 1, "a")
	req := &managementv1.CreateSessionRequest{
		User:         &managementv1.UserIdentity{Id: 42, Username: "alice", Groups: []string{"g"}},
		AgentIds:     []int64{a.Id},
		ExpiresAt:    timestamppb.New(time.Now().Add(time.Hour)),
		ProjectPaths: []string{"g/p"},
		GroupPaths:   []string{"g"},
	}
	created := must[*managementv1.CreateSessionResponse](t)(env.Credentials.CreateSession(ctx, req))
	id, random := randomPart(t, secret.Session, created.SessionId)
	if id != created.Id || !strings.HasPrefix(created.CsrfToken, secret.CSRF+"_") {
		t.Fatalf("created %v", created)
	}
	var secretHash, csrfHash, rawSession []byte
	var agents []int64
	if err := pool(env).QueryRow(ctx, `SELECT secret_hash, csrf_hash, session, agent_ids FROM sessions WHERE id = $1`, id).
		Scan(&secretHash, &csrfHash, &rawSession, &agents); err != nil {
		t.Fatal(err)
	}
	var sess managementv1.CreateSessionRequest
	if err := protojson.Unmarshal(rawSession, &sess); err != nil {
		t.Fatalf("stored session %s: %v", rawSession, err)
	}
	want := &managementv1.CreateSessionRequest{User: req.User, ProjectPaths: req.ProjectPaths, GroupPaths: req.GroupPaths}
	if !proto.Equal(&sess, want) || !slices.Equal(agents, []int64{a.Id}) {
		t.Fatalf("stored session %s, agents %v", rawSession, agents)
	}
	if !secret.Matches(random, secretHash) || !secret.Matches(created.CsrfToken, csrfHash) {
		t.Fatal("stored hashes do not match the secrets")
	}
	assertNotStored(t, env, random)
	assertNotStored(t, env, created.CsrfToken)

	if _, err := env.Credentials.RevokeSession(ctx, &managementv1.RevokeSessionRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	if n := count(t, env, `SELECT count(*) FROM sessions WHERE id = $1 AND revoked_at IS NOT NULL`, id); n != 1 {
		t.Fatal("session not revoked")
	}
	_, err := env.Credentials.RevokeSession(ctx, &managementv1.RevokeSessionRequest{Id: 999999})
	wantCode(t, err, connect.CodeNotFound, "session 999999")

	bad := proto.CloneOf(req)
	bad.ExpiresAt = timestamppb.New(time.Now().Add(31 * 24 * time.Hour))
	_, err = env.Credentials.CreateSession(ctx, bad)
	wantCode(t, err, connect.CodeInvalidArgument, "expires_at")
	bad = proto.CloneOf(req)
	bad.User = nil
	_, err = env.Credentials.CreateSession(ctx, bad)
	wantCode(t, err, connect.CodeInvalidArgument, "user")
	bad = proto.CloneOf(req)
	bad.ProjectPaths = []string{strings.Repeat("p", 1025)}
	_, err = env.Credentials.CreateSession(ctx, bad)
	wantCode(t, err, connect.CodeInvalidArgument, "project_paths[0]")
	bad = proto.CloneOf(req)
	bad.AgentIds = []int64{666666}
	_, err = env.Credentials.CreateSession(ctx, bad)
	wantCode(t, err, connect.CodeNotFound, "agent 666666")
	if n := count(t, env, `SELECT count(*) FROM sessions`); n != 1 {
		t.Fatalf("%d sessions stored, want 1", n)
	}
}

func TestRouting(t *testing.T) {
	env := cptest.Start(t)
	ctx := t.Context()
	a := createAgent(t, env, 1, "a")
	b := createAgent(t, env, 1, "b")
	now := time.Now()
	addNode(t, env, "n1", false, now.Add(time.Hour))
	addNode(t, env, "n2", true, now.Add(time.Hour))
	addNode(t, env, "n3", false, now.Add(-time.Hour))
	addTunnel(t, env, "n1", "t1", a.Id, true, "", now)
	addTunnel(t, env, "n1", "t2", a.Id, true, "", now)
	addTunnel(t, env, "n2", "t3", a.Id, true, "", now)
	addTunnel(t, env, "n3", "t4", b.Id, true, "", now)
	addTunnel(t, env, "n3", "t5", b.Id, false, "", now)

	nodes := must[*managementv1.ListNodesResponse](t)(env.Routing.ListNodes(ctx, &managementv1.ListNodesRequest{}))
	var got []string
	for _, n := range nodes.Nodes {
		got = append(got, fmt.Sprintf("%s %s %d %v %s", n.NodeId, n.State, n.Tunnels, n.Draining, n.PrivateUrl))
	}
	want := []string{"n1 live 2 false grpc://n1:8155", "n2 draining 1 true grpc://n2:8155", "n3 stale 1 false grpc://n3:8155"}
	if !slices.Equal(got, want) {
		t.Fatalf("nodes\n%q\nwant\n%q", got, want)
	}

	routes := must[*managementv1.ListRoutesResponse](t)(env.Routing.ListRoutes(ctx, &managementv1.ListRoutesRequest{}))
	got = nil
	for _, r := range routes.Routes {
		got = append(got, fmt.Sprintf("%d %s %d %s", r.AgentId, r.NodeId, r.Tunnels, r.State))
		if r.HeartbeatAgeSeconds < 0 || r.ConnectedSince == nil {
			t.Errorf("route %v", r)
		}
	}
	want = []string{
		fmt.Sprintf("%d n1 2 live", a.Id), fmt.Sprintf("%d n2 1 draining", a.Id), fmt.Sprintf("%d n3 1 stale", b.Id),
	}
	if !slices.Equal(got, want) {
		t.Fatalf("routes\n%q\nwant\n%q", got, want)
	}
	only := must[*managementv1.ListRoutesResponse](t)(env.Routing.ListRoutes(ctx, &managementv1.ListRoutesRequest{AgentId: b.Id}))
	if len(only.Routes) != 1 || only.Routes[0].AgentId != b.Id {
		t.Fatalf("routes of b: %v", only.Routes)
	}
}
