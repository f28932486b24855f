package agent

import (
	"bufio"
	"context"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/kas-project/kas/internal/impersonation"
)

// seen is what the fake Kubernetes API server received.
type seen struct {
	method, path, query string
	header              http.Header
	body                string
}

func TestForwardsRequestsWithTheAgentsCredentials(t *testing.T) {
	got := make(chan seen, 1)
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Clone(), string(b)}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Upstream", "yes")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"kind":"Pod"}`)
	}), func(o *Options, n *fakeNode) { o.Tunnels = 1 })

	a := h.node.next(t)
	if a.tunnel == nil {
		t.Fatalf("handshake answered %d", a.status)
	}
	for k, want := range map[string]string{
		"Authorization":          "Bearer " + testToken, // trimmed from the file
		AgentVersionHeader:       "v1.2.3-test",
		"Sec-Websocket-Protocol": "kas.tunnel.v1",
	} {
		if v := a.header.Get(k); v != want {
			t.Errorf("handshake header %s = %q, want %q", k, v, want)
		}
	}
	waitTunnels(t, h.a, 1)
	if ns := h.a.Nodes(); !slices.Equal(ns, []string{"node-a"}) {
		t.Errorf("Nodes() = %v, want [node-a] from %s", ns, NodeIDHeader)
	}

	req, _ := http.NewRequest("POST", "http://agent/api/v1/namespaces/default/pods?fieldSelector=a%3Db&dryRun=All", strings.NewReader("hello"))
	for k, v := range map[string]string{
		"Authorization":            "Bearer caller-token",
		"Cookie":                   "_gitlab_kas=session",
		"Impersonate-User":         "admin",
		"Impersonate-Group":        "system:masters",
		"Impersonate-Uid":          "1",
		"Impersonate-Extra-Scopes": "all",
		"X-Custom":                 "kept",
		"Accept":                   "application/json;as=Table",
		"Connection":               "X-Hop",
		"X-Hop":                    "dropped",
	} {
		req.Header.Set(k, v)
	}
	resp, err := a.tunnel.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("X-Upstream") != "yes" || string(body) != `{"kind":"Pod"}` {
		t.Errorf("response = %d %v %q", resp.StatusCode, resp.Header, body)
	}

	s := <-got
	if s.method != "POST" || s.path != "/api/v1/namespaces/default/pods" || s.query != "fieldSelector=a%3Db&dryRun=All" || s.body != "hello" {
		t.Errorf("upstream got %s %s?%s body %q", s.method, s.path, s.query, s.body)
	}
	if v := s.header.Get("Authorization"); v != "Bearer agent-sa-token" {
		t.Errorf("upstream Authorization = %q, want the agent's own token", v)
	}
	for k := range s.header {
		if k == "Cookie" || k == "X-Hop" || strings.HasPrefix(k, "Impersonate-") {
			t.Errorf("upstream got header %s: %q", k, s.header[k])
		}
	}
	if ae := s.header.Get("Accept-Encoding"); ae != "" {
		t.Errorf("upstream got Accept-Encoding %q the caller never sent", ae)
	}
	if s.header.Get("X-Custom") != "kept" || s.header.Get("Accept") != "application/json;as=Table" {
		t.Errorf("end-to-end headers lost: %v", s.header)
	}
	for _, want := range []string{`"msg":"tunnel connected"`, `"tunnel_id":1`, `"node_id":"node-a"`, `"agent_id":42`} {
		if !strings.Contains(h.logs.String(), want) {
			t.Errorf("logs lack %s:\n%s", want, h.logs.String())
		}
	}
	if strings.Contains(h.logs.String(), testToken) || strings.Contains(h.logs.String(), "abcdefghijklmnop") {
		t.Errorf("the agent token was logged:\n%s", h.logs.String())
	}
}

func TestStreamsBodiesWithoutBuffering(t *testing.T) {
	readFirst := make(chan struct{})    // the test read the first response chunk
	requestLine := make(chan string, 2) // lines of the request body, as the upstream reads them
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f := w.(http.Flusher)
		http.NewResponseController(w).EnableFullDuplex()
		br := bufio.NewReader(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		for i := 1; ; i++ {
			line, err := br.ReadString('\n')
			if err != nil {
				break
			}
			requestLine <- line
			fmt.Fprintf(w, "{\"type\":\"ADDED\",\"n\":%d}\n", i)
			f.Flush()
			if i == 1 {
				<-readFirst // the first chunk reached the caller before the second is written
			}
		}
	}), func(o *Options, n *fakeNode) { o.Tunnels = 1 })
	nt := h.node.nextTunnel(t)

	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", "http://agent/api/v1/pods?watch=1", pr)
	respc := make(chan *http.Response, 1)
	go func() {
		resp, err := nt.client().Do(req)
		if err != nil {
			t.Error(err)
			close(respc)
			return
		}
		respc <- resp
	}()
	io.WriteString(pw, "first\n")
	if l := <-requestLine; l != "first\n" { // the request body streams too
		t.Fatalf("upstream read %q", l)
	}
	resp := <-respc
	if resp == nil {
		t.FailNow()
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if l, err := br.ReadString('\n'); err != nil || l != "{\"type\":\"ADDED\",\"n\":1}\n" {
		t.Fatalf("first chunk = %q, %v", l, err)
	}
	close(readFirst)
	io.WriteString(pw, "second\n")
	if l := <-requestLine; l != "second\n" {
		t.Fatalf("upstream read %q", l)
	}
	if l, err := br.ReadString('\n'); err != nil || l != "{\"type\":\"ADDED\",\"n\":2}\n" {
		t.Fatalf("second chunk = %q, %v", l, err)
	}
	pw.Close()
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Errorf("after the last chunk: %q, %v", rest, err)
	}
}

