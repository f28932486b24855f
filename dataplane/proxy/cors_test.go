package proxy_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kas-project/kas/dataplane"
	"github.com/kas-project/kas/dataplane/proxy"
	"github.com/kas-project/kas/tests/framework"
)

const gitlabOrigin = "https://gitlab.example.com"

// corsHeaders returns resp's Access-Control-* headers.
func corsHeaders(resp *http.Response) http.Header {
	h := http.Header{}
	for k, vs := range resp.Header {
		if strings.HasPrefix(k, "Access-Control-") {
			h[k] = vs
		}
	}
	return h
}

// wantCORS checks that resp is readable by a page on origin: exactly one
// Access-Control-Allow-Origin naming it, credentials allowed, Origin in
// Vary, and kas's exposed headers.
func wantCORS(t testing.TB, resp *http.Response, origin string) {
	t.Helper()
	if v := resp.Header.Values("Access-Control-Allow-Origin"); !slices.Equal(v, []string{origin}) {
		t.Errorf("Access-Control-Allow-Origin %q, want [%s]", v, origin)
	}
	if v := resp.Header.Values("Access-Control-Allow-Credentials"); !slices.Equal(v, []string{"true"}) {
		t.Errorf("Access-Control-Allow-Credentials %q, want [true]", v)
	}
	if !varies(resp, "Origin") {
		t.Errorf("Vary %q lacks Origin", resp.Header.Values("Vary"))
	}
	if e := resp.Header.Get("Access-Control-Expose-Headers"); !strings.Contains(e, "Warning") || !strings.Contains(e, "Audit-Id") {
		t.Errorf("Access-Control-Expose-Headers %q", e)
	}
}

// wantNoCORS checks that resp has no Access-Control-* header at all.
func wantNoCORS(t testing.TB, resp *http.Response) {
	t.Helper()
	if h := corsHeaders(resp); len(h) > 0 {
		t.Errorf("CORS headers %v", h)
	}
}

func varies(resp *http.Response, name string) bool {
	for _, v := range resp.Header.Values("Vary") {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), name) {
				return true
			}
		}
	}
	return false
}

func withOrigins(origins ...string) func(*dataplane.Options) {
	return func(o *dataplane.Options) { o.KubernetesAPI.AllowedOrigins = origins }
}

