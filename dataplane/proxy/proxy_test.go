package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kas-project/kas/agent"
	"github.com/kas-project/kas/dataplane"
	mgmtv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/internal/impersonation"
	"github.com/kas-project/kas/tests/framework"
)

// Every refusal is a Kubernetes Status with the right code, and none
// reaches an agent.
func TestRefusalsAreKubernetesStatuses(t *testing.T) {
	w := newWorld(t)
	n := w.node(t, "node-a")
	a, up := w.agent(t, n, "a", "")
	offline := framework.CreateAgent(t, w.env, "offline")
	pat, _ := w.pat(t, a.ID, offline.ID)
	patOther, _ := w.pat(t, offline.ID)
	url := n.ProxyURL + "api/v1/pods"

	for _, c := range []struct {
		name   string
		header http.Header
		code   int
		reason metav1.StatusReason
		msg    string
	}{
		{"no credentials", nil, 401, metav1.StatusReasonUnauthorized, "no credentials"},
		{"basic auth", auth("Basic YTpi"), 401, metav1.StatusReasonUnauthorized, "must be Bearer"},
		{"unknown token type", auth("Bearer " + pat), 401, metav1.StatusReasonUnauthorized, "unknown token type"},
		{"agent ID not a number", auth("Bearer pat:x:" + pat), 401, metav1.StatusReasonUnauthorized, "positive integer"},
		{"no secret", auth(fmt.Sprintf("Bearer pat:%d:", a.ID)), 401, metav1.StatusReasonUnauthorized, "must read"},
		{"two Authorization headers", http.Header{"Authorization": {bearer("pat", a.ID, pat), bearer("pat", a.ID, pat)}}, 401, metav1.StatusReasonUnauthorized, "more than one"},
		{"invalid token", auth(bearer("pat", a.ID, "kaspat_1_"+strings.Repeat("A", 43))), 401, metav1.StatusReasonUnauthorized, "invalid access token"},
		{"pat as ci token", auth(bearer("ci", a.ID, pat)), 401, metav1.StatusReasonUnauthorized, "invalid CI job token"},
		{"cookie without agent", http.Header{"Cookie": {"_gitlab_kas=x"}}, 401, metav1.StatusReasonUnauthorized, "Gitlab-Agent-Id"},
		{"bad cookie", http.Header{"Cookie": {"_gitlab_kas=x"}, "Gitlab-Agent-Id": {strconv.FormatInt(a.ID, 10)}}, 401, metav1.StatusReasonUnauthorized, "invalid session cookie"},
		{"token for another agent", auth(bearer("pat", a.ID, patOther)), 403, metav1.StatusReasonForbidden, fmt.Sprintf("may not access agent %d", a.ID)},
		{"unknown agent", auth(bearer("pat", 999999, pat)), 404, metav1.StatusReasonNotFound, "agent 999999 not found"},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, body := do(t, "GET", url, c.header, nil)
			wantStatus(t, resp, body, c.code, c.reason, c.msg)
			if c.code == 401 && resp.Header.Get("Gitlab-Unauthorized") != "true" {
				t.Errorf("401 without Gitlab-Unauthorized: true")
			}
			if resp.Header.Get("X-Request-Id") == "" {
				t.Errorf("no X-Request-Id")
			}
		})
	}
	t.Run("outside the path prefix", func(t *testing.T) {
		resp, body := do(t, "GET", "http://"+n.ProxyAddr+"/api/v1/pods", auth(bearer("pat", a.ID, pat)), nil)
		wantStatus(t, resp, body, 404, metav1.StatusReasonNotFound, "served under /k8s-proxy/")
	})
	t.Run("agent not connected: 503 at once", func(t *testing.T) {
		start := time.Now()
		resp, body := do(t, "GET", url, auth(bearer("pat", offline.ID, pat)), nil)
		wantStatus(t, resp, body, 503, metav1.StatusReasonServiceUnavailable, fmt.Sprintf("agent %d is not connected", offline.ID))
		// The resolver says "no node": no waiting for the dial timeout.
		if took := time.Since(start); took > framework.NodeOptions(w.env, "x").DialTimeout/2 {
			t.Errorf("took %v", took)
		}
	})
	up.none(t)

	t.Run("agent cannot reach its API server: its 502 passes through", func(t *testing.T) {
		dead := framework.CreateAgent(t, w.env, "dead-api")
		framework.StartAgent(t, dead, n.AgentURL, 1, func(o *agent.Options) { o.KubeAPIURL = "http://127.0.0.1:1" })
		framework.WaitRouted(t, w.env, dead.ID, n.ID)
		patDead, _ := w.pat(t, dead.ID)
		resp, body := do(t, "GET", url, auth(bearer("pat", dead.ID, patDead)), nil)
		wantStatus(t, resp, body, 502, metav1.StatusReasonServiceUnavailable, "agentk could not reach the Kubernetes API server")
	})

	if got := n.Metric(t, "proxy_requests_total", "code", "401"); got != 10 {
		t.Errorf("proxy_requests_total{code=401} = %v, want 10", got)
	}
	for code, want := range map[string]float64{"403": 1, "404": 2, "503": 1, "502": 1} {
		if got := n.Metric(t, "proxy_requests_total", "code", code); got != want {
			t.Errorf("proxy_requests_total{code=%s} = %v, want %v", code, got, want)
		}
	}
}