func TestRelaysProtocolUpgrades(t *testing.T) {
	got := make(chan seen, 1)
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{method: r.Method, path: r.URL.Path, query: r.URL.RawQuery, header: r.Header.Clone()}
		if r.Header.Get("Upgrade") != "SPDY/3.1" {
			http.Error(w, "upgrade required", http.StatusBadRequest)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\nhello from the API server\n")
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			io.WriteString(c, strings.ToUpper(line))
		}
	}), func(o *Options, n *fakeNode) { o.Tunnels = 1 })
	nt := h.node.nextTunnel(t)

	st, err := nt.sess.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	io.WriteString(st, "POST /api/v1/namespaces/default/pods/p/exec?command=sh&stdin=true HTTP/1.1\r\n"+
		"Host: agent\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n"+
		"Authorization: Bearer caller\r\nImpersonate-User: admin\r\n\r\n")
	br := bufio.NewReader(st)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "SPDY/3.1" {
		t.Fatalf("response = %s %v", resp.Status, resp.Header)
	}
	if l, err := br.ReadString('\n'); err != nil || l != "hello from the API server\n" {
		t.Fatalf("first bytes after 101 = %q, %v", l, err)
	}
	for _, msg := range []string{"ls\n", "exit\n"} {
		io.WriteString(st, msg)
		if l, err := br.ReadString('\n'); err != nil || l != strings.ToUpper(msg) {
			t.Fatalf("echo of %q = %q, %v", msg, l, err)
		}
	}
	s := <-got
	if s.path != "/api/v1/namespaces/default/pods/p/exec" || s.query != "command=sh&stdin=true" ||
		s.header.Get("X-Stream-Protocol-Version") != "v4.channel.k8s.io" {
		t.Errorf("upstream got %s?%s %v", s.path, s.query, s.header)
	}
	if s.header.Get("Authorization") != "Bearer agent-sa-token" || s.header.Get("Impersonate-User") != "" {
		t.Errorf("upgrade request credentials: Authorization %q, Impersonate-User %q",
			s.header.Get("Authorization"), s.header.Get("Impersonate-User"))
	}
}

func TestUnreachableAPIServerIsAStatus(t *testing.T) {
	up := httptest.NewServer(http.NotFoundHandler())
	up.Close() // nothing listens there any more
	node := newFakeNode(t, false)
	o, _, _ := baseOptions(t, node, up.URL)
	o.Tunnels = 1
	start(t, o)
	nt := node.nextTunnel(t)
	resp, err := nt.client().Get("http://agent/api/v1/pods")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("Content-Type") != "application/json" ||
		!strings.Contains(string(body), `"kind":"Status"`) || !strings.Contains(string(body), `"code":502`) {
		t.Errorf("response = %d %q", resp.StatusCode, body)
	}
}

func TestApplyImpersonationStripsCallerCredentials(t *testing.T) {
	req := httptest.NewRequest("GET", "/", nil)
	req.Header = http.Header{
		"Authorization":             {"Bearer x"},
		"Cookie":                    {"a=b"},
		"Impersonate-User":          {"u"},
		"Impersonate-Extra-Foo":     {"f"},
		"impersonate-group":         {"g"}, // not canonical: still removed
		"kas-impersonation":         {"e30"},
		"Accept":                    {"*/*"},
		"X-Impersonate-Something":   {"kept"},
		"Impersonation-Is-A-Prefix": {"kept"},
	}
	applyImpersonation(req, impersonation.Identity{})
	var keys []string
	for k := range req.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if want := []string{"Accept", "Impersonation-Is-A-Prefix", "X-Impersonate-Something"}; !slices.Equal(keys, want) {
		t.Errorf("headers left = %v, want %v", keys, want)
	}
}

