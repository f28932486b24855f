package tests

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kas-project/kas/controlplane"
	"github.com/kas-project/kas/dataplane"
	dpv1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	mgmtv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/cptest"
	"github.com/kas-project/kas/internal/kascookie"
	"github.com/kas-project/kas/internal/obs"
	"github.com/kas-project/kas/internal/secret"
	"github.com/kas-project/kas/tests/framework"
)

// Hostile input at the control plane's API, from callers that hold a valid
// key (Rails, a dataplane node) or none: every answer is a clean Connect
// code, never Internal, and a refused call leaves no row behind.

// hostileStrings end up in every string field of the requests below.
var hostileStrings = []string{
	"'; DROP TABLE agents; --",
	`"; DROP TABLE agent_tokens; --`,
	"') OR ('1'='1",
	"1; DELETE FROM sessions WHERE true",
	"$$; TRUNCATE nodes CASCADE; $$",
	"$1", "?", "a'b\"c`d", "''", `\`, `\'`, `\\'`, `\x00`, "\x00", "a\x00b",
	"%", "_", "%_%", "100%_done", "/* */", "-- ",
	"ünïcødé ☃ 🙂", "\u202eevil", "\r\n\t", " ",
}

// hostileEnv is a control plane with raw access to its database and the
// bearer tokens its two kinds of caller send.
type hostileEnv struct {
	*cptest.Env
	mgmtToken, dpToken string
}

func startHostile(t *testing.T) *hostileEnv {
	t.Helper()
	env := cptest.Start(t)
	mgmt, err := authn.NewSigner(env.APIKey, authn.IssuerRails, authn.AudienceManagement, "rails").Token()
	if err != nil {
		t.Fatal(err)
	}
	dp, err := authn.NewSigner(env.PrivateKey, authn.IssuerDataplane, authn.AudienceDataplane, "node").Token()
	if err != nil {
		t.Fatal(err)
	}
	return &hostileEnv{Env: env, mgmtToken: mgmt, dpToken: dp}
}

// kasTables are the tables the migrations create; each must survive.
var kasTables = []string{"agents", "agent_tokens", "agent_configs", "access_tokens", "ci_job_tokens", "sessions", "nodes", "tunnels"}

// counts returns the number of rows of every table in the public schema,
// failing if one of kasTables is gone.
func (h *hostileEnv) counts(t *testing.T) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	pool := h.Server.Store().Pool()
	rows, err := pool.Query(ctx, `SELECT table_name FROM information_schema.tables
		WHERE table_schema = 'public' AND table_type = 'BASE TABLE'`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, table := range tables {
		var n int64
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{table}.Sanitize()).Scan(&n); err != nil {
			t.Fatal(err)
		}
		out[table] = n
	}
	for _, table := range kasTables {
		if _, ok := out[table]; !ok {
			t.Fatalf("table %s is gone (tables: %v)", table, tables)
		}
	}
	return out
}

// unchanged fails unless the row counts are the same as before, except in
// the tables listed in except.
func (h *hostileEnv) unchanged(t *testing.T, before map[string]int64, what string, except ...string) {
	t.Helper()
	after := h.counts(t)
	for table, n := range before {
		if after[table] != n && !slices.Contains(except, table) {
			t.Errorf("%s: table %s went from %d to %d rows", what, table, n, after[table])
		}
	}
}

// post sends a raw request to the control plane and returns the status,
// the Connect error code of the body ("" on success) and the body.
func (h *hostileEnv) post(t *testing.T, path, contentType, token string, body io.Reader, header ...string) (int, string, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := h.HTTPClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var ce struct{ Code string }
	if resp.StatusCode != http.StatusOK {
		json.Unmarshal(b, &ce)
	}
	return resp.StatusCode, ce.Code, b
}

// procedure is one RPC of the control plane and the token that opens it.
type procedure struct {
	path  string
	input protoreflect.MessageDescriptor
	rails bool // a management procedure: api_secret_key; else private_api_secret_key
}

// procedures lists every RPC of every control-plane service, from the
// generated descriptors, so that a new method is covered without a change here.
func procedures() []procedure {
	var out []procedure
	for _, fd := range []protoreflect.FileDescriptor{
		mgmtv1.File_kas_management_v1_management_proto, dpv1.File_kas_dataplane_v1_dataplane_proto,
	} {
		rails := fd == mgmtv1.File_kas_management_v1_management_proto
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			for j := range sd.Methods().Len() {
				md := sd.Methods().Get(j)
				out = append(out, procedure{path: "/" + string(sd.FullName()) + "/" + string(md.Name()), input: md.Input(), rails: rails})
			}
		}
	}
	return out
}

func (h *hostileEnv) tokenFor(p procedure) string {
	if p.rails {
		return h.mgmtToken
	}
	return h.dpToken
}

// allowedFailures are the codes a hostile but authenticated call may get.
var allowedFailures = []connect.Code{
	connect.CodeInvalidArgument, connect.CodeNotFound, connect.CodeFailedPrecondition, connect.CodeAlreadyExists,
}

// probe is one string field of one request: call sends s in it.
type probe struct {
	name string
	// writes are the tables a successful call may add rows to.
	writes []string
	// call returns the call's error and, on success, a check that what
	// was stored is s verbatim (or nil).
	call func(ctx context.Context, s string) (verify func() error, err error)
	// also are codes this call may answer besides allowedFailures.
	also []connect.Code
	// strict: the field has a syntax (a DNS label, a URL) that may refuse
	// every hostile string.
	strict bool
}

func TestHostileSQLMetacharacters(t *testing.T) {
	h := startHostile(t)
	ctx := context.Background()
	base, err := h.Agents.CreateAgent(ctx, &mgmtv1.CreateAgentRequest{ProjectId: 1, Name: "base"})
	if err != nil {
		t.Fatal(err)
	}
	agentID := base.Agent.Id
	const nodeID, bootID = "hostile-node", "boot-1"
	if _, err := h.Nodes.RegisterNode(ctx, &dpv1.RegisterNodeRequest{NodeId: nodeID, BootId: bootID, PrivateUrl: "grpc://10.0.0.1:8155"}); err != nil {
		t.Fatal(err)
	}
	var seq atomic.Int64
	expires := timestamppb.New(time.Now().Add(time.Hour))
	pool := h.Server.Store().Pool()
	n := 0
	unique := func(prefix string) string { n++; return fmt.Sprintf("%s-%d", prefix, n) }
	equal := func(what string, got, want any) error {
		if m, ok := got.(proto.Message); ok {
			if !proto.Equal(m, want.(proto.Message)) {
				return fmt.Errorf("%s stored as %v, sent %v", what, got, want)
			}
			return nil
		}
		if got != want {
			return fmt.Errorf("%s stored as %q, sent %q", what, got, want)
		}
		return nil
	}

	accessToken := func(user *mgmtv1.UserIdentity, name string) (func() error, error) {
		resp, err := h.Credentials.CreateAccessToken(ctx, &mgmtv1.CreateAccessTokenRequest{User: user, AgentIds: []int64{agentID}, ExpiresAt: expires, Name: name})
		if err != nil {
			return nil, err
		}
		return func() error {
			list, err := h.Credentials.ListAccessTokens(ctx, &mgmtv1.ListAccessTokensRequest{AgentId: agentID})
			if err != nil {
				return err
			}
			for _, tok := range list.Tokens {
				if tok.Id == resp.Token.Id {
					if err := equal("user", tok.User, user); err != nil {
						return err
					}
					return equal("name", tok.Name, name)
				}
			}
			return fmt.Errorf("access token %d not listed", resp.Token.Id)
		}, nil
	}
	ciJob := func(job *mgmtv1.CIJob) (func() error, error) {
		resp, err := h.Credentials.CreateCIJobToken(ctx, &mgmtv1.CreateCIJobTokenRequest{Job: job, AgentIds: []int64{agentID}, ExpiresAt: expires})
		if err != nil {
			return nil, err
		}
		return func() error {
			var raw []byte
			if err := pool.QueryRow(ctx, `SELECT job::text FROM ci_job_tokens WHERE id = $1`, resp.Id).Scan(&raw); err != nil {
				return err
			}
			got := &mgmtv1.CIJob{}
			if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw, got); err != nil {
				return err
			}
			return equal("job", got, job)
		}, nil
	}
	session := func(req *mgmtv1.CreateSessionRequest) (func() error, error) {
		req.ExpiresAt = expires
		resp, err := h.Credentials.CreateSession(ctx, req)
		if err != nil {
			return nil, err
		}
		return func() error {
			var raw []byte
			if err := pool.QueryRow(ctx, `SELECT session::text FROM sessions WHERE id = $1`, resp.Id).Scan(&raw); err != nil {
				return err
			}
			got := &mgmtv1.CreateSessionRequest{}
			if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw, got); err != nil {
				return err
			}
			for _, pair := range [][2]any{{got.User, req.User}} {
				if err := equal("session user", pair[0], pair[1]); err != nil {
					return err
				}
			}
			if !slices.Equal(got.ProjectPaths, req.ProjectPaths) || !slices.Equal(got.GroupPaths, req.GroupPaths) {
				return fmt.Errorf("session paths stored as %q %q, sent %q %q", got.ProjectPaths, got.GroupPaths, req.ProjectPaths, req.GroupPaths)
			}
			return nil
		}, nil
	}
	user := func(name string) *mgmtv1.UserIdentity { return &mgmtv1.UserIdentity{Id: 7, Username: name} }
	config := func(yaml string) (func() error, error) {
		resp, err := h.Agents.PutAgentConfig(ctx, &mgmtv1.PutAgentConfigRequest{AgentId: agentID, Yaml: yaml})
		if err != nil {
			return nil, err
		}
		return func() error {
			got, err := h.Agents.GetAgentConfig(ctx, &mgmtv1.GetAgentConfigRequest{AgentId: agentID, Version: resp.Config.Version})
			if err != nil {
				return err
			}
			return equal("yaml", got.Config.Yaml, yaml)
		}, nil
	}
	registerNode := func(req *dpv1.RegisterNodeRequest) (func() error, error) {
		if _, err := h.Nodes.RegisterNode(ctx, req); err != nil {
			return nil, err
		}
		return func() error {
			list, err := h.Routing.ListNodes(ctx, &mgmtv1.ListNodesRequest{})
			if err != nil {
				return err
			}
			for _, n := range list.Nodes {
				if n.NodeId == req.NodeId {
					return equal("node", fmt.Sprint(n.BootId, "|", n.PrivateUrl, "|", n.Version),
						fmt.Sprint(req.BootId, "|", req.PrivateUrl, "|", req.Version))
				}
			}
			return fmt.Errorf("node %q not listed", req.NodeId)
		}, nil
	}
	tunnel := func(tunnelID, version string) (func() error, error) {
		_, err := h.Nodes.RegisterTunnels(ctx, &dpv1.RegisterTunnelsRequest{NodeId: nodeID, BootId: bootID,
			Tunnels: []*dpv1.Tunnel{{TunnelId: tunnelID, AgentId: agentID, Seq: seq.Add(1), AgentVersion: version}}})
		if err != nil {
			return nil, err
		}
		return func() error {
			var n int
			err := pool.QueryRow(ctx, `SELECT count(*) FROM tunnels WHERE node_id = $1 AND tunnel_id = $2 AND agent_version = $3`,
				nodeID, tunnelID, version).Scan(&n)
			if err == nil && n != 1 {
				err = fmt.Errorf("tunnel %q (agent version %q) stored %d times", tunnelID, version, n)
			}
			return err
		}, nil
	}
	decision := func(req *dpv1.AuthorizeProxyRequest, want dpv1.AuthorizeProxyResponse_Decision) (func() error, error) {
		resp, err := h.Auth.AuthorizeProxy(ctx, req)
		if err != nil {
			return nil, err
		}
		return func() error {
			if resp.Decision != want {
				return fmt.Errorf("decision %v (%s), want %v", resp.Decision, resp.Reason, want)
			}
			return nil
		}, nil
	}
	sess, err := h.Credentials.CreateSession(ctx, &mgmtv1.CreateSessionRequest{User: user("alice"), AgentIds: []int64{agentID}, ExpiresAt: expires})
	if err != nil {
		t.Fatal(err)
	}
	cookie, err := kascookie.Encrypt(h.APIKey, sess.SessionId)
	if err != nil {
		t.Fatal(err)
	}

	probes := []probe{
		{name: "CreateAgent.name", writes: []string{"agents"}, strict: true, call: func(ctx context.Context, s string) (func() error, error) {
			resp, err := h.Agents.CreateAgent(ctx, &mgmtv1.CreateAgentRequest{ProjectId: 1, Name: s})
			if err != nil {
				return nil, err
			}
			return func() error { return equal("name", resp.Agent.Name, s) }, nil
		}},
		{name: "ListAgents.page_token", call: func(ctx context.Context, s string) (func() error, error) {
			_, err := h.Agents.ListAgents(ctx, &mgmtv1.ListAgentsRequest{PageToken: s})
			return nil, err
		}},
		{name: "CreateAgentToken.name,description", writes: []string{"agent_tokens"}, call: func(ctx context.Context, s string) (func() error, error) {
			resp, err := h.Agents.CreateAgentToken(ctx, &mgmtv1.CreateAgentTokenRequest{AgentId: agentID, Name: s, Description: s})
			if err != nil {
				return nil, err
			}
			return func() error {
				list, err := h.Agents.ListAgentTokens(ctx, &mgmtv1.ListAgentTokensRequest{AgentId: agentID})
				if err != nil {
					return err
				}
				for _, tok := range list.Tokens {
					if tok.Id == resp.Token.Id {
						return equal("name|description", tok.Name+"|"+tok.Description, s+"|"+s)
					}
				}
				return fmt.Errorf("token %d not listed", resp.Token.Id)
			}, nil
		}},
		{name: "PutAgentConfig.yaml as sent", writes: []string{"agent_configs"}, strict: true, call: func(ctx context.Context, s string) (func() error, error) {
			return config(s)
		}},
		{name: "PutAgentConfig.yaml opaque value", writes: []string{"agent_configs"}, call: func(ctx context.Context, s string) (func() error, error) {
			return config("gitops:\n  note: " + strconv.Quote(s) + "\n")
		}},
		{name: "PutAgentConfig.yaml ci_access id", writes: []string{"agent_configs"}, strict: true, call: func(ctx context.Context, s string) (func() error, error) {
			return config("ci_access:\n  projects:\n  - id: " + strconv.Quote(s) + "\n")
		}},
		{name: "CreateAccessToken.user.username", writes: []string{"access_tokens"}, call: func(ctx context.Context, s string) (func() error, error) {
			return accessToken(user(s), "")
		}},
		{name: "CreateAccessToken.user.groups,extra", writes: []string{"access_tokens"}, call: func(ctx context.Context, s string) (func() error, error) {
			return accessToken(&mgmtv1.UserIdentity{Id: 7, Username: "u", Groups: []string{s}, Extra: map[string]string{s: s}}, "")
		}},
		{name: "CreateAccessToken.name", writes: []string{"access_tokens"}, call: func(ctx context.Context, s string) (func() error, error) {
			return accessToken(user("u"), s)
		}},
		{name: "CreateCIJobToken.job.project_path,group_paths", writes: []string{"ci_job_tokens"}, call: func(ctx context.Context, s string) (func() error, error) {
			return ciJob(&mgmtv1.CIJob{JobId: 1, ProjectId: 2, ProjectPath: s, GroupPaths: []string{s}})
		}},
		{name: "CreateCIJobToken.job.environment,tier,pipeline", writes: []string{"ci_job_tokens"}, call: func(ctx context.Context, s string) (func() error, error) {
			return ciJob(&mgmtv1.CIJob{JobId: 1, ProjectId: 2, ProjectPath: "g/p", Environment: s, EnvironmentTier: s, PipelineId: s})
		}},
		{name: "CreateCIJobToken.job.user", writes: []string{"ci_job_tokens"}, call: func(ctx context.Context, s string) (func() error, error) {
			return ciJob(&mgmtv1.CIJob{JobId: 1, ProjectId: 2, ProjectPath: "g/p", User: &mgmtv1.UserIdentity{Id: 3, Username: s, Groups: []string{s}}})
		}},
		{name: "CreateSession.user,paths", writes: []string{"sessions"}, call: func(ctx context.Context, s string) (func() error, error) {
			return session(&mgmtv1.CreateSessionRequest{User: &mgmtv1.UserIdentity{Id: 3, Username: s, Extra: map[string]string{"k": s}},
				ProjectPaths: []string{s}, GroupPaths: []string{s}})
		}},
		{name: "RegisterNode.node_id", writes: []string{"nodes"}, call: func(ctx context.Context, s string) (func() error, error) {
			return registerNode(&dpv1.RegisterNodeRequest{NodeId: s, BootId: "b", PrivateUrl: "grpc://10.0.0.2:8155"})
		}},
		{name: "RegisterNode.boot_id,version", writes: []string{"nodes"}, call: func(ctx context.Context, s string) (func() error, error) {
			return registerNode(&dpv1.RegisterNodeRequest{NodeId: unique("node"), BootId: s, PrivateUrl: "grpc://10.0.0.2:8155", Version: s})
		}},
		{name: "RegisterNode.private_url", writes: []string{"nodes"}, strict: true, call: func(ctx context.Context, s string) (func() error, error) {
			return registerNode(&dpv1.RegisterNodeRequest{NodeId: unique("node"), BootId: "b", PrivateUrl: s})
		}},
		{name: "Heartbeat.node_id", call: func(ctx context.Context, s string) (func() error, error) {
			_, err := h.Nodes.Heartbeat(ctx, &dpv1.HeartbeatRequest{NodeId: s, BootId: bootID})
			return nil, err
		}},
		{name: "Heartbeat.boot_id", call: func(ctx context.Context, s string) (func() error, error) {
			_, err := h.Nodes.Heartbeat(ctx, &dpv1.HeartbeatRequest{NodeId: nodeID, BootId: s})
			return nil, err
		}},
		{name: "SetDraining.node_id,boot_id", call: func(ctx context.Context, s string) (func() error, error) {
			if _, err := h.Nodes.SetDraining(ctx, &dpv1.SetDrainingRequest{NodeId: s, BootId: s}); err != nil {
				return nil, err
			}
			_, err := h.Nodes.SetDraining(ctx, &dpv1.SetDrainingRequest{NodeId: nodeID, BootId: s})
			return nil, err
		}},
		{name: "DeregisterNode.node_id,boot_id", call: func(ctx context.Context, s string) (func() error, error) {
			if _, err := h.Nodes.DeregisterNode(ctx, &dpv1.DeregisterNodeRequest{NodeId: s, BootId: s}); err != nil {
				return nil, err
			}
			_, err := h.Nodes.DeregisterNode(ctx, &dpv1.DeregisterNodeRequest{NodeId: nodeID, BootId: s})
			return nil, err
		}},
		{name: "RegisterTunnels.tunnel_id", writes: []string{"tunnels"}, call: func(ctx context.Context, s string) (func() error, error) {
			return tunnel(s, "v")
		}},
		{name: "RegisterTunnels.agent_version", writes: []string{"tunnels"}, call: func(ctx context.Context, s string) (func() error, error) {
			return tunnel(unique("tunnel"), s)
		}},
		{name: "UnregisterTunnels.tunnel_id", call: func(ctx context.Context, s string) (func() error, error) {
			_, err := h.Nodes.UnregisterTunnels(ctx, &dpv1.UnregisterTunnelsRequest{NodeId: nodeID, BootId: bootID,
				Tunnels: []*dpv1.Tunnel{{TunnelId: s, Seq: seq.Add(1)}}})
			return nil, err
		}, writes: []string{"tunnels"}}, // a tombstone, so that a late open cannot resurrect the tunnel
		{name: "AuthenticateAgent.token", also: []connect.Code{connect.CodeUnauthenticated}, call: func(ctx context.Context, s string) (func() error, error) {
			_, err := h.Auth.AuthenticateAgent(ctx, &dpv1.AuthenticateAgentRequest{Token: s})
			if err == nil {
				return nil, fmt.Errorf("token %q authenticated", s)
			}
			return nil, err
		}},
		{name: "AuthorizeProxy.access_token", call: func(ctx context.Context, s string) (func() error, error) {
			return decision(&dpv1.AuthorizeProxyRequest{AgentId: agentID, Credential: &dpv1.AuthorizeProxyRequest_AccessToken{AccessToken: s}},
				dpv1.AuthorizeProxyResponse_DECISION_UNAUTHENTICATED)
		}},
		{name: "AuthorizeProxy.ci_job_token", call: func(ctx context.Context, s string) (func() error, error) {
			return decision(&dpv1.AuthorizeProxyRequest{AgentId: agentID, Credential: &dpv1.AuthorizeProxyRequest_CiJobToken{CiJobToken: s}},
				dpv1.AuthorizeProxyResponse_DECISION_UNAUTHENTICATED)
		}},
		{name: "AuthorizeProxy.session_cookie", call: func(ctx context.Context, s string) (func() error, error) {
			return decision(&dpv1.AuthorizeProxyRequest{AgentId: agentID, Credential: &dpv1.AuthorizeProxyRequest_SessionCookie{SessionCookie: s}},
				dpv1.AuthorizeProxyResponse_DECISION_UNAUTHENTICATED)
		}},
		{name: "AuthorizeProxy.csrf_token", call: func(ctx context.Context, s string) (func() error, error) {
			return decision(&dpv1.AuthorizeProxyRequest{AgentId: agentID, Credential: &dpv1.AuthorizeProxyRequest_SessionCookie{SessionCookie: cookie},
				CsrfToken: s, UnsafeMethod: true}, dpv1.AuthorizeProxyResponse_DECISION_FORBIDDEN)
		}},
	}

	stored := map[string]int{}
	for _, p := range probes {
		t.Run(p.name, func(t *testing.T) {
			for _, s := range hostileStrings {
				before := h.counts(t)
				verify, err := p.call(ctx, s)
				what := fmt.Sprintf("%s = %q", p.name, s)
				if err != nil {
					code := connect.CodeOf(err)
					if !slices.Contains(allowedFailures, code) && !slices.Contains(p.also, code) {
						t.Errorf("%s: %v (code %v), want a clean refusal", what, err, code)
					}
					if strings.Contains(err.Error(), "internal error") {
						t.Errorf("%s: %v", what, err)
					}
					h.unchanged(t, before, what)
					continue
				}
				h.unchanged(t, before, what, p.writes...)
				if verify != nil {
					if err := verify(); err != nil {
						t.Errorf("%s: %v", what, err)
					}
				}
				stored[p.name]++
			}
		})
	}
	// Refusals alone would pass the loop: most fields must have taken the
	// strings as they are.
	for _, p := range probes {
		if len(p.writes) > 0 && !p.strict && stored[p.name] == 0 {
			t.Errorf("%s stored none of the hostile strings", p.name)
		}
	}
	t.Logf("stored verbatim, per probe: %v", stored)
	if n := h.counts(t)["agents"]; n < 1 {
		t.Fatalf("agents has %d rows", n)
	}
}

const badUTF8 = "bad\xffutf8\xc3("

// badField is a request with one string field, at path, set to badUTF8.
type badField struct {
	path  string
	proto []byte
	json  string
}

// badFields lists every string field reachable in md (through nested
// messages, repeated fields, map keys and values, oneofs), each as a proto
// and a JSON request body holding badUTF8 there and nothing else.
func badFields(md protoreflect.MessageDescriptor, depth int) []badField {
	var out []badField
	str := func(s string) string { return `"` + s + `"` }
	for i := range md.Fields().Len() {
		fd := md.Fields().Get(i)
		num, name := fd.Number(), fd.JSONName()
		field := func(path string, value []byte, jsonValue string) badField {
			b := protowire.AppendTag(nil, num, protowire.BytesType)
			b = protowire.AppendBytes(b, value)
			if fd.IsList() {
				jsonValue = "[" + jsonValue + "]"
			}
			return badField{path: path, proto: b, json: "{" + str(name) + ":" + jsonValue + "}"}
		}
		switch {
		case fd.IsMap():
			k, v := fd.MapKey(), fd.MapValue()
			entry := func(key, value []byte, vtype protowire.Type) []byte {
				b := protowire.AppendTag(nil, 1, protowire.BytesType)
				b = protowire.AppendBytes(b, key)
				b = protowire.AppendTag(b, 2, vtype)
				return protowire.AppendBytes(b, value)
			}
			if k.Kind() == protoreflect.StringKind {
				out = append(out, field(string(fd.Name())+"[key]", entry([]byte(badUTF8), nil, protowire.BytesType),
					"{"+str(badUTF8)+":"+map[bool]string{true: `""`, false: `{}`}[v.Kind() == protoreflect.StringKind]+"}"))
			}
			switch v.Kind() {
			case protoreflect.StringKind:
				out = append(out, field(string(fd.Name())+"[value]", entry([]byte("k"), []byte(badUTF8), protowire.BytesType), `{"k":`+str(badUTF8)+"}"))
			case protoreflect.MessageKind:
				for _, sub := range badFields(v.Message(), depth+1) {
					out = append(out, field(string(fd.Name())+"[value]."+sub.path, entry([]byte("k"), sub.proto, protowire.BytesType), `{"k":`+sub.json+"}"))
				}
			}
		case fd.Kind() == protoreflect.StringKind:
			out = append(out, field(string(fd.Name()), []byte(badUTF8), str(badUTF8)))
		case fd.Kind() == protoreflect.MessageKind && depth < 4 && !strings.HasPrefix(string(fd.Message().FullName()), "google.protobuf."):
			for _, sub := range badFields(fd.Message(), depth+1) {
				out = append(out, field(string(fd.Name())+"."+sub.path, sub.proto, sub.json))
			}
		}
	}
	return out
}

// TestHostileInvalidUTF8 sends, to every procedure, raw Connect requests
// (proto and JSON) with invalid UTF-8 in each string field in turn: each
// is refused with InvalidArgument and writes nothing. The same fields with
// NUL bytes and SQL get a clean answer, never Internal.
func TestHostileInvalidUTF8(t *testing.T) {
	h := startHostile(t)
	fields := 0
	for _, p := range procedures() {
		bad := badFields(p.input, 0)
		if len(bad) == 0 {
			continue
		}
		t.Run(strings.TrimPrefix(p.path, "/kas."), func(t *testing.T) {
			before := h.counts(t)
			for _, f := range bad {
				fields++
				refused := h.counts(t)
				for _, body := range []struct{ contentType, body string }{
					{"application/proto", string(f.proto)},
					{"application/json", f.json},
				} {
					status, code, resp := h.post(t, p.path, body.contentType, h.tokenFor(p), strings.NewReader(body.body))
					if status != http.StatusBadRequest || code != "invalid_argument" {
						t.Errorf("%s (%s): %d %s, want 400 invalid_argument", f.path, body.contentType, status, resp)
					}
				}
				h.unchanged(t, refused, f.path+" with invalid UTF-8")
				// Valid UTF-8, hostile content, in JSON: whatever the
				// answer, it is not an internal error.
				for _, s := range []string{`a\u0000b`, `'; DROP TABLE agents; --`, `%_\\`} {
					json := strings.ReplaceAll(f.json, badUTF8, s)
					status, code, resp := h.post(t, p.path, "application/json", h.tokenFor(p), strings.NewReader(json))
					if status >= 500 || code == "internal" || code == "unknown" || bytes.Contains(resp, []byte("internal error")) {
						t.Errorf("%s = %s: %d %s", f.path, s, status, resp)
					}
				}
			}
			// Hostile content may be stored by a call that takes it; row
			// counts only rise where such a call wrote.
			after := h.counts(t)
			for table, n := range before {
				if after[table] < n {
					t.Errorf("table %s lost rows: %d → %d", table, n, after[table])
				}
			}
		})
	}
	if fields < 40 {
		t.Fatalf("only %d string fields found in the control plane's requests", fields)
	}
	t.Logf("%d string fields of %d procedures", fields, len(procedures()))
}