// The agent's API server never sees the caller's credentials or attempts
// to impersonate, hop-by-hop headers, or headers meant for agentk; it sees
// the path without the prefix, the query, end-to-end headers, and the
// identity the control plane decided.
func TestHeadersNeverReachTheAgent(t *testing.T) {
	w := newWorld(t)
	n := w.node(t, "node-a")
	a, up := w.agent(t, n, "a", "")
	pat, _ := w.pat(t, a.ID)
	forged, _ := impersonation.Encode(impersonation.Identity{Username: "system:admin", Groups: []string{"system:masters"}})

	h := http.Header{
		"Authorization":     {bearer("pat", a.ID, pat)},
		"Cookie":            {"_gitlab_kas=x; other=y"},
		"Impersonate-User":  {"system:admin"},
		"Impersonate-Group": {"system:masters"},
		"impersonate-uid":   {"0"},
		"Kas-Impersonation": {forged},
		"Kas-Anything":      {"x"},
		"Gitlab-Agent-Id":   {"1"},
		"X-Csrf-Token":      {"t"},
		"Connection":        {"X-Hop"},
		"X-Hop":             {"dropped"},
		"Proxy-Connection":  {"keep-alive"},
		"X-Custom":          {"kept"},
		"Accept":            {"application/json;as=Table;g=meta.k8s.io;v=v1"},
	}
	resp, body := do(t, "GET", n.ProxyURL+"api/v1/namespaces/default/pods?labelSelector=a%3Db&gitlab-agent-id=1&watch=false", h, nil)
	if resp.StatusCode != 200 || body != fmt.Sprintf(`{"agent":%d,"path":"/api/v1/namespaces/default/pods"}`, a.ID) {
		t.Fatalf("answered %d %s", resp.StatusCode, body)
	}
	s := up.last(t)
	if s.method != "GET" || s.path != "/api/v1/namespaces/default/pods" {
		t.Errorf("upstream got %s %s", s.method, s.path)
	}
	if q := s.query; !strings.Contains(q, "labelSelector=a%3Db") || !strings.Contains(q, "watch=false") || strings.Contains(q, "gitlab-") {
		t.Errorf("upstream query %q", q)
	}
	for k, vs := range s.header {
		switch {
		case strings.EqualFold(k, "Authorization"), strings.EqualFold(k, "Cookie"), strings.EqualFold(k, "X-Hop"),
			strings.EqualFold(k, "Proxy-Connection"), strings.EqualFold(k, "Gitlab-Agent-Id"), strings.EqualFold(k, "X-Csrf-Token"),
			strings.HasPrefix(strings.ToLower(k), "kas-"):
			t.Errorf("upstream got %s: %q", k, vs)
		}
	}
	if got := s.header.Values("Impersonate-User"); !slices.Equal(got, []string{"gitlab:user:alice"}) {
		t.Errorf("Impersonate-User = %q, want the decided user only", got)
	}
	if got := s.header.Values("Impersonate-Group"); !slices.Equal(got, []string{"gitlab:user", "gitlab:group:grp/devs"}) {
		t.Errorf("Impersonate-Group = %q", got)
	}
	if got := s.header.Get("Impersonate-Uid"); got != "" {
		t.Errorf("Impersonate-Uid = %q", got)
	}
	if s.header.Get("X-Custom") != "kept" || s.header.Get("Accept") != h.Get("Accept") {
		t.Errorf("end-to-end headers lost: %v", s.header)
	}
}

