package app

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/internal/config"
	"github.com/kas-project/kas/internal/cptest"
)

func TestDataplaneCLI(t *testing.T) {
	code, _, stderr := cli(t, nil, "dataplane", "now")
	if code != ExitUsage || !strings.HasPrefix(stderr, `kas: dataplane: unexpected argument "now"`) {
		t.Errorf("kas dataplane now: exit %d, %q", code, stderr)
	}
	// The dataplane needs private_api_secret_key and a private URL it can
	// derive: every problem is reported at once.
	code, _, stderr = cli(t, map[string]string{"OWN_PRIVATE_API_SCHEME": "h2"}, "dataplane", "--verify-config")
	if code != ExitError || !strings.Contains(stderr, "private_api_secret_key_file: required") || !strings.Contains(stderr, "OWN_PRIVATE_API_SCHEME") {
		t.Errorf("kas dataplane --verify-config: exit %d, %q", code, stderr)
	}
}

// The dataplane role against a real control plane: it registers, turns ready,
// exports its metrics, and on shutdown drains and deregisters.
func TestDataplaneRole(t *testing.T) {
	cp := cptest.Start(t)
	keyPath := filepath.Join(t.TempDir(), "private")
	if err := os.WriteFile(keyPath, []byte(base64.StdEncoding.EncodeToString(cp.PrivateKey)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.PrivateAPISecretKeyFile = keyPath
	cfg.Dataplane.ControlplaneURL = cp.URL
	cfg.Dataplane.Agent.Listen.Address = "127.0.0.1:0"
	cfg.Dataplane.PrivateAPI.Listen.Address = "127.0.0.1:0"
	cfg.Dataplane.KubernetesAPI.Listen.Address = "127.0.0.1:0"
	cfg.Dataplane.KubernetesAPI.AllowedOrigins = "https://GitLab.example.com/"
	cfg.Observability.Listen.Address = "127.0.0.1:0"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := New(ctx, Options{Role: config.RoleDataplane, Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	obsURL := "http://" + s.Addr("observability.listen").String()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(obsURL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// Ready once registered: poll /readyz, as a kubelet does.
	guard := time.NewTimer(30 * time.Second)
	defer guard.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for code, _ := get("/readyz"); code != http.StatusOK; code, _ = get("/readyz") {
		select {
		case <-tick.C:
		case <-guard.C:
			t.Fatal("kas dataplane never turned ready")
		}
	}
	host, _ := os.Hostname()
	nodes, err := cp.Routing.ListNodes(ctx, &managementv1.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.GetNodes()) != 1 || nodes.GetNodes()[0].GetNodeId() != host || nodes.GetNodes()[0].GetState() != "live" ||
		!strings.HasPrefix(nodes.GetNodes()[0].GetPrivateUrl(), "grpc://127.0.0.1:") {
		t.Errorf("control plane nodes: %v; want one live node %q with a grpc://127.0.0.1 URL", nodes.GetNodes(), host)
	}
	if _, metrics := get("/metrics"); !strings.Contains(metrics, "kas_dataplane_registered 1") || !strings.Contains(metrics, "kas_dataplane_tunnels 0") {
		t.Error("/metrics lacks the dataplane's metrics")
	}

	// dataplane.kubernetes_api.allowed_origins reaches the proxy,
	// normalised as browsers write Origin.
	for origin, want := range map[string]int{"https://gitlab.example.com": http.StatusNoContent, "https://evil.example": http.StatusForbidden} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodOptions, "http://"+s.Addr("dataplane.kubernetes_api.listen").String()+"/k8s-proxy/api", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "GET")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("preflight from %s answered %d, want %d", origin, resp.StatusCode, want)
		}
	}

	cancel() // SIGTERM
	if err := <-done; err != nil {
		t.Errorf("Run after a drain: %v", err)
	}
	nodes, err = cp.Routing.ListNodes(context.Background(), &managementv1.ListNodesRequest{})
	if err != nil || len(nodes.GetNodes()) != 0 {
		t.Errorf("after the drain the control plane lists %v (%v); want the node deregistered", nodes.GetNodes(), err)
	}
}
