package listen

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
)

func TestSpecValidate(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCert(t, dir)
	bogus := filepath.Join(dir, "bogus.pem")
	if err := os.WriteFile(bogus, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		spec Spec
		want []string // substrings; empty means valid
	}{
		{"tcp default", Spec{Address: ":8153"}, nil},
		{"tcp port 0", Spec{Network: "tcp4", Address: "127.0.0.1:0"}, nil},
		{"unix", Spec{Network: "unix", Address: "/run/kas/api.sock"}, nil},
		{"tls", Spec{Address: ":1", CertificateFile: cert, KeyFile: key}, nil},
		{"bad network", Spec{Setting: "x.listen", Network: "udp", Address: ":1"},
			[]string{`x.listen.network: "udp" is not one of tcp, tcp4, tcp6, unix`}},
		{"missing port", Spec{Setting: "x.listen", Address: "localhost"},
			[]string{`x.listen.address: "localhost" is not host:port: missing port in address`}},
		{"bad port", Spec{Setting: "x.listen", Address: ":http"},
			[]string{`x.listen.address: ":http": port "http" is not a number from 0 to 65535`}},
		{"port too big", Spec{Setting: "x.listen", Address: ":70000"},
			[]string{`port "70000" is not a number from 0 to 65535`}},
		{"empty tcp address", Spec{Setting: "x.listen"}, []string{`x.listen.address: required`}},
		{"empty unix path", Spec{Setting: "x.listen", Network: "unix"},
			[]string{`x.listen.address: a socket path is required for network unix`}},
		{"cert without key", Spec{Setting: "x.listen", Address: ":1", CertificateFile: cert},
			[]string{`x.listen.key_file: required when x.listen.certificate_file is set`}},
		{"key without cert", Spec{Setting: "x.listen", Address: ":1", KeyFile: key},
			[]string{`x.listen.certificate_file: required when x.listen.key_file is set`}},
		{"bad key pair", Spec{Setting: "x.listen", Address: ":1", CertificateFile: cert, KeyFile: bogus},
			[]string{`x.listen.certificate_file, x.listen.key_file: load TLS key pair:`}},
		{"all at once", Spec{Setting: "x.listen", Network: "sctp", KeyFile: key},
			[]string{`x.listen.network: "sctp"`, `x.listen.certificate_file: required when x.listen.key_file is set`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestListenUnix(t *testing.T) {
	dir := shortTempDir(t)
	path := filepath.Join(dir, "sub", "dir", "api.sock")

	live, err := Listen(Spec{Network: "unix", Address: path})
	if err != nil {
		t.Fatalf("listen on a path whose directory does not exist: %v", err)
	}
	// A live socket is not taken over.
	go func(l net.Listener) {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}(live)
	if _, err := Listen(Spec{Network: "unix", Address: path}); err == nil || !strings.Contains(err.Error(), "in use by a running server") {
		t.Fatalf("second listener on a live socket: err = %v, want 'in use'", err)
	}
	live.Close()

	// A stale socket file (its server gone without unlinking) is replaced.
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("test setup: stale socket should exist: %v", err)
	}
	l, err := Listen(Spec{Network: "unix", Address: path})
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	l.Close()

	// A regular file is never removed.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(Spec{Network: "unix", Address: file}); err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Fatalf("listen over a regular file: err = %v, want 'is not a socket'", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "data" {
		t.Fatal("regular file was changed")
	}
}

func TestListenTCPErrorNamesSetting(t *testing.T) {
	l, err := Listen(Spec{Address: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = Listen(Spec{Setting: "controlplane.listen", Address: l.Addr().String()})
	if err == nil || !strings.HasPrefix(err.Error(), "controlplane.listen.address: ") {
		t.Fatalf("listen on a busy port: err = %v, want it to name controlplane.listen.address", err)
	}
}

// agents answers GetAgent with the protocol the call came in with.
type agents struct {
	managementv1connect.UnimplementedAgentServiceHandler
}

func (agents) GetAgent(ctx context.Context, req *managementv1.GetAgentRequest) (*managementv1.GetAgentResponse, error) {
	ci, _ := connect.CallInfoForHandlerContext(ctx)
	return &managementv1.GetAgentResponse{Agent: &managementv1.Agent{Id: req.AgentId, Name: ci.Peer().Protocol}}, nil
}

func testHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(managementv1connect.NewAgentServiceHandler(agents{}))
	mux.HandleFunc("/proto", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Proto) })
	return mux
}

// start serves testHandler on spec and returns a context cancel that stops it
// and a channel with Serve's result.
func start(t *testing.T, spec Spec) (net.Listener, context.CancelFunc, <-chan error) {
	t.Helper()
	l, err := Listen(spec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, NewServer(testHandler(), nil), l, 0) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return l, cancel, done
}

func clearTextClient(h2c bool, dial func(ctx context.Context) (net.Conn, error)) *http.Client {
	p := new(http.Protocols)
	if h2c {
		p.SetUnencryptedHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	tr := &http.Transport{Protocols: p}
	if dial != nil {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) }
	}
	return &http.Client{Transport: tr}
}