// access_as decides whom the API server sees: nobody (agent), the user,
// the CI job, or the configured identity.
func TestImpersonationFollowsAccessAs(t *testing.T) {
	w := newWorld(t)
	n := w.node(t, "node-a")
	a, up := w.agent(t, n, "a", `ci_access:
  projects:
  - id: grp/app
    access_as:
      impersonate:
        username: deployer
        groups: [deployers]
        uid: "42"
        extra:
        - key: acme.com/reason
          val: [ci, deploy]
user_access:
  access_as: {user: {}}
  groups: [{id: grp/devs}]
`)
	asAgent, upAgent := w.agent(t, n, "as-agent", "user_access:\n  access_as: {agent: {}}\n  groups: [{id: grp/devs}]\n")
	pat, _ := w.pat(t, a.ID, asAgent.ID)
	user := &mgmtv1.UserIdentity{Id: 3, Username: "runner"}
	ciApp := w.ciToken(t, &mgmtv1.CIJob{JobId: 1001, ProjectId: 20, ProjectPath: "grp/app", GroupPaths: []string{"grp"}, User: user})
	ciGranted := w.ciToken(t, &mgmtv1.CIJob{JobId: 1002, ProjectId: 21, ProjectPath: "other/x", GroupPaths: []string{"other"},
		Environment: "prod", EnvironmentTier: "production", PipelineId: "77", User: user}, a.ID)
	ciOwn := w.ciToken(t, &mgmtv1.CIJob{JobId: 1003, ProjectId: 1, ProjectPath: "ops/agents"}) // the agent's own project
	agentID := strconv.FormatInt(a.ID, 10)

	for _, c := range []struct {
		name   string
		agent  int64
		up     *upstream
		cred   string
		user   string
		groups []string
		uid    string
		extra  map[string][]string
	}{
		{"pat, access_as user", a.ID, up, bearer("pat", a.ID, pat), "gitlab:user:alice",
			[]string{"gitlab:user", "gitlab:group:grp/devs"}, "",
			map[string][]string{"agent.gitlab.com/id": {agentID}, "agent.gitlab.com/username": {"alice"},
				"agent.gitlab.com/access_type": {"personal_access_token"}, "agent.gitlab.com/config_project_id": {"1"}}},
		{"pat, access_as agent", asAgent.ID, upAgent, bearer("pat", asAgent.ID, pat), "", nil, "", nil},
		{"ci job, access_as impersonate", a.ID, up, bearer("ci", a.ID, ciApp), "deployer",
			[]string{"deployers"}, "42", map[string][]string{"acme.com/reason": {"ci", "deploy"}}},
		{"ci job granted, access_as ci_job", a.ID, up, bearer("ci", a.ID, ciGranted), "gitlab:ci_job:1002",
			[]string{"gitlab:ci_job", "gitlab:project:21", "gitlab:group:other", "gitlab:group_env_tier:other:production",
				"gitlab:project_env:21:prod", "gitlab:project_env_tier:21:production"}, "",
			map[string][]string{"agent.gitlab.com/id": {agentID}, "agent.gitlab.com/config_project_id": {"1"},
				"agent.gitlab.com/project_id": {"21"}, "agent.gitlab.com/ci_pipeline_id": {"77"}, "agent.gitlab.com/ci_job_id": {"1002"},
				"agent.gitlab.com/username": {"runner"}, "agent.gitlab.com/environment_slug": {"prod"},
				"agent.gitlab.com/environment_tier": {"production"}}},
		{"ci job of the agent's project, access_as agent", a.ID, up, bearer("ci", a.ID, ciOwn), "", nil, "", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, body := do(t, "GET", n.ProxyURL+"api", auth(c.cred), nil)
			if resp.StatusCode != 200 {
				t.Fatalf("answered %d %s", resp.StatusCode, body)
			}
			h := c.up.last(t).header
			if got := h.Get("Impersonate-User"); got != c.user {
				t.Errorf("Impersonate-User %q, want %q", got, c.user)
			}
			if got := h.Values("Impersonate-Group"); !slices.Equal(got, c.groups) {
				t.Errorf("Impersonate-Group %q, want %q", got, c.groups)
			}
			if got := h.Get("Impersonate-Uid"); got != c.uid {
				t.Errorf("Impersonate-Uid %q, want %q", got, c.uid)
			}
			extra := map[string][]string{}
			for k, vs := range h {
				if rest, ok := strings.CutPrefix(k, impersonation.ExtraHeaderPrefix); ok {
					key, err := urlUnescape(strings.ToLower(rest))
					if err != nil {
						t.Fatal(err)
					}
					extra[key] = vs
				}
			}
			if len(extra) != len(c.extra) {
				t.Errorf("extras %v, want %v", extra, c.extra)
			}
			for k, v := range c.extra {
				if !slices.Equal(extra[k], v) {
					t.Errorf("extra %s = %q, want %q", k, extra[k], v)
				}
			}
		})
	}
}

