package relay

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kas-project/kas/dataplane/agentserver"
	"github.com/kas-project/kas/dataplane/tunnel"
	"github.com/kas-project/kas/internal/listen"
)

const testAgent = 7

// farNode is a relay server on a real listener whose one tunnel (over
// net.Pipe) reaches an agent that echoes every stream.
type farNode struct {
	url   string
	srv   *Server
	node  *tunnel.Session // the far node's end of the tunnel
	agent *tunnel.Session
}

// tunnels adapts a tunnel session to Tunnels: agent testAgent is there,
// nobody else.
type tunnels struct{ s *tunnel.Session }

func (t tunnels) Open(ctx context.Context, agentID int64) (net.Conn, error) {
	if agentID != testAgent {
		return nil, fmt.Errorf("open stream to agent %d: %w", agentID, agentserver.ErrNoTunnel)
	}
	return t.s.Open(ctx)
}

func startFar(t *testing.T, key []byte, l net.Listener, scheme string) *farNode {
	t.Helper()
	a, b := net.Pipe()
	node, err := tunnel.Server(a, tunnel.Config{})
	if err != nil {
		t.Fatal(err)
	}
	agent, err := tunnel.Client(b, tunnel.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			st, err := agent.Accept(context.Background())
			if err != nil {
				return
			}
			wg.Go(func() {
				defer st.Close()
				io.Copy(st, st)
				st.CloseWrite()
			})
		}
	})
	srv, err := NewServer(ServerOptions{NodeID: "far", Key: key, Tunnels: tunnels{node}})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(srv.Handler())
	hs := listen.NewServer(mux, nil)
	ctx, cancel := context.WithCancel(context.Background())
	wg.Go(func() { listen.Serve(ctx, hs, l, time.Second) })
	t.Cleanup(func() {
		cancel()
		node.Close()
		agent.Close()
		wg.Wait()
		srv.Wait()
	})
	u := scheme + "://" + l.Addr().String()
	if l.Addr().Network() == "unix" {
		u = "unix://" + l.Addr().String()
	}
	return &farNode{url: u, srv: srv, node: node, agent: agent}
}

func key(t *testing.T) []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

func tcpListener(t *testing.T) net.Listener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func newDialer(t *testing.T, o DialerOptions) *Dialer {
	t.Helper()
	if o.NodeID == "" {
		o.NodeID = "near"
	}
	d, err := NewDialer(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// echo writes payload, half-closes and checks that the same bytes come back.
func echo(t *testing.T, c net.Conn, payload []byte) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo returned %d bytes (sha %x), want %d (sha %x)", len(got), sha256.Sum256(got), len(payload), sha256.Sum256(payload))
	}
}

func waitNoStreams(t *testing.T, s *tunnel.Session) {
	t.Helper()
	// Stream teardown crosses goroutines on both nodes with no event to
	// wait on from here: poll the condition, with a guard.
	guard := time.NewTimer(10 * time.Second)
	defer guard.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for s.NumStreams() != 0 {
		select {
		case <-tick.C:
		case <-guard.C:
			t.Fatalf("tunnel still has %d streams", s.NumStreams())
		}
	}
}

func TestRelayH2C(t *testing.T) {
	k := key(t)
	far := startFar(t, k, tcpListener(t), "grpc")
	d := newDialer(t, DialerOptions{Key: k})
	c, err := d.Dial(context.Background(), far.url, testAgent)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, c, []byte("hello through the relay"))
	c.Close()

	// Bulk, in both directions at once, with flow control on every hop.
	big := make([]byte, 8<<20+123)
	rand.Read(big)
	c, err = d.Dial(context.Background(), far.url, testAgent)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, c, big)
	c.Close()
	waitNoStreams(t, far.node)
	if st := far.srv.Stats(); st.OK != 2 || st.BytesIn != uint64(len(big)+23) {
		t.Errorf("server stats %+v", st)
	}
	if st := d.Stats(); st.OK != 2 || st.BytesOut != uint64(len(big)+23) || st.BytesIn != st.BytesOut {
		t.Errorf("dialer stats %+v", st)
	}
}

