package framework

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/kas-project/kas/controlplane"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/config"
	"github.com/kas-project/kas/internal/cptest"
	"github.com/kas-project/kas/internal/listen"
)

// KeyFiles are where a role reads its keys, as an operator keeps them: one
// base64 key per line, the first signs (config.LoadKeys). A role reads them
// when it starts, so a changed file takes effect at the next restart.
type KeyFiles struct {
	API     string // api_secret_key_file (control plane only)
	Private string // private_api_secret_key_file
}

// LoadPrivateKeys reads files.Private as a starting process would.
func LoadPrivateKeys(t testing.TB, files KeyFiles) (key []byte, extra [][]byte) {
	t.Helper()
	key, extra, err := config.LoadKeys("private_api_secret_key_file", files.Private, true)
	if err != nil {
		t.Fatal(err)
	}
	return key, extra
}

// ControlPlane is a Deployment of control-plane replicas on one database,
// behind a load balancer (a Kubernetes Service) that sends each new
// connection to a ready replica, round robin. Each replica reads the key
// files when it starts; Roll replaces them one by one as `kubectl rollout
// restart` does (a new replica first, then the old one is taken out of the
// balancer and shut down gracefully).
type ControlPlane struct {
	DSN   string
	Files KeyFiles
	// URL is the balancer's http:// URL: where Rails and nodes call.
	URL string
	lb  *Proxy

	mu       sync.Mutex
	replicas []*Replica
	next     int
	started  int
	modify   []func(*controlplane.Options)
}

// Replica is one control-plane process.
type Replica struct {
	Name     string
	Server   *controlplane.Server
	Addr     string
	pool     *pgxpool.Pool
	srv      *http.Server
	accepted atomic.Int64
	picked   int64 // guarded by ControlPlane.mu
	serving  bool  // guarded by ControlPlane.mu
	done     chan error
}

// StartControlPlanes starts n replicas on the database dsn (pgtest.DSN)
// reading files, with LeaseTTL leases and modify applied to each.
func StartControlPlanes(t testing.TB, dsn string, files KeyFiles, n int, modify ...func(*controlplane.Options)) *ControlPlane {
	t.Helper()
	c := &ControlPlane{DSN: dsn, Files: files, modify: modify}
	c.lb = NewProxy(t, c.backends)
	c.URL = "http://" + c.lb.Addr()
	for range n {
		r := c.startReplica(t)
		c.mu.Lock()
		r.serving = true
		c.replicas = append(c.replicas, r)
		c.mu.Unlock()
	}
	t.Cleanup(func() {
		c.mu.Lock()
		all := c.replicas
		c.replicas = nil
		c.mu.Unlock()
		for _, r := range all {
			c.stopReplica(t, r)
		}
	})
	return c
}

// backends picks one serving replica per connection, round robin, and
// counts the pick so that stopReplica can wait for the connection to
// arrive before it closes the listener.
func (c *ControlPlane) backends() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ready []*Replica
	for _, r := range c.replicas {
		if r.serving {
			ready = append(ready, r)
		}
	}
	if len(ready) == 0 {
		return nil
	}
	r := ready[c.next%len(ready)]
	c.next++
	r.picked++
	return []string{r.Addr}
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return conn, err
}

func (c *ControlPlane) startReplica(t testing.TB) *Replica {
	t.Helper()
	apiKey, apiExtra, err := config.LoadKeys("api_secret_key_file", c.Files.API, true)
	if err != nil {
		t.Fatal(err)
	}
	privKey, privExtra := LoadPrivateKeys(t, c.Files)
	pool, err := pgxpool.New(context.Background(), c.DSN)
	if err != nil {
		t.Fatal(err)
	}
	o := controlplane.Options{
		Pool:                      pool,
		APISecretKey:              apiKey,
		ExtraAPISecretKeys:        apiExtra,
		PrivateAPISecretKey:       privKey,
		ExtraPrivateAPISecretKeys: privExtra,
		LeaseTTL:                  LeaseTTL,
	}
	for _, m := range c.modify {
		m(&o)
	}
	cp, err := controlplane.New(o)
	if err != nil {
		pool.Close()
		t.Fatal(err)
	}
	c.mu.Lock()
	c.started++
	name := fmt.Sprintf("controlplane-%d", c.started)
	c.mu.Unlock()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Replica{Name: name, Server: cp, Addr: l.Addr().String(), pool: pool, done: make(chan error, 1)}
	r.srv = listen.NewServer(cp.Handler(), nil)
	go func() { r.done <- r.srv.Serve(countingListener{l, &r.accepted}) }()
	Eventually(t, name+" ready", func() bool { return cp.Ready(context.Background()) == nil })
	return r
}

