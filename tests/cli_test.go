package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/pglocal"
)

// buildKAS builds cmd/kas into a temporary directory.
func buildKAS(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kas")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/kas-project/kas/cmd/kas").CombinedOutput()
	if err != nil {
		t.Fatalf("go build cmd/kas: %v\n%s", err, out)
	}
	return bin
}

// TestCLI runs the kas binary as operators do.
func TestCLI(t *testing.T) {
	kas := buildKAS(t)
	t.Run("verify-config reports every problem", func(t *testing.T) { testVerifyConfig(t, kas) })
	t.Run("usage errors", func(t *testing.T) { testUsageErrors(t, kas) })
	t.Run("embedded control plane", func(t *testing.T) { testEmbeddedControlplane(t, kas) })
}

// runKAS runs the binary to completion and returns its exit code and output.
func runKAS(t *testing.T, kas string, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(kas, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), o.String(), e.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, o.String(), e.String()
}

func testVerifyConfig(t *testing.T, kas string) {
	dir := t.TempDir()
	shortKey := filepath.Join(dir, "api_secret_key")
	if err := os.WriteFile(shortKey, []byte(base64.StdEncoding.EncodeToString([]byte("twelve bytes"))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "kas.yaml")
	if err := os.WriteFile(bad, []byte(`
api_secret_key_file: `+shortKey+`
controlplane:
  listen:
    network: udp
dataplane:
  own_private_api:
    url: grpc://10.0.0.1:8155
`), 0o600); err != nil {
		t.Fatal(err)
	}
	// The CIDR comes from the environment, as KAS deployments set it.
	code, stdout, stderr := runKAS(t, kas, []string{"OWN_PRIVATE_API_CIDR=10.0.0.0/8"}, "--verify-config", "--config", bad)
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	for _, want := range []string{
		"api_secret_key_file: decoded value is 12 bytes, must be exactly 32",
		"OWN_PRIVATE_API_URL and OWN_PRIVATE_API_CIDR (dataplane.own_private_api.url, .cidr): set one of them, not both",
		`controlplane.listen.network: "udp" is not one of tcp, tcp4, tcp6, unix`,
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if stdout != "" || strings.Contains(stderr, "twelve") {
		t.Errorf("unexpected output (or a key revealed): stdout %q stderr %q", stdout, stderr)
	}

	// The embedded default is valid for the control plane as is.
	if code, _, stderr := runKAS(t, kas, nil, "controlplane", "--verify-config", "--data-dir", filepath.Join(dir, "pg")); code != 0 {
		t.Errorf("controlplane --verify-config on the defaults: exit %d\n%s", code, stderr)
	}
	// --print-config shows file paths, never keys.
	code, stdout, _ = runKAS(t, kas, []string{"KAS_DATABASE_URL=postgres://kas:hunter2@db/kas", "KAS_API_SECRET_KEY_FILE=" + shortKey}, "--print-config")
	if !strings.Contains(stdout, `api_secret_key_file: "`+shortKey+`"`) || strings.Contains(stdout, "hunter2") ||
		strings.Contains(stdout, base64.StdEncoding.EncodeToString([]byte("twelve bytes"))) || code != 1 {
		t.Errorf("--print-config: exit %d\n%s", code, stdout)
	}
}

func testUsageErrors(t *testing.T, kas string) {
	for _, args := range [][]string{{"frobnicate"}, {"controlplane", "--bogus"}, {"controlplane", "gcc"}, {}} {
		code, stdout, stderr := runKAS(t, kas, nil, args...)
		first, _, _ := strings.Cut(stderr, "\n")
		if code != 2 || !strings.HasPrefix(first, "kas: ") || !strings.Contains(stderr, "Usage: kas") || stdout != "" {
			t.Errorf("kas %q: exit %d, stderr:\n%s", args, code, stderr)
		}
	}
	code, stdout, _ := runKAS(t, kas, nil, "version")
	if code != 0 || !strings.HasPrefix(stdout, "kas ") {
		t.Errorf("kas version: exit %d, %q", code, stdout)
	}
}

// kasProcess is a running `kas controlplane`.
type kasProcess struct {
	cmd    *exec.Cmd
	lines  chan map[string]any // JSON log records from stderr
	mu     sync.Mutex
	stderr bytes.Buffer
	exited chan struct{}
	code   int
}

func startKAS(t *testing.T, kas string, env []string, args ...string) *kasProcess {
	t.Helper()
	cmd := exec.Command(kas, args...)
	cmd.Env = append(os.Environ(), env...)
	pipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &kasProcess{cmd: cmd, lines: make(chan map[string]any, 100), exited: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.Write(sc.Bytes())
			p.stderr.WriteByte('\n')
			p.mu.Unlock()
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil {
				select {
				case p.lines <- rec:
				default:
				}
			}
		}
		io.Copy(io.Discard, pipe)
		cmd.Wait()
		p.code = cmd.ProcessState.ExitCode()
		close(p.lines)
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

func (p *kasProcess) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// addresses waits for the "listening" records and returns address by listener.
func (p *kasProcess) addresses(t *testing.T) map[string]string {
	t.Helper()
	addrs := map[string]string{}
	timeout := time.After(2 * time.Minute)
	for len(addrs) < 2 {
		select {
		case rec, ok := <-p.lines:
			if !ok {
				t.Fatalf("kas exited before listening:\n%s", p.output())
			}
			if rec["msg"] == "listening" {
				addrs[rec["listener"].(string)] = rec["address"].(string)
			}
		case <-timeout:
			t.Fatalf("kas did not listen within 2 minutes:\n%s", p.output())
		}
	}
	return addrs
}

// stop sends SIGINT and checks a clean exit.
func (p *kasProcess) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGINT)
	<-p.exited
	if p.code != 0 || !strings.Contains(p.output(), `"msg":"stopped"`) {
		t.Errorf("kas after SIGINT: exit %d\n%s", p.code, p.output())
	}
}

func (p *kasProcess) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.exited:
		return p.code
	case <-time.After(2 * time.Minute):
		t.Fatalf("kas did not exit:\n%s", p.output())
		return 0
	}
}

