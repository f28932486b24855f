// Package tests holds end-to-end scenarios that run kas's real roles on a
// real PostgreSQL with real clients: Ruby (the grpc gem and plain
// Net::HTTP), grpcurl, and the kas binary itself.
package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kas-project/kas/cmd/kas/app"
	dataplanev1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/config"
	"github.com/kas-project/kas/internal/pgtest"
)

// requireTool returns the path of an external client the tests drive. When
// it is missing the test is skipped, unless KAS_REQUIRE_CLIENTS=1 (make
// test and CI set it), which turns the skip into a failure.
func requireTool(t *testing.T, name, probe string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if p, _ := filepath.Abs(filepath.Join("..", ".bin", name)); p != "" {
			if _, serr := os.Stat(p); serr == nil {
				path, err = p, nil
			}
		}
	}
	if err == nil && probe != "" {
		if out, perr := exec.Command(path, "-e", probe).CombinedOutput(); perr != nil {
			err = fmt.Errorf("%s -e '%s': %v: %s", name, probe, perr, bytes.TrimSpace(out))
		}
	}
	if err != nil {
		msg := name + " is not available (" + err.Error() + "); scripts/tools.sh installs it"
		if os.Getenv("KAS_REQUIRE_CLIENTS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return path
}

// controlplaneProcess is a control plane started in-process with the same
// app.Server the kas binary runs.
type controlplaneProcess struct {
	Server *app.Server
	// URL reaches the API: http://host:port, or http://kas for a unix socket.
	URL    string
	Socket string // the unix socket path, if any
	HTTP   *http.Client
}

// writeKeyFile writes a fresh key file (base64 of 32 random bytes).
func writeKeyFile(t *testing.T, dir, name string) (path string, key []byte) {
	t.Helper()
	key = make([]byte, 32)
	rand.Read(key)
	path = filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, key
}

// startControlplane runs `kas controlplane` in-process on dsn with the
// given API listener and the observability listener on a free port.
func startControlplane(t *testing.T, dsn, apiKeyFile, privateKeyFile string, api config.Listen) *controlplaneProcess {
	t.Helper()
	cfg := config.Default()
	cfg.Database.URL = dsn
	cfg.APISecretKeyFile, cfg.PrivateAPISecretKeyFile = apiKeyFile, privateKeyFile
	cfg.Controlplane.Listen = api
	cfg.Observability.Listen = config.Listen{Network: "tcp", Address: "127.0.0.1:0"}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := app.New(ctx, app.Options{
		Role:   config.RoleControlplane,
		Config: cfg,
		Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		cancel()
		t.Fatalf("start control plane: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control plane Run: %v", err)
		}
		s.Close()
	})
	p := &controlplaneProcess{Server: s}
	h2c := new(http.Protocols)
	h2c.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: h2c}
	if api.Network == "unix" {
		p.URL, p.Socket = "http://kas", api.Address
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", api.Address)
		}
	} else {
		p.URL = "http://" + s.Addr("controlplane.listen").String()
	}
	p.HTTP = &http.Client{Transport: tr, Timeout: 30 * time.Second}

	resp, err := http.Get("http://" + s.Addr("observability.listen").String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz = %d", resp.StatusCode)
	}
	return p
}

// rubyReport is what both Ruby clients print.
type rubyReport struct {
	Agent struct {
		ID        int64  `json:"id"`
		ProjectID int64  `json:"project_id"`
		Name      string `json:"name"`
	} `json:"agent"`
	Token struct {
		ID      int64  `json:"id"`
		AgentID int64  `json:"agent_id"`
		Secret  string `json:"secret"`
	} `json:"token"`
	FetchedName string `json:"fetched_name"`
	Connected   []struct {
		AgentID int64 `json:"agent_id"`
		Nodes   []struct {
			NodeID  string `json:"node_id"`
			Tunnels int32  `json:"tunnels"`
		} `json:"nodes"`
	} `json:"connected"`
	Invalid  *rubyStatus `json:"invalid"`
	WrongKey *rubyStatus `json:"wrong_key"`
}

// rubyStatus is an error: code is a gRPC number or a Connect code name.
type rubyStatus struct {
	Code    any    `json:"code"`
	Message string `json:"message"`
}

func runRuby(t *testing.T, ruby, script string, env ...string) rubyReport {
	t.Helper()
	cmd := exec.Command(ruby, filepath.Join("ruby", script))
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ruby %s: %v\nstderr:\n%s\nstdout:\n%s", script, err, stderr.String(), out)
	}
	var r rubyReport
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("ruby %s printed something other than the JSON report: %v\n%s", script, err, out)
	}
	return r
}

