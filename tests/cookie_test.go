package tests

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kas-project/kas/dataplane"
	mgmtv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/internal/cptest"
	"github.com/kas-project/kas/internal/kascookie"
	"github.com/kas-project/kas/tests/framework"
)

// docRubyBlock returns the ```ruby block of a document of docs/.
func docRubyBlock(t *testing.T, name string) string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "docs", name))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```ruby\n")
	snippet, _, ok2 := strings.Cut(rest, "```\n")
	if !ok || !ok2 {
		t.Fatalf("docs/%s has no ```ruby block", name)
	}
	return snippet
}

// startCookieAgent starts a control plane, a proxy node and an agent whose
// configuration lets members of grp/devs in as themselves, and creates a
// session for dora, a member.
func startCookieAgent(t *testing.T, modify ...func(*dataplane.Options)) (*cptest.Env, *framework.ProxyNode, framework.AgentCreds, *mgmtv1.CreateSessionResponse) {
	t.Helper()
	env := framework.StartControlPlane(t)
	node := framework.StartProxyNode(t, env, "node-a", modify...)
	creds := framework.CreateAgent(t, env, "web")
	ctx := context.Background()
	if _, err := env.Agents.PutAgentConfig(ctx, &mgmtv1.PutAgentConfigRequest{AgentId: creds.ID,
		Yaml: "user_access:\n  access_as: {user: {}}\n  groups: [{id: grp/devs}]\n"}); err != nil {
		t.Fatal(err)
	}
	framework.StartAgent(t, creds, node.AgentURL, 1)
	framework.WaitRouted(t, env, creds.ID, node.ID)
	sess, err := env.Credentials.CreateSession(ctx, &mgmtv1.CreateSessionRequest{
		User:       &mgmtv1.UserIdentity{Id: 5, Username: "dora", Groups: []string{"grp/devs"}},
		ExpiresAt:  timestamppb.New(time.Now().Add(time.Hour)),
		GroupPaths: []string{"grp/devs"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return env, node, creds, sess
}

// A browser's session, as Rails makes it: the session is created through
// the management API, sealed into _gitlab_kas by the Ruby of docs/cookie.md
// run as it is, and the proxy lets the cookie in, with the CSRF token on
// unsafe methods, as the user the agent's user_access names.
func TestCookieFromTheDocumentedRubySnippet(t *testing.T) {
	ruby := requireTool(t, "ruby", `require "openssl"; OpenSSL::KDF.respond_to?(:hkdf) or abort "no OpenSSL::KDF.hkdf"`)
	snippet := docRubyBlock(t, "cookie.md")
	env, node, creds, sess := startCookieAgent(t)
	keyFile := filepath.Join(t.TempDir(), "api_secret_key")
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(env.APIKey)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	seal := func(key string) string {
		t.Helper()
		cmd := exec.Command(ruby, "-")
		cmd.Stdin = strings.NewReader(snippet)
		cmd.Env = append(os.Environ(), "KAS_API_SECRET_KEY_FILE="+key, "KAS_SESSION_ID="+sess.GetSessionId())
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("docs/cookie.md snippet: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	cookie := seal(keyFile)
	if strings.Contains(cookie, sess.GetSessionId()) || strings.ContainsAny(cookie, "=+/") {
		t.Fatalf("cookie %q is not a sealed base64url value", cookie)
	}

	agentID := strconv.FormatInt(creds.ID, 10)
	send := func(method, c string, h ...string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(framework.Context(t), method, node.ProxyURL+"api/v1/namespaces/default/configmaps", nil)
		req.AddCookie(&http.Cookie{Name: "_gitlab_kas", Value: c})
		req.Header.Set("Gitlab-Agent-Id", agentID)
		for i := 0; i+1 < len(h); i += 2 {
			req.Header.Set(h[i], h[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	want := fmt.Sprintf("agent %d: /api/v1/namespaces/default/configmaps", creds.ID)
	if code, body := send("GET", cookie); code != 200 || body != want {
		t.Errorf("GET with the Ruby cookie: %d %s", code, body)
	}
	if code, body := send("POST", cookie); code != 403 || !strings.Contains(body, "X-Csrf-Token") {
		t.Errorf("POST without X-Csrf-Token: %d %s", code, body)
	}
	if code, body := send("POST", cookie, "X-Csrf-Token", sess.GetCsrfToken()); code != 200 || body != want {
		t.Errorf("POST with X-Csrf-Token: %d %s", code, body)
	}

	// Sealed with another key, the cookie does not open.
	otherKey := filepath.Join(t.TempDir(), "other")
	os.WriteFile(otherKey, []byte(base64.StdEncoding.EncodeToString(make([]byte, 32))), 0o600)
	if code, body := send("GET", seal(otherKey)); code != 401 || !strings.Contains(body, "invalid session cookie") {
		t.Errorf("cookie sealed with another key: %d %s", code, body)
	}
}

// A page on GitLab's origin uses the proxy as a browser does: a preflight
// that kas answers itself, then the request with the cookie and the CSRF
// token, whose answer the page may read. A page on another origin is
// refused, cookie or not.
func TestCookieFromABrowserPage(t *testing.T) {
	const gitlab = "https://gitlab.example.com"
	env, node, creds, sess := startCookieAgent(t, func(o *dataplane.Options) {
		o.KubernetesAPI.AllowedOrigins = []string{gitlab}
	})
	cookie, err := kascookie.Encrypt(env.APIKey, sess.GetSessionId())
	if err != nil {
		t.Fatal(err)
	}
	url := node.ProxyURL + "api/v1/namespaces/default/configmaps"
	send := func(method string, h ...string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(framework.Context(t), method, url, nil)
		for i := 0; i+1 < len(h); i += 2 {
			req.Header.Set(h[i], h[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}

	// The preflight carries no cookie; kas answers it without the agent.
	resp, body := send("OPTIONS", "Origin", gitlab, "Access-Control-Request-Method", "POST",
		"Access-Control-Request-Headers", "content-type,gitlab-agent-id,x-csrf-token")
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != gitlab ||
		resp.Header.Get("Access-Control-Allow-Credentials") != "true" ||
		!strings.Contains(resp.Header.Get("Access-Control-Allow-Methods"), "POST") ||
		resp.Header.Get("Access-Control-Allow-Headers") != "content-type, gitlab-agent-id, x-csrf-token" {
		t.Fatalf("preflight: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	browser := []string{"Origin", gitlab, "Cookie", "_gitlab_kas=" + cookie, "Gitlab-Agent-Id", strconv.FormatInt(creds.ID, 10),
		"X-Csrf-Token", sess.GetCsrfToken()}
	want := fmt.Sprintf("agent %d: /api/v1/namespaces/default/configmaps", creds.ID)
	resp, body = send("POST", browser...)
	if resp.StatusCode != 200 || body != want {
		t.Fatalf("POST from the page: %d %s", resp.StatusCode, body)
	}
	if resp.Header.Get("Access-Control-Allow-Origin") != gitlab || resp.Header.Get("Access-Control-Allow-Credentials") != "true" ||
		!strings.Contains(resp.Header.Get("Vary"), "Origin") {
		t.Errorf("the page may not read the answer: %v", resp.Header)
	}
	// The CSRF check's refusal is readable by the page too.
	resp, body = send("POST", browser[:6]...)
	if resp.StatusCode != 403 || !strings.Contains(body, "X-Csrf-Token") || resp.Header.Get("Access-Control-Allow-Origin") != gitlab {
		t.Errorf("POST without X-Csrf-Token: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	// Another origin: refused with the cookie, and unreadable.
	evil := append([]string{"Origin", "https://evil.example"}, browser[2:]...)
	resp, body = send("POST", evil...)
	if resp.StatusCode != 403 || !strings.Contains(body, `origin \"https://evil.example\" is not allowed`) ||
		resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("POST from another origin: %d %v %s", resp.StatusCode, resp.Header, body)
	}
}
