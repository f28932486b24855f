package controlplane_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kas-project/kas/controlplane"
	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/internal/cptest"
	"github.com/kas-project/kas/internal/pgtest"
)

// replica starts a control plane on its own pool to dsn. Its pool and
// listener belong to t and close when t ends.
func replica(t *testing.T, dsn string, apiKey, privateKey []byte) *cptest.Env {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	srv, err := controlplane.New(controlplane.Options{Pool: pool, APISecretKey: apiKey, PrivateAPISecretKey: privateKey})
	if err != nil {
		t.Fatal(err)
	}
	return cptest.Serve(t, srv, apiKey, privateKey)
}

// TestStatelessReplicas alternates calls between two replicas on one
// database, then stops one: the other answers everything that was written
// through either.
func TestStatelessReplicas(t *testing.T) {
	dsn := pgtest.DSN(t)
	apiKey, privateKey := cptest.Key(t), cptest.Key(t)
	b := replica(t, dsn, apiKey, privateKey)

	var (
		urlA    string
		agent   *managementv1.Agent
		tokens  *managementv1.ListAgentTokensResponse
		config  *managementv1.AgentConfig
		pats    *managementv1.ListAccessTokensResponse
		listing *managementv1.ListAgentsResponse
	)
	// Replica A lives only as long as this subtest: its Cleanup closes A's
	// listener and pool.
	t.Run("alternate", func(t *testing.T) {
		a := replica(t, dsn, apiKey, privateKey)
		urlA = a.URL
		ctx := t.Context()

		agent = createAgent(t, a, 1, "shared")
		fromB := must[*managementv1.GetAgentResponse](t)(b.Agents.GetAgent(ctx, &managementv1.GetAgentRequest{AgentId: agent.Id}))
		if !proto.Equal(fromB.Agent, agent) {
			t.Fatalf("B sees %v, A created %v", fromB.Agent, agent)
		}
		// Duplicates are refused whichever replica is asked.
		_, err := b.Agents.CreateAgent(ctx, &managementv1.CreateAgentRequest{ProjectId: 1, Name: "shared"})
		wantCode(t, err, connect.CodeAlreadyExists, "shared")
		second := createAgent(t, b, 1, "second")

		// Paging: a token from A works on B.
		page1 := must[*managementv1.ListAgentsResponse](t)(a.Agents.ListAgents(ctx, &managementv1.ListAgentsRequest{PageSize: 1}))
		page2 := must[*managementv1.ListAgentsResponse](t)(b.Agents.ListAgents(ctx, &managementv1.ListAgentsRequest{PageSize: 1, PageToken: page1.NextPageToken}))
		if len(page1.Agents) != 1 || len(page2.Agents) != 1 || page1.Agents[0].Id != agent.Id ||
			page2.Agents[0].Id != second.Id || page2.NextPageToken != "" {
			t.Fatalf("pages across replicas: %v, %v", page1, page2)
		}

		tok := must[*managementv1.CreateAgentTokenResponse](t)(b.Agents.CreateAgentToken(ctx, &managementv1.CreateAgentTokenRequest{AgentId: agent.Id, Name: "t1"}))
		must[*managementv1.CreateAgentTokenResponse](t)(a.Agents.CreateAgentToken(ctx, &managementv1.CreateAgentTokenRequest{AgentId: agent.Id, Name: "t2"}))
		revoked := must[*managementv1.RevokeAgentTokenResponse](t)(a.Agents.RevokeAgentToken(ctx, &managementv1.RevokeAgentTokenRequest{TokenId: tok.Token.Id}))
		fromA := must[*managementv1.ListAgentTokensResponse](t)(a.Agents.ListAgentTokens(ctx, &managementv1.ListAgentTokensRequest{AgentId: agent.Id}))
		tokens = must[*managementv1.ListAgentTokensResponse](t)(b.Agents.ListAgentTokens(ctx, &managementv1.ListAgentTokensRequest{AgentId: agent.Id}))
		if !proto.Equal(fromA, tokens) || len(tokens.Tokens) != 2 || !proto.Equal(tokens.Tokens[0], revoked.Token) {
			t.Fatalf("tokens: A %v, B %v", fromA, tokens)
		}

		must[*managementv1.PutAgentConfigResponse](t)(a.Agents.PutAgentConfig(ctx, &managementv1.PutAgentConfigRequest{AgentId: agent.Id, Yaml: "# v1\n"}))
		config = must[*managementv1.PutAgentConfigResponse](t)(b.Agents.PutAgentConfig(ctx, &managementv1.PutAgentConfigRequest{AgentId: agent.Id, Yaml: "# v2\n", ExpectedVersion: 1})).Config
		_, err = a.Agents.PutAgentConfig(ctx, &managementv1.PutAgentConfigRequest{AgentId: agent.Id, Yaml: "# late\n", ExpectedVersion: 1})
		wantCode(t, err, connect.CodeFailedPrecondition)
		gotA := must[*managementv1.GetAgentConfigResponse](t)(a.Agents.GetAgentConfig(ctx, &managementv1.GetAgentConfigRequest{AgentId: agent.Id}))
		if !proto.Equal(gotA.Config, config) || config.Version != 2 {
			t.Fatalf("config: A %v, B put %v", gotA.Config, config)
		}

		expires := timestamppb.New(time.Now().Add(time.Hour))
		pat := must[*managementv1.CreateAccessTokenResponse](t)(a.Credentials.CreateAccessToken(ctx, &managementv1.CreateAccessTokenRequest{
			User: &managementv1.UserIdentity{Id: 9, Username: "u"}, AgentIds: []int64{agent.Id}, ExpiresAt: expires,
		}))
		must[*managementv1.CreateAccessTokenResponse](t)(b.Credentials.CreateAccessToken(ctx, &managementv1.CreateAccessTokenRequest{
			User: &managementv1.UserIdentity{Id: 9, Username: "u"}, AgentIds: []int64{second.Id}, ExpiresAt: expires,
		}))
		if _, err := b.Credentials.RevokeAccessToken(ctx, &managementv1.RevokeAccessTokenRequest{TokenId: pat.Token.Id}); err != nil {
			t.Fatal(err)
		}
		patsA := must[*managementv1.ListAccessTokensResponse](t)(a.Credentials.ListAccessTokens(ctx, &managementv1.ListAccessTokensRequest{UserId: 9}))
		pats = must[*managementv1.ListAccessTokensResponse](t)(b.Credentials.ListAccessTokens(ctx, &managementv1.ListAccessTokensRequest{UserId: 9}))
		if !proto.Equal(patsA, pats) || len(pats.Tokens) != 2 || pats.Tokens[0].RevokedAt == nil {
			t.Fatalf("access tokens: A %v, B %v", patsA, pats)
		}

		if _, err := a.Agents.DeleteAgent(ctx, &managementv1.DeleteAgentRequest{AgentId: second.Id}); err != nil {
			t.Fatal(err)
		}
		_, err = b.Agents.GetAgent(ctx, &managementv1.GetAgentRequest{AgentId: second.Id})
		wantCode(t, err, connect.CodeNotFound)
		// Two access tokens remain, the second without the deleted agent.
		pats = must[*managementv1.ListAccessTokensResponse](t)(b.Credentials.ListAccessTokens(ctx, &managementv1.ListAccessTokensRequest{UserId: 9}))
		listing = must[*managementv1.ListAgentsResponse](t)(a.Agents.ListAgents(ctx, &managementv1.ListAgentsRequest{}))
	})
	if t.Failed() {
		return
	}

	// A is gone: its listener refuses connections.
	resp, err := b.HTTPClient.Get(urlA)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("replica A still answers: %s", resp.Status)
	}

	// B serves everything that was written, through either replica.
	ctx := t.Context()
	got := must[*managementv1.ListAgentsResponse](t)(b.Agents.ListAgents(ctx, &managementv1.ListAgentsRequest{}))
	if !proto.Equal(got, listing) || len(got.Agents) != 1 || got.Agents[0].Id != agent.Id || got.Agents[0].ConfigVersion != 2 {
		t.Fatalf("agents from B alone: %v, want %v", got, listing)
	}
	gotTokens := must[*managementv1.ListAgentTokensResponse](t)(b.Agents.ListAgentTokens(ctx, &managementv1.ListAgentTokensRequest{AgentId: agent.Id}))
	if !proto.Equal(gotTokens, tokens) {
		t.Fatalf("tokens from B alone: %v, want %v", gotTokens, tokens)
	}
	gotConfig := must[*managementv1.GetAgentConfigResponse](t)(b.Agents.GetAgentConfig(ctx, &managementv1.GetAgentConfigRequest{AgentId: agent.Id}))
	if !proto.Equal(gotConfig.Config, config) {
		t.Fatalf("config from B alone: %v, want %v", gotConfig.Config, config)
	}
	gotPats := must[*managementv1.ListAccessTokensResponse](t)(b.Credentials.ListAccessTokens(ctx, &managementv1.ListAccessTokensRequest{UserId: 9}))
	if !proto.Equal(gotPats, pats) || len(gotPats.Tokens) != 2 || len(gotPats.Tokens[1].AgentIds) != 0 {
		t.Fatalf("access tokens from B alone: %v, want %v", gotPats, pats)
	}
	// And B still writes.
	createAgent(t, b, 1, "after-a")
	if _, err := b.Agents.PutAgentConfig(ctx, &managementv1.PutAgentConfigRequest{AgentId: agent.Id, Yaml: "# v3\n", ExpectedVersion: 2}); err != nil {
		t.Fatal(err)
	}
}
