package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kas-project/kas/agent"
	"github.com/kas-project/kas/dataplane/tunnel"
)

const testToken = "kasagent_7_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"

func runCLI(t *testing.T, ctx context.Context, env map[string]string, args ...string) (code int, stdout, stderr string, c cli) {
	t.Helper()
	var out, errb bytes.Buffer
	c = cli{
		stdout:    &out,
		stderr:    &errb,
		lookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
	}
	code = c.run(ctx, args)
	return code, out.String(), errb.String(), c
}

func TestHelpAndVersion(t *testing.T) {
	code, out, _, _ := runCLI(t, context.Background(), nil, "--help")
	if code != exitOK {
		t.Errorf("--help exit %d", code)
	}
	for _, d := range defs(&config{}) {
		if !strings.Contains(out, "--"+d.name) || !strings.Contains(out, "env "+d.env) {
			t.Errorf("--help lacks --%s / %s", d.name, d.env)
		}
	}
	code, out, _, _ = runCLI(t, context.Background(), nil, "version")
	if code != exitOK || !strings.HasPrefix(out, "agentk dev go") {
		t.Errorf("version: exit %d, %q", code, out)
	}
	code, _, errOut, _ := runCLI(t, context.Background(), nil, "--no-such-flag")
	if code != exitUsage || !strings.Contains(errOut, "flag provided but not defined: -no-such-flag") {
		t.Errorf("unknown flag: exit %d, %q", code, errOut)
	}
	code, _, errOut, _ = runCLI(t, context.Background(), nil, "serve")
	if code != exitUsage || !strings.Contains(errOut, `unexpected argument "serve"`) {
		t.Errorf("unknown argument: exit %d, %q", code, errOut)
	}
}

func TestInvalidConfigurationListsEveryProblem(t *testing.T) {
	env := map[string]string{"KAS_ADDRESS": "http://kas", "KUBERNETES_SERVICE_HOST": ""}
	code, _, errOut, _ := runCLI(t, context.Background(), env, "--tunnels", "0", "--max-backoff", "-1s", "--kube-ca-file", "/nope")
	if code != exitError {
		t.Errorf("exit %d, want %d", code, exitError)
	}
	for _, want := range []string{
		"agentk: invalid configuration (",
		"--kas-address (KAS_ADDRESS): scheme must be ws or wss",
		"--token-file (KAS_TOKEN_FILE): required",
		"--max-backoff (AGENTK_MAX_BACKOFF): must not be negative",
		"--kube-ca-file (AGENTK_KUBE_CA_FILE): only applies with --kube-api-url",
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	// Every setting an error names is a flag with that environment variable.
	flags := map[string]string{}
	for _, d := range defs(&config{}) {
		flags[d.name] = d.env
	}
	for _, m := range regexp.MustCompile(`--([a-z-]+) \(([A-Z_]+)\)`).FindAllStringSubmatch(errOut, -1) {
		if env, ok := flags[m[1]]; !ok || env != m[2] {
			t.Errorf("error names --%s (%s), but the flag's variable is %q", m[1], m[2], env)
		}
	}

	code, _, errOut, _ = runCLI(t, context.Background(), map[string]string{"AGENTK_TUNNELS": "many"})
	if code != exitUsage || !strings.Contains(errOut, `environment variable AGENTK_TUNNELS: invalid value "many"`) {
		t.Errorf("bad environment value: exit %d, %q", code, errOut)
	}
}

func TestEnvironmentAndFlags(t *testing.T) {
	c := cli{lookupEnv: func(k string) (string, bool) {
		v, ok := map[string]string{
			"KAS_ADDRESS":                          "wss://kas.example.com",
			"KAS_TOKEN_FILE":                       "/etc/agentk/token",
			"AGENTK_TUNNELS":                       "3",
			"AGENTK_MAX_CONNECTION_AGE":            "1h",
			"AGENTK_KUBE_INSECURE_SKIP_TLS_VERIFY": "true",
			"AGENTK_LOG_LEVEL":                     "debug",
		}[k]
		return v, ok
	}}
	cfg, _, err := c.parse([]string{"--tunnels", "4", "--ca-file", "/ca.pem"})
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.opts
	if o.KASAddress != "wss://kas.example.com" || o.TokenFile != "/etc/agentk/token" || o.Tunnels != 4 ||
		o.MaxConnectionAge != time.Hour || !o.KubeInsecureSkipTLSVerify || o.CAFile != "/ca.pem" ||
		o.ObservabilityListen != ":8080" || cfg.logLevel != "debug" || o.Version != "dev" {
		t.Errorf("options = %+v, log level %q", o, cfg.logLevel)
	}
}

// TestRunsUntilSignalled starts agentk against a minimal node and stops it
// as SIGTERM would.
func TestRunsUntilSignalled(t *testing.T) {
	accepted := make(chan *tunnel.Session, 4)
	node := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tok, _ := tunnel.BearerToken(r); r.URL.Path != agent.TunnelPath || tok != testToken {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		w.Header().Set(agent.NodeIDHeader, "node-1")
		s, err := tunnel.Accept(w, r, tunnel.AcceptOptions{})
		if err == nil {
			accepted <- s
		}
	}))
	defer node.Close()
	api := httptest.NewServer(http.NotFoundHandler())
	defer api.Close()
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte(testToken+"\n"), 0o600)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var errb syncWriter
	c := cli{
		stdout:    &bytes.Buffer{},
		stderr:    &errb,
		lookupEnv: func(string) (string, bool) { return "", false },
		started: func(a *agent.Agent) {
			go func() {
				wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
				defer wcancel()
				if err := a.WaitTunnels(wctx, 1); err != nil {
					t.Error(err)
				}
				cancel() // SIGTERM
			}()
		},
	}
	code := c.run(ctx, []string{
		"--kas-address", "ws" + strings.TrimPrefix(node.URL, "http"),
		"--token-file", tokenFile,
		"--kube-api-url", api.URL,
		"--tunnels", "1",
		"--observability-listen", "127.0.0.1:0",
		"--log-format", "json",
	})
	if code != exitOK {
		t.Errorf("exit %d; stderr:\n%s", code, errb.String())
	}
	s := <-accepted
	select {
	case <-s.Done(): // the agent closed its tunnel on the way out
	case <-time.After(15 * time.Second):
		t.Error("the tunnel is still open after agentk returned")
	}
	logs := errb.String()
	for _, want := range []string{`"msg":"tunnel connected"`, `"agent_id":7`, `"node_id":"node-1"`, `"msg":"stopped"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s:\n%s", want, logs)
		}
	}
	if strings.Contains(logs, testToken) {
		t.Error("the token was logged")
	}
}

type syncWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