// endless is a request body that never ends; it counts what was read.
type endless struct {
	prefix []byte
	n      atomic.Int64
}

func (e *endless) Read(p []byte) (int, error) {
	i := copy(p, e.prefix)
	e.prefix = e.prefix[i:]
	for j := i; j < len(p); j++ {
		p[j] = 'a'
	}
	e.n.Add(int64(len(p)))
	return len(p), nil
}

// TestHostileOversizedBodies: bodies over the 1 MiB read limit, compressed
// bombs, endless bodies and lying length prefixes are refused quickly
// without the server holding them in memory.
func TestHostileOversizedBodies(t *testing.T) {
	h := startHostile(t)
	ctx := context.Background()
	a, err := h.Agents.CreateAgent(ctx, &mgmtv1.CreateAgentRequest{ProjectId: 1, Name: "big"})
	if err != nil {
		t.Fatal(err)
	}
	const path = "/kas.management.v1.AgentService/PutAgentConfig"
	prefix := fmt.Sprintf(`{"agentId":"%d","yaml":"gitops: `, a.Agent.Id)
	huge := strings.Repeat("a", 2<<20)
	pb, err := proto.Marshal(&mgmtv1.PutAgentConfigRequest{AgentId: a.Agent.Id, Yaml: "gitops: " + huge})
	if err != nil {
		t.Fatal(err)
	}
	var bomb bytes.Buffer // 64 MiB of JSON in about 64 KiB
	zw := gzip.NewWriter(&bomb)
	zw.Write([]byte(prefix))
	chunk := []byte(strings.Repeat("a", 1<<20))
	for range 64 {
		zw.Write(chunk)
	}
	zw.Write([]byte(`"}`))
	zw.Close()
	grpcWeb := []byte{0, 0xff, 0xff, 0xff, 0xf0} // a 4 GiB message, says the prefix

	before := h.counts(t)
	for _, tc := range []struct {
		name, contentType string
		body              func() io.Reader
		header            []string
		check             func(status int, code string, resp []byte) error
	}{
		{name: "JSON over 1 MiB", contentType: "application/json",
			body: func() io.Reader { return strings.NewReader(prefix + huge + `"}`) }},
		{name: "proto over 1 MiB", contentType: "application/proto",
			body: func() io.Reader { return bytes.NewReader(pb) }},
		{name: "gzip bomb", contentType: "application/json", header: []string{"Content-Encoding", "gzip"},
			body: func() io.Reader { return bytes.NewReader(bomb.Bytes()) }},
		{name: "gRPC-Web length prefix of 4 GiB", contentType: "application/grpc-web+proto",
			body: func() io.Reader { return bytes.NewReader(grpcWeb) },
			check: func(status int, code string, resp []byte) error {
				return nil // checked on the header below
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ms0, ms1 runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&ms0)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.URL+path, tc.body())
			req.Header.Set("Content-Type", tc.contentType)
			req.Header.Set("Authorization", "Bearer "+h.mgmtToken)
			for i := 0; i+1 < len(tc.header); i += 2 {
				req.Header.Set(tc.header[i], tc.header[i+1])
			}
			resp, err := h.HTTPClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			runtime.ReadMemStats(&ms1)
			if strings.HasPrefix(tc.contentType, "application/grpc-web") {
				if gs := resp.Header.Get("Grpc-Status"); gs != "8" && gs != "3" {
					t.Errorf("grpc-status %q (%s), want 8 (resource exhausted)", gs, resp.Header.Get("Grpc-Message"))
				}
			} else {
				var ce struct{ Code string }
				json.Unmarshal(b, &ce)
				if ce.Code != "resource_exhausted" && ce.Code != "invalid_argument" {
					t.Errorf("%d %s, want resource_exhausted", resp.StatusCode, b)
				}
				// Connect inflates the rest of an oversized message to
				// report its size: 64 MiB of CPU work, before the token
				// is checked. The server must stop at the limit.
				if bytes.Contains(b, []byte("message size 67108")) {
					t.Errorf("the server inflated the whole gzip bomb: %s", b)
				}
			}
			// The body was not buffered whole: allocation stays near the limit.
			alloc := ms1.TotalAlloc - ms0.TotalAlloc
			if alloc > 48<<20 {
				t.Errorf("the request cost %d MiB of allocations", alloc>>20)
			}
			t.Logf("%d %s, %.1f MiB allocated", resp.StatusCode, bytes.TrimSpace(b), float64(alloc)/(1<<20))
		})
	}

	// Compressed requests of a sane size still work.
	t.Run("gzip, small", func(t *testing.T) {
		var small bytes.Buffer
		zw := gzip.NewWriter(&small)
		fmt.Fprintf(zw, `{"agentId":"%d","yaml":"gitops: {note: %s}"}`, a.Agent.Id, strings.Repeat("z", 100<<10))
		zw.Close()
		status, code, resp := h.post(t, path, "application/json", h.mgmtToken, &small, "Content-Encoding", "gzip", "Accept-Encoding", "gzip")
		if status != http.StatusOK {
			t.Errorf("%d %s %s, want 200", status, code, resp)
		}
	})

	// Connect used to read an oversized body to its end (to report its
	// size), before authentication: anyone could keep a handler reading.
	for name, token := range map[string]string{"endless body": h.mgmtToken, "endless body, no token": ""} {
		t.Run(name, func(t *testing.T) {
			body := &endless{prefix: []byte(prefix)}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.URL+path, body)
			req.Header.Set("Content-Type", "application/json")
			if token != "" {
				req.Header.Set("Authorization", "Bearer "+token)
			}
			resp, err := h.HTTPClient.Do(req)
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				var ce struct{ Code string }
				json.Unmarshal(b, &ce)
				if ce.Code != "resource_exhausted" && ce.Code != "unauthenticated" {
					t.Errorf("%d %s, want resource_exhausted", resp.StatusCode, b)
				}
			} else if ctx.Err() != nil {
				t.Fatalf("the server kept reading an endless body: %v after %d MiB", err, body.n.Load()>>20)
			}
			// Either way the server stopped reading: the client could not
			// push more than a few MiB into it.
			if n := body.n.Load(); n > 64<<20 {
				t.Errorf("the server read %d MiB of an endless body", n>>20)
			}
		})
	}
	h.unchanged(t, before, "oversized bodies", "agent_configs") // the sane gzip request put one
}