// A page on an allowed origin reads the answers, the agent's and the
// proxy's own errors; requests without Origin see no CORS at all; the
// agent's own Access-Control-* headers never pass.
func TestCORSAllowedOrigin(t *testing.T) {
	w := newWorld(t)
	n := w.node(t, "node-a", withOrigins(gitlabOrigin+"/", "http://localhost:3000"))
	a, up := w.agent(t, n, "a", "user_access:\n  access_as: {user: {}}\n  groups: [{id: grp/devs}]\n")
	offline := framework.CreateAgent(t, w.env, "offline")
	pat, _ := w.pat(t, a.ID, offline.ID)
	cookie, csrf := w.session(t)
	browser := func(origin string, kv ...string) http.Header {
		h := http.Header{"Origin": {origin}, "Cookie": {"_gitlab_kas=" + cookie}, "Gitlab-Agent-Id": {strconv.FormatInt(a.ID, 10)}}
		for i := 0; i < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}

	t.Run("no Origin: no CORS", func(t *testing.T) {
		resp, body := do(t, "GET", n.ProxyURL+"api/v1/pods", auth(bearer("pat", a.ID, pat)), nil)
		if resp.StatusCode != 200 {
			t.Fatalf("answered %d %s", resp.StatusCode, body)
		}
		wantNoCORS(t, resp)
		if varies(resp, "Origin") {
			t.Errorf("Vary: Origin without Origin")
		}
		up.last(t)
		resp, body = do(t, "GET", n.ProxyURL+"api/v1/pods", nil, nil)
		wantStatus(t, resp, body, 401, metav1.StatusReasonUnauthorized, "no credentials")
		wantNoCORS(t, resp)
	})
	t.Run("cookie GET and POST", func(t *testing.T) {
		resp, body := do(t, "GET", n.ProxyURL+"api/v1/pods", browser(gitlabOrigin), nil)
		if resp.StatusCode != 200 {
			t.Fatalf("answered %d %s", resp.StatusCode, body)
		}
		wantCORS(t, resp, gitlabOrigin)
		if s := up.last(t); s.header.Get("Impersonate-User") != "gitlab:user:bob" {
			t.Errorf("upstream Impersonate-User %q", s.header.Get("Impersonate-User"))
		}
		resp, body = do(t, "POST", n.ProxyURL+"api/v1/namespaces/default/pods", browser("http://localhost:3000", "X-Csrf-Token", csrf), strings.NewReader("{}"))
		if resp.StatusCode != 200 {
			t.Fatalf("POST answered %d %s", resp.StatusCode, body)
		}
		wantCORS(t, resp, "http://localhost:3000")
		up.last(t)
	})
	t.Run("the proxy's errors carry CORS", func(t *testing.T) {
		resp, body := do(t, "POST", n.ProxyURL+"api/v1/namespaces/default/pods", browser(gitlabOrigin), strings.NewReader("{}"))
		wantStatus(t, resp, body, 403, metav1.StatusReasonForbidden, "X-Csrf-Token")
		wantCORS(t, resp, gitlabOrigin)
		resp, body = do(t, "GET", n.ProxyURL+"api/v1/pods", http.Header{"Origin": {gitlabOrigin}}, nil)
		wantStatus(t, resp, body, 401, metav1.StatusReasonUnauthorized, "no credentials")
		wantCORS(t, resp, gitlabOrigin)
		if resp.Header.Get("Gitlab-Unauthorized") != "true" {
			t.Error("401 without Gitlab-Unauthorized")
		}
		resp, body = do(t, "GET", "http://"+n.ProxyAddr+"/api", http.Header{"Origin": {gitlabOrigin}}, nil)
		wantStatus(t, resp, body, 404, metav1.StatusReasonNotFound, "served under")
		wantCORS(t, resp, gitlabOrigin)
		h := auth(bearer("pat", offline.ID, pat))
		h.Set("Origin", gitlabOrigin)
		resp, body = do(t, "GET", n.ProxyURL+"api", h, nil)
		wantStatus(t, resp, body, 503, metav1.StatusReasonServiceUnavailable, "is not connected")
		wantCORS(t, resp, gitlabOrigin)
		up.none(t)
	})
	t.Run("upstream CORS headers are dropped", func(t *testing.T) {
		resp, body := do(t, "GET", n.ProxyURL+"cors", auth(bearer("pat", a.ID, pat)), nil)
		if resp.StatusCode != 200 {
			t.Fatalf("answered %d %s", resp.StatusCode, body)
		}
		wantNoCORS(t, resp)
		if v := resp.Header.Values("Vary"); !slices.Equal(v, []string{"Accept-Encoding"}) {
			t.Errorf("Vary %q, want the upstream's alone", v)
		}
		up.last(t)
		resp, body = do(t, "GET", n.ProxyURL+"cors", browser(gitlabOrigin), nil)
		if resp.StatusCode != 200 {
			t.Fatalf("answered %d %s", resp.StatusCode, body)
		}
		wantCORS(t, resp, gitlabOrigin)
		if !varies(resp, "Accept-Encoding") {
			t.Errorf("Vary %q lost the upstream's Accept-Encoding", resp.Header.Values("Vary"))
		}
		for _, k := range []string{"Access-Control-Allow-Methods", "Access-Control-Max-Age"} {
			if v := resp.Header.Values(k); v != nil {
				t.Errorf("the upstream's %s %q passed", k, v)
			}
		}
		if e := resp.Header.Get("Access-Control-Expose-Headers"); strings.Contains(e, "X-Secret") {
			t.Errorf("the upstream's exposed headers passed: %q", e)
		}
		up.last(t)
	})
	t.Run("same origin", func(t *testing.T) {
		own := "http://" + n.ProxyAddr
		resp, body := do(t, "GET", n.ProxyURL+"api/v1/pods", browser(own), nil)
		if resp.StatusCode != 200 {
			t.Fatalf("answered %d %s", resp.StatusCode, body)
		}
		wantCORS(t, resp, own)
		up.last(t)
		// The connection is plain HTTP: https:// with the same host is
		// another origin.
		resp, body = do(t, "GET", n.ProxyURL+"api/v1/pods", browser("https://"+n.ProxyAddr), nil)
		wantStatus(t, resp, body, 403, metav1.StatusReasonForbidden, "is not allowed")
	})
	t.Run("preflight", func(t *testing.T) {
		h := http.Header{"Origin": {gitlabOrigin}, "Access-Control-Request-Method": {"PATCH"},
			"Access-Control-Request-Headers": {"content-type,gitlab-agent-id, x-csrf-token", "bad header,(x), authorization"}}
		resp, body := do(t, "OPTIONS", n.ProxyURL+"api/v1/namespaces/default/pods/p", h, nil)
		if resp.StatusCode != http.StatusNoContent || body != "" {
			t.Fatalf("preflight answered %d %q", resp.StatusCode, body)
		}
		want := http.Header{
			"Access-Control-Allow-Origin":      {gitlabOrigin},
			"Access-Control-Allow-Credentials": {"true"},
			"Access-Control-Allow-Methods":     {"GET, HEAD, POST, PUT, PATCH, DELETE"},
			"Access-Control-Allow-Headers":     {"content-type, gitlab-agent-id, x-csrf-token, authorization"},
			"Access-Control-Max-Age":           {"86400"},
		}
		if got := corsHeaders(resp); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("preflight CORS headers\n got %v\nwant %v", got, want)
		}
		if !varies(resp, "Origin") {
			t.Errorf("preflight Vary %q", resp.Header.Values("Vary"))
		}
		// Without Access-Control-Request-Headers: no Allow-Headers.
		resp, _ = do(t, "OPTIONS", n.ProxyURL+"api", http.Header{"Origin": {gitlabOrigin}, "Access-Control-Request-Method": {"GET"}}, nil)
		if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Headers") != "" {
			t.Errorf("preflight without requested headers: %d %v", resp.StatusCode, corsHeaders(resp))
		}
		up.none(t)
		// OPTIONS without Access-Control-Request-Method is no preflight:
		// it needs credentials like any request.
		resp, body = do(t, "OPTIONS", n.ProxyURL+"api", http.Header{"Origin": {gitlabOrigin}}, nil)
		wantStatus(t, resp, body, 401, metav1.StatusReasonUnauthorized, "no credentials")
		wantCORS(t, resp, gitlabOrigin)
	})
	if got := n.Metric(t, "proxy_requests_total", "code", "204"); got != 2 {
		t.Errorf("proxy_requests_total{code=204} = %v, want 2 preflights", got)
	}
}