// testEmbeddedControlplane is the quick start: `kas controlplane` with no
// configuration runs its own PostgreSQL, generates its keys, and keeps both
// across restarts; a second kas on the same data directory is refused.
func testEmbeddedControlplane(t *testing.T, kas string) {
	if _, err := pglocal.BinDir(); err != nil {
		if os.Getenv("KAS_REQUIRE_CLIENTS") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	// The postgres user must be able to reach the data directory when we
	// run as root: a short, world-traversable directory in /tmp.
	base, err := os.MkdirTemp("", "kas-cli-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(base, 0o755)
	t.Cleanup(func() { os.RemoveAll(base) })
	dataDir := filepath.Join(base, "kas", "postgres")
	env := []string{
		"KAS_CONTROLPLANE_LISTEN_ADDRESS=127.0.0.1:0",
		"KAS_OBSERVABILITY_LISTEN_ADDRESS=127.0.0.1:0",
		"KAS_OBSERVABILITY_LOG_FORMAT=json",
	}

	first := startKAS(t, kas, env, "controlplane", "--data-dir", dataDir)
	addrs := first.addresses(t)
	resp, err := http.Get("http://" + addrs["observability.listen"] + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz = %d", resp.StatusCode)
	}
	keyFile := filepath.Join(base, "kas", "secrets", "api_secret_key")
	keyText, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatalf("generated key: %v", err)
	}
	if fi, _ := os.Stat(keyFile); fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	if strings.Contains(first.output(), strings.TrimSpace(string(keyText))) || !strings.Contains(first.output(), keyFile) {
		t.Errorf("the log must name the key file, never the key:\n%s", first.output())
	}
	agents := func(addr string) managementv1connect.AgentServiceClient {
		key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(keyText)))
		if err != nil {
			t.Fatal(err)
		}
		return managementv1connect.NewAgentServiceClient(http.DefaultClient, "http://"+addr,
			connect.WithInterceptors(authn.ClientInterceptor(authn.NewSigner(key, authn.IssuerRails, authn.AudienceManagement, "cli-test"))))
	}
	ctx := context.Background()
	created, err := agents(addrs["controlplane.listen"]).CreateAgent(ctx, &managementv1.CreateAgentRequest{ProjectId: 1, Name: "survivor"})
	if err != nil {
		t.Fatalf("CreateAgent: %v", err)
	}
	first.stop(t)

	// Restart on the same data directory: same keys, same data.
	second := startKAS(t, kas, env, "controlplane", "--data-dir", dataDir)
	addrs = second.addresses(t)
	got, err := agents(addrs["controlplane.listen"]).GetAgent(ctx, &managementv1.GetAgentRequest{AgentId: created.Agent.Id})
	if err != nil || got.Agent.Name != "survivor" {
		t.Fatalf("after a restart, GetAgent = %v, %v", got, err)
	}
	if again, _ := os.ReadFile(keyFile); !bytes.Equal(again, keyText) {
		t.Error("the key file changed across restarts")
	}

	// A concurrent kas on the same data directory fails clearly.
	third := startKAS(t, kas, env, "controlplane", "--data-dir", dataDir)
	if code := third.wait(t); code != 1 || !strings.Contains(third.output(), "is in use by another running server") {
		t.Errorf("second kas on the same data directory: exit %d\n%s", code, third.output())
	}
	second.stop(t)
}
