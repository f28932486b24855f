package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// These tests use real loopback WebSockets, so they wait by polling
// (waitFor) where the pipe tests use synctest.

const testToken = "s3cret"

// wsNode is an httptest server whose handler runs tunnel.Accept, checking
// the bearer token, and hands each session to accepted.
type wsNode struct {
	srv      *httptest.Server
	sessions chan *Session
	errs     chan error
}

func newWSNode(t testing.TB, tlsServer bool, cfg Config) *wsNode {
	t.Helper()
	n := startWSNode(tlsServer, cfg)
	t.Cleanup(n.srv.Close)
	return n
}

// startWSNode is newWSNode for callers that close the server themselves.
func startWSNode(tlsServer bool, cfg Config) *wsNode {
	n := &wsNode{sessions: make(chan *Session, 64), errs: make(chan error, 64)}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, err := Accept(w, r, AcceptOptions{
			Config: cfg,
			Authorize: func(r *http.Request) error {
				switch tok, ok := BearerToken(r); {
				case !ok:
					return errors.New("no token")
				case tok == "forbidden":
					return &HTTPError{Status: http.StatusForbidden, Message: "agent disabled"}
				case tok != testToken:
					return errors.New("wrong token")
				}
				return nil
			},
		})
		if err != nil {
			n.errs <- err
			return
		}
		n.sessions <- s
	})
	if tlsServer {
		n.srv = httptest.NewTLSServer(h)
	} else {
		n.srv = httptest.NewServer(h)
	}
	return n
}

func (n *wsNode) url() string { return "ws" + strings.TrimPrefix(n.srv.URL, "http") }

func bearer(tok string) http.Header {
	return http.Header{"Authorization": {"Bearer " + tok}}
}

// dialPair dials the node and returns both ends; both close with the test.
func (n *wsNode) dialPair(t testing.TB, opts DialOptions) (node, agent *Session) {
	t.Helper()
	agent, err := Dial(t.Context(), n.url(), bearer(testToken), opts)
	if err != nil {
		t.Fatal(err)
	}
	node = <-n.sessions
	t.Cleanup(func() {
		node.Close()
		agent.Close()
	})
	return node, agent
}

func TestWebSocketEchoManyStreams(t *testing.T) {
	n := newWSNode(t, false, Config{})
	node, agent := n.dialPair(t, DialOptions{})
	serveEcho(t, agent)
	echoManyStreams(t, node, 32, 300<<10)
	waitFor(t, "streams to end", func() bool { return node.NumStreams() == 0 && agent.NumStreams() == 0 })
	if ns, as := node.Stats(), agent.Stats(); ns.StreamsOpened != 32 || as.StreamsAccepted != 32 || ns.BytesOut != as.BytesIn || as.BytesOut != ns.BytesIn {
		t.Errorf("stats: node %+v, agent %+v", ns, as)
	}
}

// Big writes and the largest messages a peer may send pass the read limit.
func TestWebSocketLargestMessages(t *testing.T) {
	n := newWSNode(t, false, Config{MaxWriteSize: MaxMessageSize})
	node, agent := n.dialPair(t, DialOptions{Config: Config{MaxWriteSize: MaxMessageSize, StreamWindow: 4 << 20}})
	serveEcho(t, node) // the agent opens here, so the big messages go both ways
	if err := roundTrip(t.Context(), agent, randomBytes(8<<20)); err != nil {
		t.Fatal(err)
	}
}

func TestWebSocketReadLimitIsEnforced(t *testing.T) {
	n := newWSNode(t, false, Config{})
	c, _, err := websocket.Dial(t.Context(), n.url(), &websocket.DialOptions{
		Subprotocols: []string{Subprotocol},
		HTTPHeader:   bearer(testToken),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	node := <-n.sessions
	defer node.Close()
	go c.Write(context.Background(), websocket.MessageBinary, make([]byte, MaxMessageSize+1))
	go c.Read(context.Background()) // so that the close handshake can complete
	<-node.Done()
	if err := node.Err(); err == nil || !strings.Contains(err.Error(), "read limited") {
		t.Errorf("Err after an oversized message: %v, want the read limit's error", err)
	}
}

func TestWebSocketRefusesOtherProtocols(t *testing.T) {
	n := newWSNode(t, false, Config{})
	// A client offering another subprotocol gets a clear 400.
	_, resp, err := websocket.Dial(t.Context(), n.url(), &websocket.DialOptions{
		Subprotocols: []string{"kas.tunnel.v2"},
		HTTPHeader:   bearer(testToken),
	})
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("dial with kas.tunnel.v2: %v, %v; want 400", resp, err)
	}
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), Subprotocol) || !strings.Contains(string(body), "kas.tunnel.v2") {
		t.Errorf("refusal body %q should name both protocols", body)
	}
	if err := <-n.errs; !strings.Contains(err.Error(), "unsupported tunnel protocol") {
		t.Errorf("Accept error: %v", err)
	}
	// A plain HTTP request too.
	resp, err = http.Get(n.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("plain GET: %s, want 400", resp.Status)
	}
	<-n.errs

	// And Dial refuses a server that does not speak the subprotocol.
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err == nil {
			c.CloseNow()
		}
	}))
	defer plain.Close()
	if _, err := Dial(t.Context(), "ws"+strings.TrimPrefix(plain.URL, "http"), nil, DialOptions{}); err == nil || !strings.Contains(err.Error(), "subprotocol") {
		t.Errorf("dial a server without %s: %v", Subprotocol, err)
	}
}