// A request from any other origin is refused before its credentials are
// looked at, preflight, simple request or upgrade alike, and the refusal
// is not readable by the page.
func TestCORSDisallowedOrigin(t *testing.T) {
	w := newWorld(t)
	n := w.node(t, "node-a", withOrigins(gitlabOrigin))
	a, up := w.agent(t, n, "a", "")
	pat, _ := w.pat(t, a.ID)
	good := bearer("pat", a.ID, pat)

	for _, c := range []struct {
		name, method string
		header       http.Header
		msg          string
	}{
		{"other origin", "GET", http.Header{"Origin": {"https://evil.example"}}, `origin "https://evil.example" is not allowed (list it in dataplane.kubernetes_api.allowed_origins)`},
		{"other port", "GET", http.Header{"Origin": {gitlabOrigin + ":8443"}}, "is not allowed"},
		{"other scheme", "GET", http.Header{"Origin": {"http://gitlab.example.com"}}, "is not allowed"},
		{"suffix", "GET", http.Header{"Origin": {gitlabOrigin + ".evil.example"}}, "is not allowed"},
		{"null", "POST", http.Header{"Origin": {"null"}}, `origin "null" is not allowed`},
		{"empty", "GET", http.Header{"Origin": {""}}, "the request's origin is not allowed"},
		{"two Origin headers", "GET", http.Header{"Origin": {gitlabOrigin, "https://evil.example"}}, "more than one Origin header"},
		{"bytes are escaped", "GET", http.Header{"Origin": {"https://e\xffvil\"<x>"}}, `origin "https://e\xffvil\"<x>" is not allowed`},
		{"long origin is cut", "GET", http.Header{"Origin": {"https://" + strings.Repeat("a", 300)}}, `aaaa"... is not allowed`},
		{"preflight", "OPTIONS", http.Header{"Origin": {"https://evil.example"}, "Access-Control-Request-Method": {"DELETE"}}, "is not allowed"},
		{"upgrade", "GET", http.Header{"Origin": {"https://evil.example"}, "Connection": {"Upgrade"}, "Upgrade": {"kas-test"}}, "is not allowed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := c.header.Clone()
			h.Set("Authorization", good)
			path := "api/v1/pods"
			if c.name == "upgrade" {
				path = "upgrade"
			}
			resp, body := do(t, c.method, n.ProxyURL+path, h, nil)
			// The Warning header quotes the message again: check the
			// quoted origin in the Status alone.
			wantStatus(t, resp, body, 403, metav1.StatusReasonForbidden, "kas: forbidden: ")
			var st metav1.Status
			if err := json.Unmarshal([]byte(body), &st); err != nil || !strings.Contains(st.Message, c.msg) {
				t.Errorf("Status message %q lacks %q (%v)", st.Message, c.msg, err)
			}
			wantNoCORS(t, resp)
			if strings.ContainsFunc(resp.Header.Get("Warning"), func(r rune) bool { return r < ' ' || r > '~' }) {
				t.Errorf("Warning header %q is not printable ASCII", resp.Header.Get("Warning"))
			}
		})
	}
	up.none(t)
	if hit, miss := n.Metric(t, "proxy_auth_total", "result", "hit"), n.Metric(t, "proxy_auth_total", "result", "miss"); hit+miss != 0 {
		t.Errorf("credentials of refused origins were checked: %v hits, %v misses", hit, miss)
	}
}