// TestHostileBearerTokens: every procedure of every service refuses calls
// without a token, with a token of the other API, signed with the wrong
// key, expired, or expiring too far ahead; and writes nothing for them.
// A valid token may be replayed until it expires: bearer tokens are meant
// to be, and MaxLifetime bounds how long.
func TestHostileBearerTokens(t *testing.T) {
	h := startHostile(t)
	now := time.Now()
	sign := func(key []byte, method jwt.SigningMethod, iss, aud string, iat, exp time.Time) string {
		t.Helper()
		c := jwt.RegisteredClaims{Issuer: iss, Subject: "x", Audience: jwt.ClaimStrings{aud},
			IssuedAt: jwt.NewNumericDate(iat), ExpiresAt: jwt.NewNumericDate(exp)}
		var k any = key
		if method == jwt.SigningMethodNone {
			k = jwt.UnsafeAllowNoneSignatureType
		}
		tok, err := jwt.NewWithClaims(method, c).SignedString(k)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	type family struct {
		key      []byte
		iss, aud string
	}
	rails := family{h.APIKey, authn.IssuerRails, authn.AudienceManagement}
	node := family{h.PrivateKey, authn.IssuerDataplane, authn.AudienceDataplane}
	refused := func(f, other family) map[string]string {
		return map[string]string{
			"no token":             "",
			"not a JWT":            "hello",
			"alg none":             sign(f.key, jwt.SigningMethodNone, f.iss, f.aud, now, now.Add(time.Minute)),
			"HS512":                sign(f.key, jwt.SigningMethodHS512, f.iss, f.aud, now, now.Add(time.Minute)),
			"wrong key":            sign(cptest.Key(t), jwt.SigningMethodHS256, f.iss, f.aud, now, now.Add(time.Minute)),
			"expired":              sign(f.key, jwt.SigningMethodHS256, f.iss, f.aud, now.Add(-time.Hour), now.Add(-time.Minute)),
			"expiring in a day":    sign(f.key, jwt.SigningMethodHS256, f.iss, f.aud, now, now.Add(24*time.Hour)),
			"beyond MaxLifetime":   sign(f.key, jwt.SigningMethodHS256, f.iss, f.aud, now, now.Add(authn.MaxLifetime+time.Minute)),
			"issued in the future": sign(f.key, jwt.SigningMethodHS256, f.iss, f.aud, now.Add(time.Hour), now.Add(authn.MaxLifetime)),
			"the other API's":      sign(other.key, jwt.SigningMethodHS256, other.iss, other.aud, now, now.Add(time.Minute)),
			"other API's key":      sign(other.key, jwt.SigningMethodHS256, f.iss, f.aud, now, now.Add(time.Minute)),
			"other API's audience": sign(f.key, jwt.SigningMethodHS256, f.iss, other.aud, now, now.Add(time.Minute)),
			"private API audience": sign(f.key, jwt.SigningMethodHS256, f.iss, authn.AudiencePrivateAPI, now, now.Add(time.Minute)),
		}
	}
	before := h.counts(t)
	procs := procedures()
	for _, p := range procs {
		f, other := rails, node
		if !p.rails {
			f, other = node, rails
		}
		for name, tok := range refused(f, other) {
			for _, ct := range []string{"application/json", "application/proto"} {
				body := "{}"
				if ct == "application/proto" {
					body = ""
				}
				status, code, resp := h.post(t, p.path, ct, tok, strings.NewReader(body))
				if status != http.StatusUnauthorized || code != "unauthenticated" {
					t.Errorf("%s with %s (%s): %d %s, want 401 unauthenticated", p.path, name, ct, status, resp)
				}
			}
		}
		// A header that is not a bearer token.
		status, code, _ := h.post(t, p.path, "application/json", "", strings.NewReader("{}"), "Authorization", "Basic cmFpbHM6cmFpbHM=")
		if status != http.StatusUnauthorized || code != "unauthenticated" {
			t.Errorf("%s with basic auth: %d %s", p.path, status, code)
		}
	}
	h.unchanged(t, before, "refused tokens")
	if len(procs) < 25 {
		t.Fatalf("only %d procedures found", len(procs))
	}

	// Replay: a token is a bearer credential; within its (short) life it
	// may be used any number of times, up to MaxLifetime ahead.
	for name, exp := range map[string]time.Duration{"a minute": time.Minute, "just under MaxLifetime": authn.MaxLifetime - time.Second} {
		tok := sign(h.APIKey, jwt.SigningMethodHS256, authn.IssuerRails, authn.AudienceManagement, now, now.Add(exp))
		for i := range 3 {
			status, _, resp := h.post(t, "/kas.management.v1.AgentService/ListAgents", "application/json", tok, strings.NewReader("{}"))
			if status != http.StatusOK {
				t.Errorf("token valid for %s, use %d: %d %s", name, i+1, status, resp)
			}
		}
	}
}

// TestHostileCrossAgentCredentials: a credential made for agent A never
// identifies or authorises agent B, and forging one from the pieces of two
// real ones fails.
func TestHostileCrossAgentCredentials(t *testing.T) {
	h := startHostile(t)
	ctx := context.Background()
	agent := func(name string) (int64, string) {
		a, err := h.Agents.CreateAgent(ctx, &mgmtv1.CreateAgentRequest{ProjectId: 1, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		tok, err := h.Agents.CreateAgentToken(ctx, &mgmtv1.CreateAgentTokenRequest{AgentId: a.Agent.Id, Name: "t"})
		if err != nil {
			t.Fatal(err)
		}
		return a.Agent.Id, tok.Secret
	}
	idA, tokA := agent("agent-a")
	idB, tokB := agent("agent-b")
	parts := func(prefix, tok string) (int64, string) {
		id, random, ok := secret.Parse(prefix, tok)
		if !ok {
			t.Fatalf("%q is not a %s secret", tok, prefix)
		}
		return id, random
	}
	swap := func(prefix, a, b string) string { // b's ID with a's random part
		_, ra := parts(prefix, a)
		idb, _ := parts(prefix, b)
		return fmt.Sprintf("%s_%d_%s", prefix, idb, ra)
	}
	before := h.counts(t)

	// Agent tokens: each names its own agent, and only that one.
	for tok, want := range map[string]int64{tokA: idA, tokB: idB} {
		resp, err := h.Auth.AuthenticateAgent(ctx, &dpv1.AuthenticateAgentRequest{Token: tok})
		if err != nil || resp.AgentId != want {
			t.Errorf("AuthenticateAgent(token of agent %d) = %v, %v", want, resp, err)
		}
	}
	for name, tok := range map[string]string{
		"B's token ID with A's secret": swap(secret.AgentToken, tokA, tokB),
		"A's token ID with B's secret": swap(secret.AgentToken, tokB, tokA),
		"A's token, other prefix":      strings.Replace(tokA, secret.AgentToken, secret.AccessToken, 1),
		"A's token with B's ID glued":  tokA + "_" + strconv.FormatInt(idB, 10),
	} {
		resp, err := h.Auth.AuthenticateAgent(ctx, &dpv1.AuthenticateAgentRequest{Token: tok})
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("AuthenticateAgent(%s) = %v, %v; want Unauthenticated", name, resp, err)
		}
	}

	h.unchanged(t, before, "forged agent tokens")

	// Proxy credentials granted for A.
	expires := timestamppb.New(time.Now().Add(time.Hour))
	pat, err := h.Credentials.CreateAccessToken(ctx, &mgmtv1.CreateAccessTokenRequest{User: &mgmtv1.UserIdentity{Id: 1, Username: "alice"},
		AgentIds: []int64{idA}, ExpiresAt: expires})
	if err != nil {
		t.Fatal(err)
	}
	pat2, err := h.Credentials.CreateAccessToken(ctx, &mgmtv1.CreateAccessTokenRequest{User: &mgmtv1.UserIdentity{Id: 2, Username: "bob"},
		AgentIds: []int64{idB}, ExpiresAt: expires})
	if err != nil {
		t.Fatal(err)
	}
	ci, err := h.Credentials.CreateCIJobToken(ctx, &mgmtv1.CreateCIJobTokenRequest{Job: &mgmtv1.CIJob{JobId: 9, ProjectId: 99, ProjectPath: "g/p"},
		AgentIds: []int64{idA}, ExpiresAt: expires})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := h.Credentials.CreateSession(ctx, &mgmtv1.CreateSessionRequest{User: &mgmtv1.UserIdentity{Id: 1, Username: "alice"},
		AgentIds: []int64{idA}, ExpiresAt: expires})
	if err != nil {
		t.Fatal(err)
	}
	other, err := h.Credentials.CreateSession(ctx, &mgmtv1.CreateSessionRequest{User: &mgmtv1.UserIdentity{Id: 2, Username: "bob"},
		AgentIds: []int64{idA}, ExpiresAt: expires})
	if err != nil {
		t.Fatal(err)
	}
	seal := func(key []byte, sid string) string {
		c, err := kascookie.Encrypt(key, sid)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	cookie := seal(h.APIKey, sess.SessionId)
	before = h.counts(t)
	patCred := func(s string) *dpv1.AuthorizeProxyRequest {
		return &dpv1.AuthorizeProxyRequest{Credential: &dpv1.AuthorizeProxyRequest_AccessToken{AccessToken: s}}
	}
	ciCred := func(s string) *dpv1.AuthorizeProxyRequest {
		return &dpv1.AuthorizeProxyRequest{Credential: &dpv1.AuthorizeProxyRequest_CiJobToken{CiJobToken: s}}
	}
	cookieCred := func(c, csrf string, unsafe bool) *dpv1.AuthorizeProxyRequest {
		return &dpv1.AuthorizeProxyRequest{Credential: &dpv1.AuthorizeProxyRequest_SessionCookie{SessionCookie: c}, CsrfToken: csrf, UnsafeMethod: unsafe}
	}
	const (
		allowed         = dpv1.AuthorizeProxyResponse_DECISION_ALLOWED
		forbidden       = dpv1.AuthorizeProxyResponse_DECISION_FORBIDDEN
		unauthenticated = dpv1.AuthorizeProxyResponse_DECISION_UNAUTHENTICATED
	)
	for _, tc := range []struct {
		name  string
		req   *dpv1.AuthorizeProxyRequest
		agent int64
		want  dpv1.AuthorizeProxyResponse_Decision
	}{
		{"access token for A, at A", patCred(pat.Secret), idA, allowed},
		{"access token for A, at B", patCred(pat.Secret), idB, forbidden},
		{"B's access token ID with A's secret, at B", patCred(swap(secret.AccessToken, pat.Secret, pat2.Secret)), idB, unauthenticated},
		{"A's agent token as an access token", patCred(tokA), idA, unauthenticated},
		{"CI job token for A, at A", ciCred(ci.Secret), idA, allowed},
		{"CI job token for A, at B", ciCred(ci.Secret), idB, forbidden},
		{"access token as a CI job token", ciCred(pat.Secret), idA, unauthenticated},
		{"session for A, at A", cookieCred(cookie, "", false), idA, allowed},
		{"session for A, at B", cookieCred(cookie, "", false), idB, forbidden},
		{"session for A, unsafe, its CSRF token", cookieCred(cookie, sess.CsrfToken, true), idA, allowed},
		{"session for A, unsafe, another session's CSRF token", cookieCred(cookie, other.CsrfToken, true), idA, forbidden},
		{"session for A, unsafe, no CSRF token", cookieCred(cookie, "", true), idA, forbidden},
		{"session ID sent raw as the cookie", cookieCred(sess.SessionId, "", false), idA, unauthenticated},
		{"session sealed with another key", cookieCred(seal(cptest.Key(t), sess.SessionId), "", false), idA, unauthenticated},
		{"agent token sealed as a session", cookieCred(seal(h.APIKey, tokA), "", false), idA, unauthenticated},
	} {
		req := proto.Clone(tc.req).(*dpv1.AuthorizeProxyRequest)
		req.AgentId = tc.agent
		resp, err := h.Auth.AuthorizeProxy(ctx, req)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if resp.Decision != tc.want {
			t.Errorf("%s: %v (%s), want %v", tc.name, resp.Decision, resp.Reason, tc.want)
		}
		if tc.want != allowed && (resp.AccessAs != nil || resp.Impersonation != nil) {
			t.Errorf("%s: a refusal carries an identity: %v", tc.name, resp)
		}
	}
	h.unchanged(t, before, "cross-agent credentials")

	// Revoking A's agent token leaves B's alone.
	list, err := h.Agents.ListAgentTokens(ctx, &mgmtv1.ListAgentTokensRequest{AgentId: idA})
	if err != nil || len(list.Tokens) != 1 {
		t.Fatalf("tokens of A: %v, %v", list, err)
	}
	if _, err := h.Agents.RevokeAgentToken(ctx, &mgmtv1.RevokeAgentTokenRequest{TokenId: list.Tokens[0].Id}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Auth.AuthenticateAgent(ctx, &dpv1.AuthenticateAgentRequest{Token: tokA}); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("revoked token of A: %v, want Unauthenticated", err)
	}
	if resp, err := h.Auth.AuthenticateAgent(ctx, &dpv1.AuthenticateAgentRequest{Token: tokB}); err != nil || resp.AgentId != idB {
		t.Errorf("token of B after A's was revoked: %v, %v", resp, err)
	}
}

// lockedBuffer is a log destination shared by goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// jwtRE matches any JWT (JWS compact serialization with a JSON header).
var jwtRE = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]{16,}`)

// TestHostileLogsHoldNoSecrets runs a control plane logging JSON at debug
// level, a dataplane node with the proxy and two agents, and goes through
// every credential's life: tokens minted, agents authenticated, proxy
// requests with access tokens, CI job tokens and cookies, wrong secrets of
// each kind, a revoked agent token. No secret, nor any JWT or key, appears
// in any log line.
func TestHostileLogsHoldNoSecrets(t *testing.T) {
	var cpLogs lockedBuffer
	logger, err := obs.NewLogger(&cpLogs, "debug", "json", false)
	if err != nil {
		t.Fatal(err)
	}
	env := framework.StartControlPlane(t, func(o *controlplane.Options) { o.Logger = logger })
	node := framework.StartProxyNode(t, env, "node-a", func(o *dataplane.Options) {
		o.Authenticator.AllowTTL = 100 * time.Millisecond
		o.Authenticator.RecheckInterval = 200 * time.Millisecond
	})
	ctx := framework.Context(t)
	var secrets []string // everything that must never be logged
	keep := func(s ...string) { secrets = append(secrets, s...) }

	creds := framework.CreateAgent(t, env, "logged")
	keep(creds.Token)
	if _, err := env.Agents.PutAgentConfig(ctx, &mgmtv1.PutAgentConfigRequest{AgentId: creds.ID,
		Yaml: "ci_access:\n  projects: [{id: g/p}]\nuser_access:\n  access_as: {user: {}}\n  projects: [{id: g/p}]\n"}); err != nil {
		t.Fatal(err)
	}
	ag := framework.StartAgent(t, creds, node.AgentURL, 1)
	framework.WaitRouted(t, env, creds.ID, node.ID)
	expires := timestamppb.New(time.Now().Add(time.Hour))
	pat, err := env.Credentials.CreateAccessToken(ctx, &mgmtv1.CreateAccessTokenRequest{User: &mgmtv1.UserIdentity{Id: 1, Username: "alice"},
		AgentIds: []int64{creds.ID}, ExpiresAt: expires})
	if err != nil {
		t.Fatal(err)
	}
	ci, err := env.Credentials.CreateCIJobToken(ctx, &mgmtv1.CreateCIJobTokenRequest{Job: &mgmtv1.CIJob{JobId: 5, ProjectId: 6, ProjectPath: "g/p"},
		ExpiresAt: expires})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := env.Credentials.CreateSession(ctx, &mgmtv1.CreateSessionRequest{User: &mgmtv1.UserIdentity{Id: 1, Username: "alice"},
		ProjectPaths: []string{"g/p"}, ExpiresAt: expires})
	if err != nil {
		t.Fatal(err)
	}
	cookie, err := kascookie.Encrypt(env.APIKey, sess.SessionId)
	if err != nil {
		t.Fatal(err)
	}
	keep(pat.Secret, ci.Secret, sess.SessionId, sess.CsrfToken, cookie)
	wrong := func(tok string) string { // the same secret with its last characters changed
		w := tok[:len(tok)-4] + "AAAA"
		if w == tok {
			w = tok[:len(tok)-4] + "BBBB"
		}
		keep(w)
		return w
	}
	agentID := strconv.FormatInt(creds.ID, 10)
	send := func(method, auth, cookie, csrf string) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, node.ProxyURL+"api/v1/namespaces/default/pods", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		if cookie != "" {
			req.AddCookie(&http.Cookie{Name: kascookie.Name, Value: cookie})
			req.Header.Set("Gitlab-Agent-Id", agentID)
		}
		if csrf != "" {
			req.Header.Set("X-Csrf-Token", csrf)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		name                       string
		method, auth, cookie, csrf string
		want                       int
	}{
		{"access token", "GET", "Bearer pat:" + agentID + ":" + pat.Secret, "", "", 200},
		{"CI job token", "GET", "Bearer ci:" + agentID + ":" + ci.Secret, "", "", 200},
		{"cookie", "GET", "", cookie, "", 200},
		{"cookie with CSRF token", "POST", "", cookie, sess.CsrfToken, 200},
		{"wrong access token", "GET", "Bearer pat:" + agentID + ":" + wrong(pat.Secret), "", "", 401},
		{"wrong CI job token", "GET", "Bearer ci:" + agentID + ":" + wrong(ci.Secret), "", "", 401},
		{"wrong cookie", "GET", "", wrong(cookie), "", 401},
		{"wrong CSRF token", "POST", "", cookie, wrong(sess.CsrfToken), 403},
		{"agent token as a bearer token", "GET", "Bearer " + creds.Token, "", "", 401},
		{"a JWT as a bearer token", "GET", "Bearer pat:" + agentID + ":" + wrong(jwtOf(t, env.APIKey)), "", "", 401},
	} {
		if got := send(tc.method, tc.auth, tc.cookie, tc.csrf); got != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, got, tc.want)
		}
	}

	// Agents: one with a wrong token, then the good one's token revoked.
	bad := framework.CreateAgent(t, env, "refused")
	bad.Token = wrong(bad.Token)
	badAgent := framework.StartAgentNoWait(t, bad, node.AgentURL, 1)
	framework.Eventually(t, "the refused agent to log its refusal", func() bool { return len(badAgent.Logs.Lines()) > 0 })
	if _, err := env.Auth.AuthenticateAgent(ctx, &dpv1.AuthenticateAgentRequest{Token: wrong(creds.Token)}); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("wrong agent token: %v", err)
	}
	framework.Revoke(t, env, creds)
	framework.Eventually(t, "the revoked agent's tunnel to close", func() bool { return len(framework.ResolveNodes(t, env, creds.ID)) == 0 })

	// Internal errors are logged with their cause: make the credential
	// tables vanish for a moment, so that the lookups of real secrets fail.
	pool := env.Server.Store().Pool()
	tables := []string{"agent_tokens", "access_tokens", "ci_job_tokens", "sessions"}
	for _, table := range tables {
		if _, err := pool.Exec(ctx, "ALTER TABLE "+table+" RENAME TO hidden_"+table); err != nil {
			t.Fatal(err)
		}
	}
	_, err = env.Auth.AuthenticateAgent(ctx, &dpv1.AuthenticateAgentRequest{Token: creds.Token})
	failures := []error{err}
	for _, c := range []*dpv1.AuthorizeProxyRequest{
		{Credential: &dpv1.AuthorizeProxyRequest_AccessToken{AccessToken: pat.Secret}},
		{Credential: &dpv1.AuthorizeProxyRequest_CiJobToken{CiJobToken: ci.Secret}},
		{Credential: &dpv1.AuthorizeProxyRequest_SessionCookie{SessionCookie: cookie}, CsrfToken: sess.CsrfToken, UnsafeMethod: true},
	} {
		c.AgentId = creds.ID
		_, err := env.Auth.AuthorizeProxy(ctx, c)
		failures = append(failures, err)
	}
	_, err = env.Credentials.CreateSession(ctx, &mgmtv1.CreateSessionRequest{User: &mgmtv1.UserIdentity{Id: 1, Username: "alice"}, ExpiresAt: expires})
	failures = append(failures, err)
	for _, table := range tables {
		if _, err := pool.Exec(ctx, "ALTER TABLE hidden_"+table+" RENAME TO "+table); err != nil {
			t.Fatal(err)
		}
	}
	for i, err := range failures {
		if connect.CodeOf(err) != connect.CodeInternal || err.Error() != "internal: internal error" {
			t.Errorf("call %d without its table: %v, want only internal error", i, err)
		}
	}
	if n := strings.Count(cpLogs.String(), `"msg":"request failed"`); n != len(failures) {
		t.Errorf("the control plane logged %d failed requests, want %d", n, len(failures))
	}

	// The needles: each secret, its random part, the keys in every
	// encoding, any JWT.
	needles := map[string]string{}
	for _, s := range secrets {
		needles[s] = s
		if i := strings.LastIndexByte(s, '_'); i > 0 && len(s)-i > 20 {
			needles[s[i+1:]] = "random part of " + s
		}
	}
	for name, key := range map[string][]byte{"api_secret_key": env.APIKey, "private_api_secret_key": env.PrivateKey} {
		for _, enc := range []string{base64.StdEncoding.EncodeToString(key), base64.RawStdEncoding.EncodeToString(key),
			base64.RawURLEncoding.EncodeToString(key), hex.EncodeToString(key)} {
			needles[enc] = name
		}
	}
	logs := map[string][]string{
		"control plane": strings.Split(strings.TrimSpace(cpLogs.String()), "\n"),
		"node":          node.Logs.Lines(),
		"agent":         ag.Logs.Lines(),
		"refused agent": badAgent.Logs.Lines(),
	}
	total := 0
	for part, lines := range logs {
		if len(lines) < 2 {
			t.Errorf("%s logged %d lines: the scan would prove nothing", part, len(lines))
		}
		total += len(lines)
		for _, line := range lines {
			for needle, what := range needles {
				if strings.Contains(line, needle) {
					t.Errorf("%s logged %s: %s", part, what, line)
				}
			}
			if m := jwtRE.FindString(line); m != "" {
				t.Errorf("%s logged a JWT: %s", part, line)
			}
		}
	}
	if !strings.Contains(cpLogs.String(), `"msg":"node registered"`) {
		t.Errorf("the control plane's JSON log lacks the node's registration:\n%s", cpLogs.String())
	}
	t.Logf("%d log lines scanned for %d needles", total, len(needles))
}

// jwtOf returns a valid management JWT signed with key.
func jwtOf(t *testing.T, key []byte) string {
	t.Helper()
	tok, err := authn.NewSigner(key, authn.IssuerRails, authn.AudienceManagement, "rails").Token()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