// The browser mode: the _gitlab_kas cookie with Gitlab-Agent-Id (or the
// query parameter), and X-Csrf-Token on unsafe methods.
func TestCookieAndCSRF(t *testing.T) {
	w := newWorld(t)
	n := w.node(t, "node-a")
	a, up := w.agent(t, n, "a", "user_access:\n  access_as: {user: {}}\n  groups: [{id: grp/devs}]\n")
	cookie, csrf := w.session(t)
	id := strconv.FormatInt(a.ID, 10)
	base := http.Header{"Cookie": {"_gitlab_kas=" + cookie + "; other=1"}, "Gitlab-Agent-Id": {id}}
	with := func(kv ...string) http.Header {
		h := base.Clone()
		for i := 0; i < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}

	resp, body := do(t, "GET", n.ProxyURL+"api/v1/pods", base, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("GET with cookie: %d %s", resp.StatusCode, body)
	}
	if s := up.last(t); s.header.Get("Impersonate-User") != "gitlab:user:bob" || s.header.Get("Cookie") != "" {
		t.Errorf("upstream Impersonate-User %q, Cookie %q", s.header.Get("Impersonate-User"), s.header.Get("Cookie"))
	}
	resp, body = do(t, "GET", n.ProxyURL+"api/v1/pods?gitlab-agent-id="+id, http.Header{"Cookie": base["Cookie"]}, nil)
	if resp.StatusCode != 200 {
		t.Errorf("GET with the agent in the query: %d %s", resp.StatusCode, body)
	} else if s := up.last(t); strings.Contains(s.query, "gitlab-agent-id") {
		t.Errorf("upstream query %q", s.query)
	}

	resp, body = do(t, "POST", n.ProxyURL+"api/v1/namespaces/default/pods", base, strings.NewReader("{}"))
	wantStatus(t, resp, body, 403, metav1.StatusReasonForbidden, "X-Csrf-Token")
	resp, body = do(t, "POST", n.ProxyURL+"api/v1/namespaces/default/pods", with("X-Csrf-Token", "kascsrf_wrong"), strings.NewReader("{}"))
	wantStatus(t, resp, body, 403, metav1.StatusReasonForbidden, "X-Csrf-Token")
	up.none(t)
	resp, body = do(t, "POST", n.ProxyURL+"api/v1/namespaces/default/pods", with("X-Csrf-Token", csrf), strings.NewReader("{}"))
	if resp.StatusCode != 200 {
		t.Fatalf("POST with CSRF: %d %s", resp.StatusCode, body)
	}
	if s := up.last(t); s.method != "POST" || s.header.Get("X-Csrf-Token") != "" {
		t.Errorf("upstream got %s with X-Csrf-Token %q", s.method, s.header.Get("X-Csrf-Token"))
	}
	resp, body = do(t, "DELETE", n.ProxyURL+"api/v1/namespaces/default/pods/p?gitlab-csrf-token="+csrf, base, nil)
	if resp.StatusCode != 200 {
		t.Errorf("DELETE with the CSRF token in the query: %d %s", resp.StatusCode, body)
	} else if s := up.last(t); strings.Contains(s.query, "csrf") {
		t.Errorf("upstream query %q", s.query)
	}
	// An Authorization header wins over the cookie.
	resp, body = do(t, "GET", n.ProxyURL+"api", with("Authorization", bearer("pat", a.ID, "kaspat_1_"+strings.Repeat("A", 43))), nil)
	wantStatus(t, resp, body, 401, metav1.StatusReasonUnauthorized, "invalid access token")
}