// stopReplica takes r out of the balancer, waits until every connection
// the balancer sent it has been accepted, and shuts it down gracefully
// (in-flight requests finish; idle connections close).
func (c *ControlPlane) stopReplica(t testing.TB, r *Replica) {
	t.Helper()
	c.mu.Lock()
	r.serving = false
	picked := r.picked
	c.mu.Unlock()
	Eventually(t, r.Name+" accepted what the balancer sent it", func() bool { return r.accepted.Load() >= picked })
	ctx, cancel := context.WithTimeout(context.Background(), Guard)
	defer cancel()
	if err := r.srv.Shutdown(ctx); err != nil {
		t.Errorf("shut down %s: %v", r.Name, err)
	}
	if err := <-r.done; err != http.ErrServerClosed {
		t.Errorf("%s: serve: %v", r.Name, err)
	}
	r.pool.Close()
}

// Roll restarts every replica, one at a time, as `kubectl rollout restart`
// does with maxUnavailable 0: a new replica (reading the key files now) is
// started and put in the balancer, then an old one is taken out and shut
// down gracefully.
func (c *ControlPlane) Roll(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	old := append([]*Replica(nil), c.replicas...)
	c.mu.Unlock()
	for _, o := range old {
		r := c.startReplica(t)
		c.mu.Lock()
		r.serving = true
		c.replicas = append(c.replicas, r)
		c.mu.Unlock()
		c.stopReplica(t, o)
		c.mu.Lock()
		for i, x := range c.replicas {
			if x == o {
				c.replicas = append(c.replicas[:i], c.replicas[i+1:]...)
				break
			}
		}
		c.mu.Unlock()
	}
}

// Replicas returns the running replicas.
func (c *ControlPlane) Replicas() []*Replica {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Replica(nil), c.replicas...)
}

// Env returns clients that call the control plane through the balancer,
// signing management calls with apiKey (as Rails) and dataplane calls with
// privateKey (as a node). StartNode takes it: nodes started with it call
// the balancer.
func (c *ControlPlane) Env(apiKey, privateKey []byte) *cptest.Env {
	hc := &http.Client{Timeout: 30 * time.Second}
	mgmt := connect.WithInterceptors(authn.ClientInterceptor(
		authn.NewSigner(apiKey, authn.IssuerRails, authn.AudienceManagement, "rails")))
	dp := connect.WithInterceptors(authn.ClientInterceptor(
		authn.NewSigner(privateKey, authn.IssuerDataplane, authn.AudienceDataplane, "node-test")))
	return &cptest.Env{
		URL:           c.URL,
		APIKey:        apiKey,
		PrivateKey:    privateKey,
		Agents:        managementv1connect.NewAgentServiceClient(hc, c.URL, mgmt),
		Credentials:   managementv1connect.NewCredentialServiceClient(hc, c.URL, mgmt),
		Routing:       managementv1connect.NewRoutingServiceClient(hc, c.URL, mgmt),
		Nodes:         dataplanev1connect.NewNodeServiceClient(hc, c.URL, dp),
		Auth:          dataplanev1connect.NewAuthServiceClient(hc, c.URL, dp),
		HTTPClient:    hc,
		ManagementOpt: mgmt,
		DataplaneOpt:  dp,
	}
}