// TestRailsClients drives the control plane as a Rails app would: the grpc
// gem with stubs generated from our protos, plain Net::HTTP with Connect's
// JSON protocol, and grpcurl through server reflection. Two control-plane
// replicas share one database (one on a unix socket, one on TCP), as
// stateless replicas do in production.
func TestRailsClients(t *testing.T) {
	dsn := pgtest.DSN(t)
	keys := t.TempDir()
	apiKeyFile, apiKey := writeKeyFile(t, keys, "api_secret_key")
	privateKeyFile, privateKey := writeKeyFile(t, keys, "private_api_secret_key")
	sockDir, err := os.MkdirTemp("", "kas-clients-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	unixCP := startControlplane(t, dsn, apiKeyFile, privateKeyFile, config.Listen{Network: "unix", Address: filepath.Join(sockDir, "api.sock")})
	tcpCP := startControlplane(t, dsn, apiKeyFile, privateKeyFile, config.Listen{Network: "tcp", Address: "127.0.0.1:0"})

	ctx := context.Background()
	mgmtOpt := connect.WithInterceptors(authn.ClientInterceptor(authn.NewSigner(apiKey, authn.IssuerRails, authn.AudienceManagement, "test")))
	dpOpt := connect.WithInterceptors(authn.ClientInterceptor(authn.NewSigner(privateKey, authn.IssuerDataplane, authn.AudienceDataplane, "node-1")))
	agents := managementv1connect.NewAgentServiceClient(tcpCP.HTTP, tcpCP.URL, mgmtOpt)
	nodes := dataplanev1connect.NewNodeServiceClient(tcpCP.HTTP, tcpCP.URL, dpOpt)
	auth := dataplanev1connect.NewAuthServiceClient(tcpCP.HTTP, tcpCP.URL, dpOpt)

	// An agent with one tunnel on node-1, for the clients to find connected.
	const projectID = 4242
	connected, err := agents.CreateAgent(ctx, &managementv1.CreateAgentRequest{ProjectId: projectID, Name: "connected"})
	if err != nil {
		t.Fatalf("CreateAgent: %v", err)
	}
	connectedID := connected.Agent.Id
	if _, err := nodes.RegisterNode(ctx, &dataplanev1.RegisterNodeRequest{NodeId: "node-1", BootId: "boot-1", PrivateUrl: "grpc://10.0.0.1:8155", Version: "test"}); err != nil {
		t.Fatalf("RegisterNode: %v", err)
	}
	if _, err := nodes.RegisterTunnels(ctx, &dataplanev1.RegisterTunnelsRequest{NodeId: "node-1", BootId: "boot-1", Tunnels: []*dataplanev1.Tunnel{
		{TunnelId: "tunnel-1", AgentId: connectedID, Seq: 1, AgentVersion: "v1", ConnectedAt: timestamppb.Now()},
	}}); err != nil {
		t.Fatalf("RegisterTunnels: %v", err)
	}

	// check asserts what a Ruby client reported.
	check := func(t *testing.T, r rubyReport, name string, invalidCode, unauthCode any) {
		t.Helper()
		if r.Agent.ID == 0 || r.Agent.Name != name || r.Agent.ProjectID != projectID || r.FetchedName != name {
			t.Errorf("agent = %+v, fetched name %q; want %q in project %d", r.Agent, r.FetchedName, name, projectID)
		}
		// The agent is visible through the other replica.
		got, err := agents.GetAgent(ctx, &managementv1.GetAgentRequest{AgentId: r.Agent.ID})
		if err != nil || got.Agent.Name != name {
			t.Errorf("GetAgent(%d) through the TCP replica = %v, %v", r.Agent.ID, got, err)
		}
		// The token works: the dataplane's AuthenticateAgent accepts it.
		if r.Token.AgentID != r.Agent.ID || r.Token.Secret == "" {
			t.Errorf("token = %+v", r.Token)
		}
		a, err := auth.AuthenticateAgent(ctx, &dataplanev1.AuthenticateAgentRequest{Token: r.Token.Secret})
		if err != nil || a.AgentId != r.Agent.ID || a.TokenId != r.Token.ID {
			t.Errorf("AuthenticateAgent(token from Ruby) = %v, %v; want agent %d token %d", a, err, r.Agent.ID, r.Token.ID)
		}
		// Only the agent with a tunnel is connected.
		if len(r.Connected) != 1 || r.Connected[0].AgentID != connectedID || len(r.Connected[0].Nodes) != 1 ||
			r.Connected[0].Nodes[0].NodeID != "node-1" || r.Connected[0].Nodes[0].Tunnels != 1 {
			t.Errorf("connected = %+v, want agent %d on node-1 with 1 tunnel", r.Connected, connectedID)
		}
		if r.Invalid == nil || !reflect.DeepEqual(r.Invalid.Code, invalidCode) || !strings.Contains(r.Invalid.Message, "name") {
			t.Errorf("bad agent name: status %+v, want code %v naming the field", r.Invalid, invalidCode)
		}
		if r.WrongKey == nil || !reflect.DeepEqual(r.WrongKey.Code, unauthCode) {
			t.Errorf("token signed with another key: status %+v, want code %v", r.WrongKey, unauthCode)
		}
	}
	env := []string{
		"KAS_API_SECRET_KEY_FILE=" + apiKeyFile,
		"KAS_PROJECT_ID=" + strconv.Itoa(projectID),
		"KAS_CONNECTED_AGENT_ID=" + strconv.FormatInt(connectedID, 10),
	}

	t.Run("ruby grpc gem over a unix socket", func(t *testing.T) {
		ruby := requireTool(t, "ruby", `require "grpc"`)
		r := runRuby(t, ruby, "grpc_client.rb", append(env, "KAS_TARGET=unix:"+unixCP.Socket)...)
		check(t, r, "rails-grpc", float64(3), float64(16)) // INVALID_ARGUMENT, UNAUTHENTICATED
	})

	t.Run("ruby Net::HTTP with Connect JSON", func(t *testing.T) {
		ruby := requireTool(t, "ruby", `require "net/http"`)
		r := runRuby(t, ruby, "connect_client.rb", append(env, "KAS_URL="+tcpCP.URL)...)
		check(t, r, "rails-connect", "invalid_argument", "unauthenticated")
	})

	t.Run("grpcurl through reflection", func(t *testing.T) {
		grpcurl := requireTool(t, "grpcurl", "")
		addr := strings.TrimPrefix(tcpCP.URL, "http://")
		run := func(args ...string) (string, error) {
			out, err := exec.Command(grpcurl, append([]string{"-plaintext"}, args...)...).CombinedOutput()
			return string(out), err
		}
		out, err := run(addr, "list")
		if err != nil {
			t.Fatalf("grpcurl list: %v\n%s", err, out)
		}
		for _, svc := range []string{"kas.management.v1.AgentService", "kas.management.v1.CredentialService",
			"kas.management.v1.RoutingService", "kas.dataplane.v1.NodeService", "kas.dataplane.v1.AuthService"} {
			if !strings.Contains(out, svc+"\n") {
				t.Errorf("grpcurl list lacks %s:\n%s", svc, out)
			}
		}
		tok, err := authn.NewSigner(apiKey, authn.IssuerRails, authn.AudienceManagement, "grpcurl").Token()
		if err != nil {
			t.Fatal(err)
		}
		req := `{"agent_id": ` + strconv.FormatInt(connectedID, 10) + `}`
		out, err = run("-H", "authorization: Bearer "+tok, "-d", req, addr, "kas.management.v1.AgentService/GetAgent")
		if err != nil {
			t.Fatalf("grpcurl GetAgent: %v\n%s", err, out)
		}
		var resp struct {
			Agent struct{ ID, Name, ProjectID string }
		}
		if err := json.Unmarshal([]byte(strings.ReplaceAll(out, `"projectId"`, `"ProjectID"`)), &resp); err != nil {
			t.Fatalf("grpcurl output is not JSON: %v\n%s", err, out)
		}
		if resp.Agent.ID != strconv.FormatInt(connectedID, 10) || resp.Agent.Name != "connected" || resp.Agent.ProjectID != strconv.Itoa(projectID) {
			t.Errorf("grpcurl GetAgent = %s", out)
		}
		// Without a token: Unauthenticated.
		out, err = run("-d", req, addr, "kas.management.v1.AgentService/GetAgent")
		if err == nil || !strings.Contains(out, "Unauthenticated") {
			t.Errorf("grpcurl GetAgent without a token: err %v, output %s", err, out)
		}
		// Health, as a load balancer checks it.
		out, err = run(addr, "grpc.health.v1.Health/Check")
		if err != nil || !strings.Contains(out, `"SERVING"`) {
			t.Errorf("grpcurl health check: %v\n%s", err, out)
		}
	})
}

// TestReadmeRubySnippet runs the Rails snippet of README.md as it is.
func TestReadmeRubySnippet(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "```ruby\n")
	snippet, _, ok2 := strings.Cut(rest, "```\n")
	if !ok || !ok2 {
		t.Fatal("README.md has no ```ruby block")
	}
	ruby := requireTool(t, "ruby", `require "net/http"`)
	keys := t.TempDir()
	apiKeyFile, _ := writeKeyFile(t, keys, "api_secret_key")
	privateKeyFile, _ := writeKeyFile(t, keys, "private_api_secret_key")
	cp := startControlplane(t, pgtest.DSN(t), apiKeyFile, privateKeyFile, config.Listen{Network: "tcp", Address: "127.0.0.1:0"})

	cmd := exec.Command(ruby, "-")
	cmd.Stdin = strings.NewReader(snippet)
	cmd.Env = append(os.Environ(), "KAS_URL="+cp.URL, "KAS_API_SECRET_KEY_FILE="+apiKeyFile)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("README snippet: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`^agent 1 \(cluster-\d+\): give agentk the token \S+\nconnected: \[\]\n$`).Match(out) {
		t.Errorf("README snippet printed:\n%s", out)
	}
}