// Decisions are cached for at most 60 s (allowed) and 10 s (refused): a
// revoked token works until its cached allowance ends, then is refused,
// and the refusal is cached too.
func TestDecisionCacheBoundsRevocation(t *testing.T) {
	w := newWorld(t)
	n := w.node(t, "node-a")
	a, _ := w.agent(t, n, "a", "")
	pat, patID := w.pat(t, a.ID)
	h := auth(bearer("pat", a.ID, pat))
	get := func() (*http.Response, string) { return do(t, "GET", n.ProxyURL+"api", h, nil) }
	stats := func() (hits, misses float64) {
		return n.Metric(t, "proxy_auth_total", "result", "hit"), n.Metric(t, "proxy_auth_total", "result", "miss")
	}
	wantStats := func(hits, misses float64) {
		t.Helper()
		if h, m := stats(); h != hits || m != misses {
			t.Errorf("auth cache hits %v misses %v, want %v and %v", h, m, hits, misses)
		}
	}

	if resp, body := get(); resp.StatusCode != 200 {
		t.Fatalf("answered %d %s", resp.StatusCode, body)
	}
	wantStats(0, 1)
	if resp, _ := get(); resp.StatusCode != 200 {
		t.Fatalf("answered %d", resp.StatusCode)
	}
	wantStats(1, 1)

	if _, err := w.env.Credentials.RevokeAccessToken(context.Background(), &mgmtv1.RevokeAccessTokenRequest{TokenId: patID}); err != nil {
		t.Fatal(err)
	}
	w.clock.Advance(59 * time.Second)
	if resp, _ := get(); resp.StatusCode != 200 {
		t.Errorf("within the allow TTL: %d, want the cached allowance", resp.StatusCode)
	}
	wantStats(2, 1)
	w.clock.Advance(time.Second) // 60 s: the allowance is over
	resp, body := get()
	wantStatus(t, resp, body, 401, metav1.StatusReasonUnauthorized, "invalid access token")
	wantStats(2, 2)
	w.clock.Advance(9 * time.Second)
	resp, body = get()
	wantStatus(t, resp, body, 401, metav1.StatusReasonUnauthorized, "invalid access token")
	wantStats(3, 2)
	w.clock.Advance(time.Second) // 10 s: the refusal is asked again
	resp, body = get()
	wantStatus(t, resp, body, 401, metav1.StatusReasonUnauthorized, "invalid access token")
	wantStats(3, 3)
	if e := n.Metric(t, "proxy_auth_cache_entries"); e != 1 {
		t.Errorf("cache entries %v, want 1", e)
	}
}

// Concurrent requests with a credential not yet cached make one call.
func TestConcurrentMissesShareOneCall(t *testing.T) {
	w := newWorld(t)
	n := w.node(t, "node-a")
	a, _ := w.agent(t, n, "a", "")
	pat, _ := w.pat(t, a.ID)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if resp, body := do(t, "GET", n.ProxyURL+"api", auth(bearer("pat", a.ID, pat)), nil); resp.StatusCode != 200 {
				t.Errorf("answered %d %s", resp.StatusCode, body)
			}
		})
	}
	wg.Wait()
	if calls := n.Metric(t, "proxy_auth_total", "result", "miss"); calls != 1 {
		t.Errorf("%v calls to the control plane, want 1", calls)
	}
	hits, shared := n.Metric(t, "proxy_auth_total", "result", "hit"), n.Metric(t, "proxy_auth_total", "result", "shared")
	if hits+shared != 15 {
		t.Errorf("hits %v + shared %v, want 15", hits, shared)
	}
}