func TestWebSocketAuthorize(t *testing.T) {
	n := newWSNode(t, false, Config{})
	for _, tc := range []struct {
		header http.Header
		want   string
	}{
		{nil, "401 Unauthorized"},
		{bearer("guess"), "401 Unauthorized"},
		{http.Header{"Authorization": {"Basic " + testToken}}, "401 Unauthorized"},
		{bearer("forbidden"), "403 Forbidden: agent disabled"},
	} {
		_, err := Dial(t.Context(), n.url(), tc.header, DialOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("dial with %v: %v, want %q", tc.header, err, tc.want)
		}
		if aerr := <-n.errs; !strings.Contains(aerr.Error(), "authorize") {
			t.Errorf("Accept error: %v", aerr)
		} else if strings.Contains(err.Error(), "wrong token") {
			t.Errorf("the refusal leaked the reason to the client: %v", err)
		}
	}
}

// connectProxy is an HTTP CONNECT proxy that counts the tunnels it made.
func connectProxy(t *testing.T) (*url.URL, *atomic.Int64) {
	var (
		connects atomic.Int64
		wg       sync.WaitGroup
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
			return
		}
		up, err := net.Dial("tcp", r.Host)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		c, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			up.Close()
			return
		}
		connects.Add(1)
		c.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n"))
		wg.Go(func() {
			io.Copy(up, brw)
			up.Close()
		})
		io.Copy(c, up)
		c.Close()
	}))
	t.Cleanup(func() {
		srv.Close()
		wg.Wait()
	})
	u, _ := url.Parse(srv.URL)
	return u, &connects
}

func TestWebSocketThroughHTTPSProxy(t *testing.T) {
	n := newWSNode(t, true, Config{})
	proxyURL, connects := connectProxy(t)
	roots := x509.NewCertPool()
	roots.AddCert(n.srv.Certificate())
	node, agent := n.dialPair(t, DialOptions{
		TLSConfig: &tls.Config{RootCAs: roots},
		Proxy:     http.ProxyURL(proxyURL),
	})
	serveEcho(t, agent)
	if err := roundTrip(t.Context(), node, randomBytes(100<<10)); err != nil {
		t.Fatal(err)
	}
	if connects.Load() != 1 {
		t.Errorf("proxy saw %d CONNECTs, want 1", connects.Load())
	}
}

func TestDialReportsRefusal(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "node draining, try another", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	_, err := Dial(t.Context(), "ws"+strings.TrimPrefix(srv.URL, "http"), nil, DialOptions{})
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "node draining") {
		t.Errorf("dial a refusing server: %v", err)
	}
}

// After every session is closed, no goroutine of the package is left.
func TestGoroutinesReturnToBaseline(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		n := startWSNode(false, Config{})
		defer n.srv.Close()
		var (
			nodes, agents []*Session
			wg            sync.WaitGroup
		)
		for range 8 {
			agent, err := Dial(t.Context(), n.url(), bearer(testToken), DialOptions{})
			if err != nil {
				t.Fatal(err)
			}
			node := <-n.sessions
			nodes, agents = append(nodes, node), append(agents, agent)
			wg.Go(func() {
				for {
					st, err := agent.Accept(context.Background())
					if err != nil {
						return
					}
					wg.Go(func() {
						defer st.Close()
						io.Copy(st, st)
					})
				}
			})
		}
		// Streams of every kind of ending: finished, reset, left open.
		for _, node := range nodes {
			if err := roundTrip(t.Context(), node, randomBytes(64<<10)); err != nil {
				t.Fatal(err)
			}
			st, _ := node.Open(t.Context())
			st.Write([]byte("x"))
			st.Reset()
			st, _ = node.Open(t.Context())
			st.Write([]byte("left open"))
		}
		for i := range nodes {
			if i%2 == 0 {
				nodes[i].Close() // node hangs up
			} else {
				agents[i].Close() // agent hangs up
			}
		}
		for i := range nodes {
			<-nodes[i].Done()
			<-agents[i].Done()
			nodes[i].Close()
			agents[i].Close()
		}
		wg.Wait()
	}()
	http.DefaultClient.CloseIdleConnections()
	waitFor(t, "goroutines to return to the baseline", func() bool { return runtime.NumGoroutine() <= base })
}

// waitFor polls cond; the test's timeout bounds it. Only for tests on real
// sockets, where synctest cannot tell when the work is done.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("timed out waiting for %s\n%s", what, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond) // poll interval
	}
}
