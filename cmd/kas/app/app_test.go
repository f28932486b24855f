package app

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"

	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/config"
	"github.com/kas-project/kas/internal/pgtest"
	"github.com/kas-project/kas/migrations"
)

// cli runs the command line in-process with env as the whole environment.
func cli(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	c := CLI{Stdout: &o, Stderr: &e, LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }}
	code = c.Run(context.Background(), args)
	return code, o.String(), e.String()
}

func keyFile(t *testing.T, dir, name string) (string, []byte) {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString(key)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p, key
}

func TestCLIUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "kas: no command given\n"},
		{[]string{"serve"}, `kas: unknown command "serve"` + "\n"},
		{[]string{"--frob"}, "kas: kas: flag provided but not defined: -frob\n"},
		{[]string{"controlplane", "--frob"}, "kas: controlplane: flag provided but not defined: -frob\n"},
		{[]string{"controlplane", "collect"}, `kas: controlplane: unknown subcommand "collect"` + "\n"},
		{[]string{"controlplane", "gc", "now"}, `kas: controlplane gc: unexpected argument "now"` + "\n"},
		{[]string{"migrate", "up"}, `kas: migrate: unexpected argument "up"` + "\n"},
		{[]string{"version", "x"}, `kas: version: unexpected argument "x"` + "\n"},
	} {
		code, stdout, stderr := cli(t, nil, tc.args...)
		if code != ExitUsage || !strings.HasPrefix(stderr, tc.want+"\nUsage: kas") || stdout != "" {
			t.Errorf("kas %q: exit %d, stderr %q, want %q then the usage", tc.args, code, stderr, tc.want)
		}
	}
	if code, stdout, _ := cli(t, nil, "--help"); code != ExitOK || !strings.HasPrefix(stdout, "Usage: kas") {
		t.Errorf("--help: exit %d, %q", code, stdout)
	}
	if code, stdout, _ := cli(t, nil, "version"); code != ExitOK || !strings.HasPrefix(stdout, "kas dev go") {
		t.Errorf("version: exit %d, %q", code, stdout)
	}
}

func TestCLIVerifyAndPrintConfig(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte(base64.StdEncoding.EncodeToString([]byte("12 bytes !!!"))), 0o600)
	env := map[string]string{
		"KAS_API_SECRET_KEY_FILE":         short,
		"KAS_CONTROLPLANE_LISTEN_NETWORK": "udp",
		"KAS_OBSERVABILITY_LOG_LEVEL":     "chatty",
	}
	code, _, stderr := cli(t, env, "controlplane", "--verify-config")
	want := "kas: invalid configuration (3 problems):\n" +
		"  api_secret_key_file: decoded value is 12 bytes, must be exactly 32\n" +
		"  controlplane.listen.network: \"udp\" is not one of tcp, tcp4, tcp6, unix\n" +
		"  observability.log_level: \"chatty\" is not one of debug, info, warn, error\n"
	if code != ExitError || stderr != want {
		t.Errorf("verify: exit %d, stderr:\n%s\nwant:\n%s", code, stderr, want)
	}
	// Serving reports the same problems (the log level included) and starts nothing.
	if code, _, stderr := cli(t, env, "controlplane"); code != ExitError || stderr != want {
		t.Errorf("serve with a bad configuration: exit %d, stderr:\n%s", code, stderr)
	}
	// Unknown settings in the file are problems too.
	file := filepath.Join(dir, "kas.yaml")
	os.WriteFile(file, []byte("controlplane:\n  lissen: {}\n"), 0o600)
	code, _, stderr = cli(t, env, "--config", file, "--verify-config")
	if code != ExitError || !strings.Contains(stderr, "kas: invalid configuration (4 problems):\n  controlplane.lissen: unknown setting (line 2)\n  api_secret_key_file: ") {
		t.Errorf("unknown setting, reported with the other problems: exit %d, stderr %q", code, stderr)
	}
	code, stdout, stderr := cli(t, map[string]string{"KAS_DATABASE_URL": "postgres://u:pw@db/kas"}, "--data-dir", "/srv/pg", "migrate", "--print-config")
	if code != ExitOK || !strings.Contains(stdout, `url: "postgres://u:xxxxx@db/kas" # KAS_DATABASE_URL`) ||
		!strings.Contains(stdout, `data_dir: "/srv/pg"`) {
		t.Errorf("print: exit %d\n%s\n%s", code, stdout, stderr)
	}
}