// A control plane that cannot be reached gives 503, and nothing cached.
func TestControlPlaneUnavailable(t *testing.T) {
	w := newWorld(t)
	cp := framework.ProxyTo(t, strings.TrimPrefix(w.env.URL, "http://"))
	n := w.node(t, "node-a", func(o *dataplane.Options) { o.ControlPlaneURL = "http://" + cp.Addr() })
	a, _ := w.agent(t, n, "a", "")
	pat, _ := w.pat(t, a.ID)
	cp.Down()
	resp, body := do(t, "GET", n.ProxyURL+"api", auth(bearer("pat", a.ID, pat)), nil)
	wantStatus(t, resp, body, 503, metav1.StatusReasonServiceUnavailable, "control plane is unavailable")
	cp.Up()
	if resp, body := do(t, "GET", n.ProxyURL+"api", auth(bearer("pat", a.ID, pat)), nil); resp.StatusCode != 200 {
		t.Errorf("after the control plane is back: %d %s", resp.StatusCode, body)
	}
}

// A watch's events reach the caller one by one, as the API server sends
// them: the first arrives before the upstream even writes the second.
func TestWatchEventsAreFlushedAtOnce(t *testing.T) {
	w := newWorld(t)
	nodes := []*framework.ProxyNode{w.node(t, "node-a"), w.node(t, "node-b")}
	a, up := w.agent(t, nodes[0], "a", "")
	pat, _ := w.pat(t, a.ID)
	for _, n := range nodes { // local, then relayed
		t.Run(n.ID, func(t *testing.T) {
			ctx, cancel := context.WithCancel(framework.Context(t))
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", n.ProxyURL+"watch", nil)
			req.Header.Set("Authorization", bearer("pat", a.ID, pat))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			up.last(t)
			br := bufio.NewReader(resp.Body)
			for i := 1; i <= 3; i++ {
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatalf("event %d: %v", i, err)
				}
				if want := fmt.Sprintf("{\"type\":\"ADDED\",\"n\":%d}\n", i); line != want {
					t.Fatalf("event %d = %q, want %q", i, line, want)
				}
				up.release <- struct{}{} // only now does the upstream write the next
			}
		})
	}
}

// A 101 Switching Protocols turns the connection into an opaque pipe,
// through the node's own tunnel and through a relay.
func TestUpgradeLocalAndRelayed(t *testing.T) {
	w := newWorld(t)
	nodes := []*framework.ProxyNode{w.node(t, "node-a"), w.node(t, "node-b")}
	a, up := w.agent(t, nodes[0], "a", "")
	pat, _ := w.pat(t, a.ID)
	for _, n := range nodes {
		t.Run(n.ID, func(t *testing.T) {
			conn, br := rawUpgrade(t, n.ProxyAddr, "/k8s-proxy/upgrade", "Authorization: "+bearer("pat", a.ID, pat),
				"Impersonate-User: system:admin")
			s := up.last(t)
			if s.header.Get("Upgrade") != "kas-test" || s.header.Get("Authorization") != "" || s.header.Get("Impersonate-User") != "gitlab:user:alice" {
				t.Errorf("upstream headers %v", s.header)
			}
			msg := strings.Repeat("opaque bytes \x00\xff ", 1000)
			go io.WriteString(conn, msg)
			buf := make([]byte, len(msg))
			if _, err := io.ReadFull(br, buf); err != nil || string(buf) != msg {
				t.Fatalf("echo: %v (%d bytes)", err, len(buf))
			}
		})
	}
	if r := nodes[1].Metric(t, "agent_dials_total", "result", "relay"); r < 1 {
		t.Errorf("node-b relayed %v dials", r)
	}
}

// Stopping a node cuts upgraded streams still open after the drain: it
// does not wait for them forever.
func TestStopCutsUpgradedStreams(t *testing.T) {
	w := newWorld(t)
	n := w.node(t, "node-a", func(o *dataplane.Options) { o.DrainGrace = 500 * time.Millisecond })
	b := w.node(t, "node-b")
	a, _ := w.agent(t, b, "a", "")
	pat, _ := w.pat(t, a.ID)
	conn, br := rawUpgrade(t, n.ProxyAddr, "/k8s-proxy/upgrade", "Authorization: "+bearer("pat", a.ID, pat))
	if _, err := framework.ReadUpgraded(struct {
		io.Reader
		io.Writer
	}{br, conn}, "ping"); err != nil {
		t.Fatal(err)
	}
	n.Stop(t) // returns: the relayed stream does not hold the node
	if _, err := br.ReadByte(); err == nil {
		t.Errorf("the upgraded connection still delivers data after the node stopped")
	}
}