func TestParseOrigins(t *testing.T) {
	got, err := proxy.ParseOrigins(" https://GitLab.Example.com/ ,http://localhost:3000,https://a.example:443, http://[::1]:80,HTTPS://xn--bcher-kva.example:8443")
	want := []string{"https://gitlab.example.com", "http://localhost:3000", "https://a.example", "http://[::1]", "https://xn--bcher-kva.example:8443"}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("ParseOrigins = %q, %v; want %q", got, err, want)
	}
	if got, err := proxy.ParseOrigins(""); err != nil || got != nil {
		t.Errorf("empty: %q, %v", got, err)
	}
	for in, msg := range map[string]string{
		"*":                              "wildcards are not allowed",
		"https://*.example.com":          "wildcards are not allowed",
		"null":                           `"null"`,
		"gitlab.example.com":             "must use http:// or https://",
		"ftp://gitlab.example.com":       "must use http:// or https://",
		"https://":                       "has no host",
		"https://gitlab.example.com/-/":  "without user, path, query or fragment",
		"https://gitlab.example.com?a=b": "without user, path, query or fragment",
		"https://gitlab.example.com#x":   "without user, path, query or fragment",
		"https://u:p@gitlab.example.com": "without user, path, query or fragment",
		"https://gitlab.example.com:0":   "invalid port",
		"https://gitlab.example.com:x":   "not an origin",
		"https://bücher.example":         "xn--",
	} {
		if _, err := proxy.ParseOrigins("https://ok.example," + in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParseOrigins(%q) = %v, want an error with %q", in, err, msg)
		}
	}
	o := proxy.Options{AllowedOrigins: []string{"https://ok.example", "https://bad.example/path", "*"}}
	err = o.Validate()
	if err == nil || strings.Count(err.Error(), "dataplane.kubernetes_api.allowed_origins: ") != 2 {
		t.Errorf("Validate = %v, want both problems named by the setting", err)
	}
}
