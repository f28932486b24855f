package proxy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kas-project/kas/agent"
	"github.com/kas-project/kas/dataplane"
	mgmtv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/internal/cptest"
	"github.com/kas-project/kas/internal/kascookie"
	"github.com/kas-project/kas/tests/framework"
)

// clock is the proxy's injected clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// seen is a request as the Kubernetes API server behind agentk got it.
type seen struct {
	method, path, query string
	header              http.Header
}

// upstream is a fake Kubernetes API server that records what it gets:
//
//   - /watch writes one event, then the next each time release is sent;
//   - /upgrade switches to "kas-test" and echoes bytes;
//   - /cors answers like an API server with CORS of its own
//     (Access-Control-* headers and Vary: Accept-Encoding);
//   - anything else answers a small JSON object naming the agent.
type upstream struct {
	*httptest.Server
	agentID int64
	seen    chan seen
	release chan struct{}
}

func newUpstream(t testing.TB, agentID int64) *upstream {
	t.Helper()
	u := &upstream{agentID: agentID, seen: make(chan seen, 100), release: make(chan struct{})}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.seen <- seen{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Clone()}
		w.Header().Set(framework.AgentHeader, fmt.Sprint(agentID))
		switch r.URL.Path {
		case "/watch":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			for i := 1; ; i++ {
				fmt.Fprintf(w, "{\"type\":\"ADDED\",\"n\":%d}\n", i)
				w.(http.Flusher).Flush()
				select {
				case <-u.release:
				case <-r.Context().Done():
					return
				}
			}
		case "/upgrade":
			if r.Header.Get("Upgrade") != "kas-test" {
				http.Error(w, "want Upgrade: kas-test", http.StatusBadRequest)
				return
			}
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: kas-test\r\nConnection: Upgrade\r\n\r\n")
			brw.Flush()
			io.Copy(conn, brw)
		case "/cors":
			h := w.Header()
			h.Set("Access-Control-Allow-Origin", "*")
			h.Set("Access-Control-Allow-Credentials", "false")
			h.Set("Access-Control-Allow-Methods", "TRACE")
			h.Set("Access-Control-Expose-Headers", "X-Secret")
			h.Set("access-control-max-age", "1")
			h.Set("Vary", "Accept-Encoding")
			h.Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"agent":%d,"path":%q}`, agentID, r.URL.Path)
		default:
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"agent":%d,"path":%q}`, agentID, r.URL.Path)
		}
	}))
	t.Cleanup(u.Close)
	return u
}

// last returns the request the upstream saw most recently; it fails the
// test when there is none.
func (u *upstream) last(t testing.TB) seen {
	t.Helper()
	select {
	case s := <-u.seen:
		return s
	case <-time.After(framework.Guard):
		t.Fatal("the upstream saw no request")
		return seen{}
	}
}

// none checks that the upstream saw no request.
func (u *upstream) none(t testing.TB) {
	t.Helper()
	select {
	case s := <-u.seen:
		t.Errorf("the upstream saw %s %s", s.method, s.path)
	default:
	}
}

// world is a control plane, proxy nodes and agents behind them.
type world struct {
	env   *cptest.Env
	clock *clock
}

func newWorld(t testing.TB) *world {
	return &world{env: framework.StartControlPlane(t), clock: newClock()}
}

func (w *world) node(t testing.TB, id string, modify ...func(*dataplane.Options)) *framework.ProxyNode {
	t.Helper()
	return framework.StartProxyNode(t, w.env, id, append([]func(*dataplane.Options){func(o *dataplane.Options) {
		o.KubernetesAPI.Clock = w.clock.Now
	}}, modify...)...)
}

// agent registers an agent, puts its configuration (unless empty) and
// runs agentk on the node in front of a new upstream.
func (w *world) agent(t testing.TB, n *framework.ProxyNode, name, config string) (framework.AgentCreds, *upstream) {
	t.Helper()
	creds := framework.CreateAgent(t, w.env, name)
	if config != "" {
		if _, err := w.env.Agents.PutAgentConfig(context.Background(), &mgmtv1.PutAgentConfigRequest{AgentId: creds.ID, Yaml: config}); err != nil {
			t.Fatal(err)
		}
	}
	up := newUpstream(t, creds.ID)
	framework.StartAgent(t, creds, n.AgentURL, 1, func(o *agent.Options) { o.KubeAPIURL = up.URL })
	framework.WaitRouted(t, w.env, creds.ID, n.ID)
	return creds, up
}