func getProto(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url + "/proto")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// callAll calls GetAgent with Connect, gRPC and gRPC-Web and checks each
// reached the handler with its protocol.
func callAll(t *testing.T, c *http.Client, url string) {
	t.Helper()
	for _, tc := range []struct {
		opt  connect.ClientOption
		want string
	}{
		{connect.WithProtoJSON(), connect.ProtocolConnect},
		{connect.WithGRPC(), connect.ProtocolGRPC},
		{connect.WithGRPCWeb(), connect.ProtocolGRPCWeb},
	} {
		client := managementv1connect.NewAgentServiceClient(c, url, tc.opt)
		resp, err := client.GetAgent(context.Background(), &managementv1.GetAgentRequest{AgentId: 7})
		if err != nil {
			t.Fatalf("GetAgent over %s: %v", tc.want, err)
		}
		if resp.Agent.Id != 7 || resp.Agent.Name != tc.want {
			t.Errorf("GetAgent over %s: got %v", tc.want, resp.Agent)
		}
	}
}

func TestServeClearText(t *testing.T) {
	l, _, _ := start(t, Spec{Address: "127.0.0.1:0"})
	url := "http://" + l.Addr().String()
	if got := getProto(t, clearTextClient(false, nil), url); got != "HTTP/1.1" {
		t.Errorf("HTTP/1.1 client saw %q", got)
	}
	h2c := clearTextClient(true, nil)
	if got := getProto(t, h2c, url); got != "HTTP/2.0" {
		t.Errorf("h2c client saw %q", got)
	}
	callAll(t, h2c, url)
	// Connect and gRPC-Web also work over HTTP/1.1.
	for _, opt := range []connect.ClientOption{connect.WithProtoJSON(), connect.WithGRPCWeb()} {
		client := managementv1connect.NewAgentServiceClient(clearTextClient(false, nil), url, opt)
		if _, err := client.GetAgent(context.Background(), &managementv1.GetAgentRequest{AgentId: 1}); err != nil {
			t.Errorf("GetAgent over HTTP/1.1: %v", err)
		}
	}
}

func TestServeUnix(t *testing.T) {
	path := filepath.Join(shortTempDir(t), "api.sock")
	start(t, Spec{Network: "unix", Address: path})
	dial := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
	callAll(t, clearTextClient(true, dial), "http://kas")
}

func TestServeTLS(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCert(t, dir)
	l, _, _ := start(t, Spec{Address: "127.0.0.1:0", CertificateFile: cert, KeyFile: key})
	pemBytes, err := os.ReadFile(cert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	p := new(http.Protocols)
	p.SetHTTP2(true)
	c := &http.Client{Transport: &http.Transport{Protocols: p, TLSClientConfig: &tls.Config{RootCAs: pool}}}
	url := "https://" + l.Addr().String()
	if got := getProto(t, c, url); got != "HTTP/2.0" {
		t.Errorf("TLS client saw %q, want HTTP/2.0 through ALPN", got)
	}
	callAll(t, c, url)
}

func TestServeGracefulShutdown(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		io.WriteString(w, "done")
	})
	l, err := Listen(Spec{Address: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	srv := NewServer(mux, nil)
	shuttingDown := make(chan struct{})
	srv.RegisterOnShutdown(func() { close(shuttingDown) })
	go func() { done <- Serve(ctx, srv, l, time.Minute) }()

	got := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + l.Addr().String() + "/slow")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- string(b)
	}()
	<-entered
	cancel()
	// New connections are refused once shutdown has begun (the listener is
	// closed before the shutdown hooks run).
	<-shuttingDown
	if c, err := net.Dial("tcp", l.Addr().String()); err == nil {
		c.Close()
		t.Error("a new connection was accepted during shutdown")
	}
	select {
	case err := <-done:
		t.Fatalf("Serve returned %v while a request was in flight", err)
	default:
	}
	close(release)
	if g := <-got; g != "done" {
		t.Errorf("in-flight request got %q, want done", g)
	}
	if err := <-done; err != nil {
		t.Errorf("Serve after graceful shutdown: %v", err)
	}
}

func TestServeShutdownCut(t *testing.T) {
	entered := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/stuck", func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-r.Context().Done()
	})
	l, err := Listen(Spec{Address: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, NewServer(mux, nil), l, 10*time.Millisecond) }()
	go func() {
		if resp, err := http.Get("http://" + l.Addr().String() + "/stuck"); err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	cancel()
	if err := <-done; !errors.Is(err, ErrShutdownCut) {
		t.Fatalf("Serve = %v, want ErrShutdownCut", err)
	}
}

// shortTempDir returns a temporary directory with a short path: socket paths
// are limited to 107 bytes.
func shortTempDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "kas-listen-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// writeCert writes a self-signed certificate for 127.0.0.1 and its key.
func writeCert(t *testing.T, dir string) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kas test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}
