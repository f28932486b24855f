package app

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	dataplanev1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/internal/cptest"
)

func run(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := CLI{Stdout: &out, Stderr: &errb, LookupEnv: func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	}}.Run(context.Background(), args)
	return code, out.String(), errb.String()
}

func writeKey(t *testing.T, key []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "api_secret_key")
	if err := os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{nil, ExitUsage, "no command given"},
		{[]string{"nope"}, ExitUsage, `unknown command "nope"`},
		{[]string{"help"}, ExitOK, "kubeconfig"},
		{[]string{"kubeconfig", "--help"}, ExitOK, "-proxy-url"},
		{[]string{"kubeconfig"}, ExitUsage, "--agent-id: required"},
		{[]string{"kubeconfig", "--agent-id", "3", "--proxy-url", "ftp://x", "--token", "t"}, ExitUsage, "--proxy-url: required, an http"},
		{[]string{"kubeconfig", "--agent-id", "3", "--proxy-url", "http://x/", "--token", "pat:4:s"}, ExitUsage, "must name --agent-id 3"},
		{[]string{"kubeconfig", "--agent-id", "3", "--proxy-url", "http://x/", "--token", "t", "--username", "u"}, ExitUsage, "not both"},
		{[]string{"-o", "yaml", "kubeconfig", "--agent-id", "3", "--proxy-url", "http://x/", "--token", "t"}, ExitUsage, `"yaml" is not table, json or id`},
		{[]string{"kubeconfig", "--agent-id", "3", "--proxy-url", "http://x/", "--user-id", "1", "--username", "u"}, ExitError, "--api-secret-key-file (or $KASCTL_API_SECRET_KEY_FILE) is required"},
	} {
		code, out, errOut := run(t, nil, c.args...)
		if code != c.code || !strings.Contains(out+errOut, c.want) {
			t.Errorf("kasctl %q: exit %d, stdout %q, stderr %q; want exit %d with %q", c.args, code, out, errOut, c.code, c.want)
		}
	}
}

// With a token, kasctl writes the kubeconfig without calling anyone.
func TestKubeconfigWithToken(t *testing.T) {
	code, out, errOut := run(t, nil, "kubeconfig", "--agent-id", "12", "--proxy-url", "https://kas.example.com:8154/k8s-proxy/",
		"--token", "kaspat_9_secret", "--namespace", "apps", "--insecure-skip-tls-verify")
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	kc, err := clientcmd.Load([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	rc, err := clientcmd.NewDefaultClientConfig(*kc, nil).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	if rc.Host != "https://kas.example.com:8154/k8s-proxy/" || rc.BearerToken != "pat:12:kaspat_9_secret" || !rc.Insecure {
		t.Errorf("rest config: host %q token %q insecure %v", rc.Host, rc.BearerToken, rc.Insecure)
	}
	if ns, _, _ := clientcmd.NewDefaultClientConfig(*kc, nil).Namespace(); ns != "apps" || kc.CurrentContext != "kas-agent-12" {
		t.Errorf("namespace %q, current context %q", ns, kc.CurrentContext)
	}

	// The same as JSON, given as pat:<agent-id>:<secret>.
	code, out, errOut = run(t, nil, "-o", "json", "kubeconfig", "--agent-id", "12", "--proxy-url", "http://127.0.0.1:8154/k8s-proxy/",
		"--token", "pat:12:kaspat_9_secret")
	if code != ExitOK || !json.Valid([]byte(out)) {
		t.Fatalf("exit %d, %q: %s", code, out, errOut)
	}
	if kc, err := clientcmd.Load([]byte(out)); err != nil || kc.AuthInfos["kas-agent-12"].Token != "pat:12:kaspat_9_secret" {
		t.Errorf("JSON kubeconfig: %v, %v", kc, err)
	}
}

// Without a token, kasctl mints one through the control plane, granted
// only the agent, and the proxy's authorization accepts it.
func TestKubeconfigCreatesAToken(t *testing.T) {
	env := cptest.Start(t)
	ctx := context.Background()
	a, err := env.Agents.CreateAgent(ctx, &managementv1.CreateAgentRequest{ProjectId: 1, Name: "prod"})
	if err != nil {
		t.Fatal(err)
	}
	agentID := a.GetAgent().GetId()
	out := filepath.Join(t.TempDir(), "kubeconfig")
	vars := map[string]string{EnvServer: env.URL, EnvAPIKeyFile: writeKey(t, env.APIKey)}
	code, stdout, stderr := run(t, vars, "kubeconfig", "--agent-id", strconv.FormatInt(agentID, 10),
		"--proxy-url", "http://127.0.0.1:8154/k8s-proxy/", "--user-id", "7", "--username", "alice", "--groups", "grp/a, grp/b",
		"--expires-in", "2h", "--out", out)
	if code != ExitOK || stdout != "" || !strings.Contains(stderr, "created access token") || !strings.Contains(stderr, "wrote "+out) {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("kubeconfig file: %v, %v", fi, err)
	}
	kc, err := clientcmd.LoadFromFile(out)
	if err != nil {
		t.Fatal(err)
	}
	token := kc.AuthInfos[kc.Contexts[kc.CurrentContext].AuthInfo].Token
	prefix := "pat:" + strconv.FormatInt(agentID, 10) + ":"
	if !strings.HasPrefix(token, prefix) {
		t.Fatalf("token %q lacks %s", token, prefix)
	}
	list, err := env.Credentials.ListAccessTokens(ctx, &managementv1.ListAccessTokensRequest{AgentId: agentID})
	if err != nil || len(list.GetTokens()) != 1 {
		t.Fatalf("tokens: %v, %v", list, err)
	}
	tok := list.GetTokens()[0]
	if u := tok.GetUser(); u.GetId() != 7 || u.GetUsername() != "alice" || strings.Join(u.GetGroups(), ",") != "grp/a,grp/b" {
		t.Errorf("token user %v", u)
	}
	if d := time.Until(tok.GetExpiresAt().AsTime()); d < time.Hour || d > 2*time.Hour {
		t.Errorf("token expires in %v, want about 2h", d)
	}
	dec, err := env.Auth.AuthorizeProxy(ctx, &dataplanev1.AuthorizeProxyRequest{AgentId: agentID,
		Credential: &dataplanev1.AuthorizeProxyRequest_AccessToken{AccessToken: strings.TrimPrefix(token, prefix)}})
	if err != nil || dec.GetDecision() != dataplanev1.AuthorizeProxyResponse_DECISION_ALLOWED || dec.GetPrincipal() != "user:alice" {
		t.Errorf("AuthorizeProxy: %v, %v", dec, err)
	}

	// A wrong key, or no control plane, says what to fix.
	other := make([]byte, 32)
	bad := map[string]string{EnvServer: env.URL, EnvAPIKeyFile: writeKey(t, other)}
	args := []string{"kubeconfig", "--agent-id", "1", "--proxy-url", "http://x/", "--user-id", "7", "--username", "alice"}
	if code, _, stderr := run(t, bad, args...); code != ExitError || !strings.Contains(stderr, "refused the JWT") {
		t.Errorf("wrong key: exit %d, %q", code, stderr)
	}
	down := map[string]string{EnvServer: "http://127.0.0.1:1", EnvAPIKeyFile: vars[EnvAPIKeyFile]}
	if code, _, stderr := run(t, down, args...); code != ExitError || !strings.Contains(stderr, "cannot reach the control plane at http://127.0.0.1:1 (--server)") {
		t.Errorf("no control plane: exit %d, %q", code, stderr)
	}
}