// pat mints an access token for user alice (groups grp/devs) granted the
// agents, and returns its secret with its ID.
func (w *world) pat(t testing.TB, agents ...int64) (string, int64) {
	t.Helper()
	resp, err := w.env.Credentials.CreateAccessToken(context.Background(), &mgmtv1.CreateAccessTokenRequest{
		User:      &mgmtv1.UserIdentity{Id: 1, Username: "alice", Groups: []string{"grp/devs"}},
		AgentIds:  agents,
		ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)),
		Name:      "test",
	})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetSecret(), resp.GetToken().GetId()
}

// ciToken mints a CI job token for job, granted the agents.
func (w *world) ciToken(t testing.TB, job *mgmtv1.CIJob, agents ...int64) string {
	t.Helper()
	resp, err := w.env.Credentials.CreateCIJobToken(context.Background(), &mgmtv1.CreateCIJobTokenRequest{
		Job: job, AgentIds: agents, ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetSecret()
}

// session creates a browser session for user bob (member of grp/devs) and
// returns its _gitlab_kas cookie value and CSRF token.
func (w *world) session(t testing.TB, agents ...int64) (cookie, csrf string) {
	t.Helper()
	resp, err := w.env.Credentials.CreateSession(context.Background(), &mgmtv1.CreateSessionRequest{
		User:       &mgmtv1.UserIdentity{Id: 2, Username: "bob", Groups: []string{"grp/devs"}},
		AgentIds:   agents,
		ExpiresAt:  timestamppb.New(time.Now().Add(time.Hour)),
		GroupPaths: []string{"grp/devs"},
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := kascookie.Encrypt(w.env.APIKey, resp.GetSessionId())
	if err != nil {
		t.Fatal(err)
	}
	return c, resp.GetCsrfToken()
}

func bearer(kind string, agentID int64, secret string) string {
	return fmt.Sprintf("Bearer %s:%d:%s", kind, agentID, secret)
}

// do sends a request to the proxy at base (its URL with the prefix) and
// returns the response with its body read.
func do(t testing.TB, method, url string, header http.Header, body io.Reader) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(framework.Context(t), method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// auth is a header with one Authorization value.
func auth(v string) http.Header { return http.Header{"Authorization": {v}} }

// wantStatus checks that a response is a Kubernetes Status with code and
// a message containing msg.
func wantStatus(t testing.TB, resp *http.Response, body string, code int, reason metav1.StatusReason, msg string) {
	t.Helper()
	if resp.StatusCode != code {
		t.Errorf("answered %d, want %d: %s", resp.StatusCode, code, body)
		return
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var st metav1.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Errorf("body is not a Status: %v: %s", err, body)
		return
	}
	if st.APIVersion != "v1" || st.Kind != "Status" || st.Status != metav1.StatusFailure || st.Code != int32(code) || st.Reason != reason {
		t.Errorf("Status = %+v, want v1 Status Failure code %d reason %s", st, code, reason)
	}
	if !strings.Contains(st.Message, msg) {
		t.Errorf("Status message %q lacks %q", st.Message, msg)
	}
	if wh := resp.Header.Get("Warning"); !strings.HasPrefix(wh, "299 ") || !strings.Contains(wh, msg) {
		t.Errorf("Warning header %q does not repeat the message", wh)
	}
}

// rawUpgrade opens a connection to addr, sends an upgrade request for
// path with header lines, and returns the connection after the 101.
func rawUpgrade(t testing.TB, addr, path string, header ...string) (io.ReadWriteCloser, *bufio.Reader) {
	t.Helper()
	var d net.Dialer
	conn, err := d.DialContext(framework.Context(t), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(framework.Guard))
	req := "GET " + path + " HTTP/1.1\r\nHost: kas\r\nConnection: Upgrade\r\nUpgrade: kas-test\r\n"
	for _, h := range header {
		req += h + "\r\n"
	}
	if _, err := io.WriteString(conn, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("upgrade answered %s: %s", resp.Status, b)
	}
	return conn, br
}

func urlUnescape(s string) (string, error) { return url.PathUnescape(s) }