// startServer runs a control plane on a fresh database: API on a unix
// socket, observability on a free port.
func startServer(t *testing.T) (s *Server, api *http.Client, apiKey []byte, stop func() error) {
	t.Helper()
	dir := t.TempDir()
	sock, err := os.MkdirTemp("", "kas-app-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	cfg := config.Default()
	cfg.Database.URL = pgtest.DSN(t)
	cfg.APISecretKeyFile, apiKey = keyFile(t, dir, "api")
	cfg.PrivateAPISecretKeyFile, _ = keyFile(t, dir, "private")
	cfg.Controlplane.Listen = config.Listen{Network: "unix", Address: filepath.Join(sock, "api.sock")}
	cfg.Observability.Listen.Address = "127.0.0.1:0"
	s, err = New(context.Background(), Options{Role: config.RoleControlplane, Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stop = func() error {
		cancel()
		err := <-done
		s.Close()
		return err
	}
	t.Cleanup(func() { cancel() })
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	api = &http.Client{Transport: &http.Transport{Protocols: p, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", cfg.Controlplane.Listen.Address)
	}}}
	return s, api, apiKey, stop
}

func TestServerServesAndStops(t *testing.T) {
	s, api, apiKey, stop := startServer(t)
	obsURL := "http://" + s.Addr("observability.listen").String()
	get := func(url string) (int, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(obsURL + "/readyz"); code != 200 {
		t.Fatalf("/readyz = %d %s", code, body)
	}

	agents := managementv1connect.NewAgentServiceClient(api, "http://kas", connect.WithGRPC(),
		connect.WithInterceptors(authn.ClientInterceptor(authn.NewSigner(apiKey, authn.IssuerRails, authn.AudienceManagement, "test"))))
	resp, err := agents.CreateAgent(context.Background(), &managementv1.CreateAgentRequest{ProjectId: 1, Name: "a1"})
	if err != nil || resp.Agent.Name != "a1" {
		t.Fatalf("CreateAgent over gRPC on a unix socket: %v, %v", resp, err)
	}

	// The request ID comes back, and the request is counted.
	hreq, _ := http.NewRequest("POST", "http://kas/kas.management.v1.AgentService/GetAgent", strings.NewReader("{}"))
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("X-Request-Id", "abc-123")
	hresp, err := api.Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	hresp.Body.Close()
	if hresp.StatusCode != 401 || hresp.Header.Get("X-Request-Id") != "abc-123" {
		t.Errorf("unauthenticated call: %d, X-Request-Id %q", hresp.StatusCode, hresp.Header.Get("X-Request-Id"))
	}
	_, metrics := get(obsURL + "/metrics")
	if !strings.Contains(metrics, `kas_http_requests_total{code="401",method="post",server="controlplane"} 1`) {
		t.Errorf("metrics lack the 401:\n%s", metrics)
	}

	if err := stop(); err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
	if _, err := http.Get(obsURL + "/livez"); err == nil {
		t.Error("observability still serving after stop")
	}
}

func TestNewReportsProblems(t *testing.T) {
	cfg := config.Default()
	cfg.Database.URL = "postgres://db/kas"
	cfg.Controlplane.LeaseTTL = 1
	_, err := New(context.Background(), Options{Role: config.RoleControlplane, Config: cfg})
	var ce *ConfigError
	if !errors.As(err, &ce) || len(ce.Problems()) != 3 {
		t.Fatalf("New = %v, want 3 configuration problems", err)
	}

	// A busy port is named by its setting, and nothing is left running.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dir := t.TempDir()
	cfg = config.Default()
	cfg.Database.URL = pgtest.DSN(t)
	cfg.APISecretKeyFile, _ = keyFile(t, dir, "api")
	cfg.PrivateAPISecretKeyFile, _ = keyFile(t, dir, "private")
	cfg.Controlplane.Listen.Address = "127.0.0.1:0"
	cfg.Observability.Listen.Address = l.Addr().String()
	_, err = New(context.Background(), Options{Role: config.RoleControlplane, Config: cfg})
	if err == nil || !strings.HasPrefix(err.Error(), "observability.listen.address: ") {
		t.Fatalf("New on a busy port = %v", err)
	}

	if _, err := New(context.Background(), Options{Role: config.RoleDataplane, Config: config.Default()}); err == nil {
		t.Error("the dataplane role is not implemented yet; New should say so")
	}
}

func TestMigrateAndGC(t *testing.T) {
	all, err := migrations.All()
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"KAS_DATABASE_URL": pgtest.EmptyDB(t)}
	code, stdout, stderr := cli(t, env, "migrate", "--status")
	if code != 0 || !strings.HasPrefix(stdout, fmt.Sprintf("%d migrations, 0 applied, %d pending\n", len(all), len(all))) ||
		strings.Count(stdout, "pending: ") != len(all) {
		t.Errorf("status on an empty database: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr = cli(t, env, "migrate")
	if code != 0 || !strings.HasPrefix(stdout, "applied ") {
		t.Errorf("migrate: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, _ = cli(t, env, "migrate")
	if code != 0 || !strings.HasPrefix(stdout, "database is up to date") {
		t.Errorf("migrate again: exit %d\n%s", code, stdout)
	}
	code, stdout, _ = cli(t, env, "migrate", "--status")
	if code != 0 || strings.Contains(stdout, "pending:") || !strings.Contains(stdout, "0 pending") {
		t.Errorf("status after migrate: exit %d\n%s", code, stdout)
	}

	dir := t.TempDir()
	env["KAS_API_SECRET_KEY_FILE"], _ = keyFile(t, dir, "api")
	env["KAS_PRIVATE_API_SECRET_KEY_FILE"], _ = keyFile(t, dir, "private")
	code, stdout, stderr = cli(t, env, "controlplane", "gc")
	if code != 0 || stdout != "deleted 0 expired nodes and 0 tunnels\n" {
		t.Errorf("gc: exit %d\n%s%s", code, stdout, stderr)
	}
	// With a database URL the key files are required.
	delete(env, "KAS_API_SECRET_KEY_FILE")
	if code, _, stderr := cli(t, env, "controlplane", "gc"); code != 1 || !strings.Contains(stderr, "api_secret_key_file: required") {
		t.Errorf("gc without keys: exit %d\n%s", code, stderr)
	}
}

func TestEmbeddedDataDirReachability(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root hands the data directory to the postgres user")
	}
	if _, err := user.Lookup("postgres"); err != nil {
		t.Skip("no postgres user")
	}
	private, err := os.MkdirTemp("", "kas-private-") // mode 0700, owned by root
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(private) })
	dir := filepath.Join(private, "kas", "postgres")
	got, moved, err := embeddedDataDir(dir, true)
	if err != nil || !moved || got != fallbackDataDir {
		t.Errorf("default dir inside %s: %q, moved %v, %v", private, got, moved, err)
	}
	_, _, err = embeddedDataDir(dir, false)
	if err == nil || !strings.Contains(err.Error(), "database.data_dir: the postgres user") || !strings.Contains(err.Error(), "chmod o+x "+private) {
		t.Errorf("configured dir inside %s: %v", private, err)
	}
	os.Chmod(private, 0o711)
	if got, moved, err := embeddedDataDir(dir, true); err != nil || moved || got != dir {
		t.Errorf("traversable: %q, %v, %v", got, moved, err)
	}
}