func TestRelayRefusals(t *testing.T) {
	k := key(t)
	far := startFar(t, k, tcpListener(t), "grpc")

	_, err := newDialer(t, DialerOptions{Key: k}).Dial(context.Background(), far.url, 8)
	if !errors.Is(err, ErrNoTunnel) || !strings.Contains(err.Error(), "no tunnel for agent 8 on node far") {
		t.Errorf("unknown agent: err = %v, want ErrNoTunnel naming agent and node", err)
	}

	_, err = newDialer(t, DialerOptions{Key: key(t)}).Dial(context.Background(), far.url, testAgent)
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "unauthenticated") {
		t.Errorf("wrong key: err = %v, want ErrUnreachable (unauthenticated)", err)
	}

	dead := tcpListener(t)
	deadURL := "grpc://" + dead.Addr().String()
	dead.Close()
	_, err = newDialer(t, DialerOptions{Key: k}).Dial(context.Background(), deadURL, testAgent)
	if !errors.Is(err, ErrUnreachable) {
		t.Errorf("closed port: err = %v, want ErrUnreachable", err)
	}

	for _, u := range []string{"http://" + dead.Addr().String(), "grpc://", "::"} {
		if _, err := newDialer(t, DialerOptions{Key: k}).Dial(context.Background(), u, testAgent); !errors.Is(err, ErrUnreachable) {
			t.Errorf("URL %q: err = %v, want ErrUnreachable", u, err)
		}
	}

	// A server that never answers: the open timeout applies.
	silent := tcpListener(t)
	defer silent.Close()
	go func() {
		c, err := silent.Accept()
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	start := time.Now()
	_, err = newDialer(t, DialerOptions{Key: k, OpenTimeout: 200 * time.Millisecond}).Dial(context.Background(), "grpc://"+silent.Addr().String(), testAgent)
	if !errors.Is(err, ErrUnreachable) || time.Since(start) > 5*time.Second {
		t.Errorf("silent server: err = %v after %v", err, time.Since(start))
	}
}

func TestRelayUnixSocket(t *testing.T) {
	k := key(t)
	l, err := listen.Listen(listen.Spec{Network: "unix", Address: filepath.Join(t.TempDir(), "private.sock")})
	if err != nil {
		t.Fatal(err)
	}
	far := startFar(t, k, l, "unix")
	c, err := newDialer(t, DialerOptions{Key: k}).Dial(context.Background(), far.url, testAgent)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo(t, c, []byte("over a unix socket"))
}

func TestRelayTLS(t *testing.T) {
	k := key(t)
	cert, pool := selfSigned(t, "node.kas.test")
	l := tls.NewListener(tcpListener(t), &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}})
	far := startFar(t, k, l, "grpcs")

	// OWN_PRIVATE_API_HOST names the certificate; the URL has an IP.
	d := newDialer(t, DialerOptions{Key: k, RootCAs: pool, ServerName: "node.kas.test"})
	c, err := d.Dial(context.Background(), far.url, testAgent)
	if err != nil {
		t.Fatal(err)
	}
	echo(t, c, []byte("over TLS"))
	c.Close()

	// Without the server name the IP is checked, and the certificate lacks it.
	_, err = newDialer(t, DialerOptions{Key: k, RootCAs: pool}).Dial(context.Background(), far.url, testAgent)
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("wrong server name: err = %v", err)
	}
	// Clear text against TLS fails too.
	_, err = newDialer(t, DialerOptions{Key: k}).Dial(context.Background(), strings.Replace(far.url, "grpcs", "grpc", 1), testAgent)
	if !errors.Is(err, ErrUnreachable) {
		t.Errorf("h2c against TLS: err = %v", err)
	}
}

func TestRelayConnDeadlinesAndClose(t *testing.T) {
	k := key(t)
	far := startFar(t, k, tcpListener(t), "grpc")
	d := newDialer(t, DialerOptions{Key: k})
	c, err := d.Dial(context.Background(), far.url, testAgent)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past deadline: %v", err)
	}
	c.SetReadDeadline(time.Time{})
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil || b[0] != 'x' {
		t.Fatalf("read after clearing the deadline: %q %v", b, err)
	}
	c.SetWriteDeadline(time.Now().Add(-time.Second))
	if _, err := c.Write([]byte("y")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write past deadline: %v", err)
	}

	// Close: Read and Write fail at once, the far stream goes away.
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(b)
		done <- err
	}()
	c.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Errorf("blocked Read after Close: %v", err)
	}
	if _, err := c.Write([]byte("z")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v", err)
	}
	waitNoStreams(t, far.node)

	// The agent ending its side ends the relay: the caller reads EOF.
	c, err = d.Dial(context.Background(), far.url, testAgent)
	if err != nil {
		t.Fatal(err)
	}
	c.(interface{ CloseWrite() error }).CloseWrite() // the echo agent half-closes in turn
	if n, err := c.Read(b); n != 0 || err != io.EOF {
		t.Errorf("read after the agent's end: %d %v", n, err)
	}
	c.Close()
	waitNoStreams(t, far.node)
}

func selfSigned(t *testing.T, name string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		DNSNames:              []string{name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv, Leaf: leaf}, pool
}
