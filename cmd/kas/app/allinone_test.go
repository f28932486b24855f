package app

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/config"
	"github.com/kas-project/kas/internal/pgtest"
)

// allConfig is kas all on a fresh database with every TCP listener on a
// free loopback port, except the private API, left on every interface.
func allConfig(t *testing.T) (*config.Config, []byte) {
	t.Helper()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.Database.URL = pgtest.DSN(t)
	var apiKey []byte
	cfg.APISecretKeyFile, apiKey = keyFile(t, dir, "api")
	cfg.PrivateAPISecretKeyFile, _ = keyFile(t, dir, "private")
	cfg.Controlplane.Listen.Address = "127.0.0.1:0"
	cfg.Dataplane.Agent.Listen.Address = "127.0.0.1:0"
	cfg.Dataplane.KubernetesAPI.Listen.Address = "127.0.0.1:0"
	cfg.Dataplane.PrivateAPI.Listen.Address = ":0"
	cfg.Dataplane.NodeID = "all-in-one"
	cfg.Observability.Listen.Address = "127.0.0.1:0"
	return cfg, apiKey
}

// runAll starts the all-in-one role and waits until it reports that it
// serves; stop ends it and returns Run's error.
func runAll(t *testing.T, cfg *config.Config) (s *Server, stop func() error) {
	t.Helper()
	started := make(chan struct{})
	s, err := New(t.Context(), Options{Role: config.RoleAll, Config: cfg, Started: func() { close(started) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var runErr error
	go func() { runErr = s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; s.Close() })
	select {
	case <-started:
	case <-done:
		t.Fatalf("kas all stopped before it served: %v", runErr)
	case <-time.After(30 * time.Second):
		t.Fatal("kas all did not register its node within 30s")
	}
	return s, func() error { cancel(); <-done; return runErr }
}

func routing(t *testing.T, hc *http.Client, base string, apiKey []byte) managementv1connect.RoutingServiceClient {
	return managementv1connect.NewRoutingServiceClient(hc, base,
		connect.WithInterceptors(authn.ClientInterceptor(authn.NewSigner(apiKey, authn.IssuerRails, authn.AudienceManagement, "test"))))
}

// kas all runs the control plane and a node in one process; the node
// registers through the control plane's own listener, whatever it is.
func TestAllRole(t *testing.T) {
	for _, tc := range []struct {
		name string
		// listen changes the control plane's listener.
		listen func(t *testing.T, cfg *config.Config)
		// wantURL checks the URL the node calls.
		wantURL func(s *Server) string
	}{
		{
			name:    "tcp",
			listen:  func(*testing.T, *config.Config) {},
			wantURL: func(s *Server) string { return "http://" + s.Addr("controlplane.listen").String() },
		},
		{
			name: "unix socket",
			listen: func(t *testing.T, cfg *config.Config) {
				dir, err := os.MkdirTemp("", "kas-all-")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { os.RemoveAll(dir) })
				cfg.Controlplane.Listen = config.Listen{Network: "unix", Address: filepath.Join(dir, "api.socket")}
			},
			wantURL: func(s *Server) string { return "unix://" + s.cfg.Controlplane.Listen.Address },
		},
		{
			// A certificate need not name loopback: the node gets a
			// clear-text loopback listener of its own.
			name: "tls",
			listen: func(t *testing.T, cfg *config.Config) {
				dir := t.TempDir()
				cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
				if _, err := ensureSelfSignedCert(cert, key, time.Now()); err != nil {
					t.Fatal(err)
				}
				cfg.Controlplane.Listen.CertificateFile, cfg.Controlplane.Listen.KeyFile = cert, key
			},
			wantURL: func(s *Server) string { return "http://" + s.Addr(internalControlplaneListener).String() },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, apiKey := allConfig(t)
			tc.listen(t, cfg)
			s, stop := runAll(t, cfg)
			if got, want := cfg.Dataplane.ControlplaneURL, tc.wantURL(s); got != want {
				t.Errorf("the node calls %s, want %s", got, want)
			}
			// The private API moved to loopback, so the node's URL derives.
			if a := s.Addr("dataplane.private_api.listen").String(); !strings.HasPrefix(a, "127.0.0.1:") || s.node.PrivateURL() != "grpc://"+a {
				t.Errorf("private API on %s, private URL %s; want loopback", a, s.node.PrivateURL())
			}

			e := s.Endpoints()
			hc := &http.Client{Timeout: 10 * time.Second}
			if strings.HasPrefix(e.APIURL, "unix://") {
				hc.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", strings.TrimPrefix(e.APIURL, "unix://"))
				}}
			} else if strings.HasPrefix(e.APIURL, "https://") {
				pool := x509.NewCertPool()
				pem, _ := os.ReadFile(cfg.Controlplane.Listen.CertificateFile)
				pool.AppendCertsFromPEM(pem)
				hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
			}
			base := e.APIURL
			if strings.HasPrefix(base, "unix://") {
				base = "http://kas"
			}
			nodes, err := routing(t, hc, base, apiKey).ListNodes(t.Context(), &managementv1.ListNodesRequest{})
			if err != nil {
				t.Fatalf("ListNodes at %s: %v", e.APIURL, err)
			}
			if len(nodes.GetNodes()) != 1 || nodes.GetNodes()[0].GetNodeId() != "all-in-one" || nodes.GetNodes()[0].GetState() != "live" {
				t.Errorf("nodes %v; want the all-in-one node, live", nodes.GetNodes())
			}
			if want := "ws://" + s.Addr("dataplane.agent.listen").String(); e.AgentURL != want {
				t.Errorf("agent URL %s, want %s", e.AgentURL, want)
			}
			// With database.url nothing is generated: the proxy stays plain.
			if want := "http://" + s.Addr("dataplane.kubernetes_api.listen").String() + "/k8s-proxy/"; e.ProxyURL != want || e.ProxyCAFile != "" {
				t.Errorf("proxy URL %s (CA %q), want %s", e.ProxyURL, e.ProxyCAFile, want)
			}
			if err := stop(); err != nil {
				t.Errorf("Run after cancel: %v", err)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// `kas all` prints where it serves and the commands that connect a
// cluster, with the flags its addresses and key need.
func TestAllCLI(t *testing.T) {
	cfg, _ := allConfig(t)
	env := map[string]string{
		"KAS_DATABASE_URL":                            cfg.Database.URL,
		"KAS_API_SECRET_KEY_FILE":                     cfg.APISecretKeyFile,
		"KAS_PRIVATE_API_SECRET_KEY_FILE":             cfg.PrivateAPISecretKeyFile,
		"KAS_CONTROLPLANE_LISTEN_ADDRESS":             "127.0.0.1:0",
		"KAS_DATAPLANE_AGENT_LISTEN_ADDRESS":          "127.0.0.1:0",
		"KAS_DATAPLANE_KUBERNETES_API_LISTEN_ADDRESS": "127.0.0.1:0",
		"KAS_DATAPLANE_PRIVATE_API_LISTEN_ADDRESS":    ":0",
		"KAS_OBSERVABILITY_LISTEN_ADDRESS":            "127.0.0.1:0",
		"KAS_OBSERVABILITY_LOG_FORMAT":                "json",
	}
	var stdout, stderr syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() {
		done <- CLI{Stdout: &stdout, Stderr: &stderr, Program: "/opt/kas/bin/kas",
			LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }}.Run(ctx, []string{"all"})
	}()
	guard := time.NewTimer(30 * time.Second)
	defer guard.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(stdout.String(), "\nMore: ") {
		select {
		case code := <-done:
			t.Fatalf("kas all exited %d before printing:\n%s", code, stderr.String())
		case <-guard.C:
			t.Fatalf("kas all printed nothing within 30s:\n%s", stderr.String())
		case <-tick.C:
		}
	}
	out := stdout.String()
	for _, want := range []string{
		`kas is running: the control plane, dataplane node`,
		"  agent URL (agentk --kas-address)   ws://127.0.0.1:",
		"AGENT_ID=$(/opt/kas/bin/kasctl --server http://127.0.0.1:",
		" --api-secret-key-file " + cfg.APISecretKeyFile + " agents create --name my-cluster -o id)",
		`tokens create --agent-id "$AGENT_ID" --out .kas/agentk-token`,
		"/opt/kas/bin/agentk --kas-address ws://127.0.0.1:",
		"--token-file .kas/agentk-token --kubeconfig ~/.kube/config",
		` kubeconfig --agent-id "$AGENT_ID" --proxy-url http://127.0.0.1:`,
		"--user-id 1 --username ",
		"kubectl sends credentials to https:// servers only",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the welcome text lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(stderr.String(), "kas is running") || strings.Count(out, "kas is running") != 1 {
		t.Errorf("the welcome text belongs on stdout, once")
	}
	cancel()
	if code := <-done; code != ExitOK {
		t.Errorf("kas all after a signal: exit %d\n%s", code, stderr.String())
	}
	if code, _, stderr := cli(t, nil, "all", "now"); code != ExitUsage || !strings.HasPrefix(stderr, `kas: all: unexpected argument "now"`) {
		t.Errorf("kas all now: exit %d, %q", code, stderr)
	}
}

// The welcome text of the embedded default: short commands, since kasctl's
// defaults match, and the self-signed proxy certificate.
func TestWelcomeText(t *testing.T) {
	w := welcome{
		Endpoints: Endpoints{
			AgentURL:         "ws://127.0.0.1:8150",
			ProxyURL:         "https://127.0.0.1:8154/k8s-proxy/",
			ProxyCAFile:      ".kas/secrets/proxy-tls.crt",
			APIURL:           "http://127.0.0.1:8153",
			APIKeyFile:       ".kas/secrets/api_secret_key",
			ObservabilityURL: "http://127.0.0.1:8151",
		},
		NodeID: "laptop", DataDir: ".kas/postgres", StateDir: ".kas",
		Username: "alice",
	}
	w.Kasctl, w.Agentk = siblingBinaries("bin/kas")
	text := w.Text()
	for _, want := range []string{
		"       AGENT_ID=$(bin/kasctl agents create --name my-cluster -o id)\n",
		"       bin/kasctl tokens create --agent-id \"$AGENT_ID\" --out .kas/agentk-token\n",
		"       bin/agentk --kas-address ws://127.0.0.1:8150 --token-file .kas/agentk-token --kubeconfig ~/.kube/config\n",
		"       bin/kasctl kubeconfig --agent-id \"$AGENT_ID\" --proxy-url https://127.0.0.1:8154/k8s-proxy/ --certificate-authority .kas/secrets/proxy-tls.crt --user-id 1 --username alice --out .kas/kubeconfig\n",
		"       kubectl --kubeconfig .kas/kubeconfig get pods -A\n",
		"--user=gitlab:user:alice",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("welcome text lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "https:// servers only") {
		t.Errorf("no warning expected for an https proxy:\n%s", text)
	}
	// Paths that need quoting are quoted.
	w.StateDir = "/home/a b/.kas"
	if text := w.Text(); !strings.Contains(text, "--out '/home/a b/.kas/agentk-token'") {
		t.Errorf("unquoted path:\n%s", text)
	}
	for prog, want := range map[string]string{"bin/kas": "bin/kasctl", "kas": "kasctl", "./kas": "./kasctl", "/usr/bin/kas": "/usr/bin/kasctl"} {
		if got, _ := siblingBinaries(prog); got != want {
			t.Errorf("siblingBinaries(%q) = %q, want %q", prog, got, want)
		}
	}
}

// The proxy's self-signed certificate is generated once, 0600, and
// verifies for loopback.
func TestSelfSignedCert(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "s", "c.crt"), filepath.Join(dir, "s", "c.key")
	now := time.Now()
	if created, err := ensureSelfSignedCert(cert, key, now); err != nil || !created {
		t.Fatalf("first call: %v, %v", created, err)
	}
	first, _ := os.ReadFile(cert)
	if created, err := ensureSelfSignedCert(cert, key, now); err != nil || created {
		t.Fatalf("second call: %v, %v", created, err)
	}
	if again, _ := os.ReadFile(cert); !bytes.Equal(first, again) {
		t.Error("the certificate changed on the second call")
	}
	for _, p := range []string{cert, key} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, %v", p, fi, err)
		}
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(first)
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	for _, name := range []string{"127.0.0.1", "::1", "localhost"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
}