// The node's Kas-Impersonation header becomes Kubernetes impersonation
// headers next to the agent's own token; the caller's own attempts are gone.
func TestImpersonatesWhomTheNodeSays(t *testing.T) {
	got := make(chan http.Header, 1)
	h := newHarness(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
		io.WriteString(w, "ok")
	}), func(o *Options, n *fakeNode) { o.Tunnels = 1 })
	a := h.node.next(t)
	if a.tunnel == nil {
		t.Fatalf("handshake answered %d", a.status)
	}
	id := impersonation.Identity{
		Username: "gitlab:user:alice",
		Groups:   []string{"gitlab:user", "gitlab:group:platform"},
		UID:      "42",
		Extra: map[string][]string{
			"agent.gitlab.com/id":         {"7"},
			"agent.gitlab.com/weird key%": {"a", "b"},
		},
	}
	enc, err := impersonation.Encode(id)
	if err != nil {
		t.Fatal(err)
	}
	do := func(value ...string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://agent/api/v1/pods", nil)
		req.Header.Set("Authorization", "Bearer caller")
		req.Header.Set("Impersonate-User", "system:admin")
		req.Header.Add("Impersonate-Group", "system:masters")
		for _, v := range value {
			req.Header.Add(impersonation.Header, v)
		}
		resp, err := a.tunnel.client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}

	resp, body := do(enc)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("answered %d %s", resp.StatusCode, body)
	}
	hdr := <-got
	want := http.Header{
		"Impersonate-User":  {"gitlab:user:alice"},
		"Impersonate-Group": {"gitlab:user", "gitlab:group:platform"},
		"Impersonate-Uid":   {"42"},
		// Canonicalised by net/http; the API server lower-cases and
		// unescapes the key.
		"Impersonate-Extra-Agent.gitlab.com%2fid":             {"7"},
		"Impersonate-Extra-Agent.gitlab.com%2fweird%20key%25": {"a", "b"},
	}
	for k, v := range want {
		if !slices.Equal(hdr.Values(k), v) {
			t.Errorf("upstream %s = %q, want %q", k, hdr.Values(k), v)
		}
	}
	for k := range hdr {
		if impersonation.IsImpersonateHeader(k) && want[k] == nil {
			t.Errorf("upstream got unexpected %s: %q", k, hdr[k])
		}
	}
	if hdr.Get("Authorization") != "Bearer agent-sa-token" || hdr.Get(impersonation.Header) != "" {
		t.Errorf("upstream Authorization %q, %s %q", hdr.Get("Authorization"), impersonation.Header, hdr.Get(impersonation.Header))
	}

	// An identity that names nobody: the agent acts as itself.
	empty, _ := impersonation.Encode(impersonation.Identity{})
	if resp, body := do(empty); resp.StatusCode != http.StatusOK {
		t.Fatalf("empty identity answered %d %s", resp.StatusCode, body)
	}
	hdr = <-got
	for k := range hdr {
		if impersonation.IsImpersonateHeader(k) {
			t.Errorf("empty identity: upstream got %s", k)
		}
	}

	// Garbage, or two headers, never reaches the API server.
	for _, bad := range [][]string{{"!!not base64"}, {enc, enc}, {"e30x"}} {
		resp, body := do(bad...)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `"reason":"BadRequest"`) {
			t.Errorf("header %q answered %d %s, want a 400 Status", bad, resp.StatusCode, body)
		}
	}
	select {
	case hdr := <-got:
		t.Errorf("a bad impersonation header reached the API server: %v", hdr)
	default:
	}
}

// A real API server speaks HTTP/2 over TLS. Plain requests may use it;
// upgrades must go over HTTP/1.1.
func TestTLSAPIServerHTTP2AndUpgrades(t *testing.T) {
	protos := make(chan string, 2)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		protos <- r.Proto
		if r.Header.Get("Authorization") != "Bearer agent-sa-token" {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		if r.Header.Get("Upgrade") == "" {
			io.WriteString(w, "plain")
			return
		}
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack over %s: %v", r.Proto, err)
			return
		}
		defer c.Close()
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nupgraded\n")
	}))
	up.EnableHTTP2 = true
	up.StartTLS()
	t.Cleanup(up.Close)
	node := newFakeNode(t, false)
	o, _, _ := baseOptions(t, node, up.URL)
	o.Tunnels = 1
	o.KubeCAFile = writeFile(t, "api-ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.Certificate().Raw})))
	start(t, o)
	nt := node.nextTunnel(t)

	if got := get(t, nt, "/api"); got != "plain" {
		t.Fatalf("GET = %q", got)
	}
	if p := <-protos; p != "HTTP/2.0" {
		t.Errorf("plain request went over %s, want HTTP/2.0", p)
	}

	st, err := nt.sess.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	io.WriteString(st, "GET /api/v1/namespaces/default/pods/p/exec HTTP/1.1\r\nHost: agent\r\n"+
		"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"+
		"Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n")
	br := bufio.NewReader(st)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade answered %s", resp.Status)
	}
	if l, err := br.ReadString('\n'); err != nil || l != "upgraded\n" {
		t.Errorf("after 101: %q, %v", l, err)
	}
	if p := <-protos; p != "HTTP/1.1" {
		t.Errorf("upgrade went over %s, want HTTP/1.1", p)
	}
}
