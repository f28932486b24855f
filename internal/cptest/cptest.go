// Package cptest starts a real control plane for tests: a fresh Postgres
// database cloned from the migrated template, the Server on an httptest
// listener (HTTP/1.1 and h2c), and generated Connect clients that sign their
// calls with the right keys.
package cptest

import (
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/kas-project/kas/controlplane"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/pgtest"
)

// Env is a running control plane with clients.
type Env struct {
	Server        *controlplane.Server
	URL           string
	APIKey        []byte
	PrivateKey    []byte
	Agents        managementv1connect.AgentServiceClient
	Credentials   managementv1connect.CredentialServiceClient
	Routing       managementv1connect.RoutingServiceClient
	Nodes         dataplanev1connect.NodeServiceClient
	Auth          dataplanev1connect.AuthServiceClient
	HTTPClient    *http.Client
	ManagementOpt connect.ClientOption
	DataplaneOpt  connect.ClientOption
}

// Key returns 32 random bytes.
func Key(t testing.TB) []byte {
	k := make([]byte, authn.KeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// Start runs a control plane on a fresh database. modify, when given, may
// change the options before the server is built (clock, lease TTL...).
func Start(t testing.TB, modify ...func(*controlplane.Options)) *Env {
	t.Helper()
	opts := controlplane.Options{
		Pool:                pgtest.Pool(t),
		APISecretKey:        Key(t),
		PrivateAPISecretKey: Key(t),
	}
	for _, m := range modify {
		m(&opts)
	}
	srv, err := controlplane.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return Serve(t, srv, opts.APISecretKey, opts.PrivateAPISecretKey)
}

// Serve puts srv on an httptest listener and returns clients for it.
func Serve(t testing.TB, srv *controlplane.Server, apiKey, privateKey []byte) *Env {
	t.Helper()
	hs := httptest.NewUnstartedServer(srv.Handler())
	hs.Config.Protocols = new(http.Protocols)
	hs.Config.Protocols.SetHTTP1(true)
	hs.Config.Protocols.SetUnencryptedHTTP2(true)
	hs.Start()
	t.Cleanup(hs.Close)
	hc := &http.Client{Timeout: 30 * time.Second}
	mgmt := connect.WithInterceptors(authn.ClientInterceptor(
		authn.NewSigner(apiKey, authn.IssuerRails, authn.AudienceManagement, "rails")))
	dp := connect.WithInterceptors(authn.ClientInterceptor(
		authn.NewSigner(privateKey, authn.IssuerDataplane, authn.AudienceDataplane, "node-test")))
	return &Env{
		Server:        srv,
		URL:           hs.URL,
		APIKey:        apiKey,
		PrivateKey:    privateKey,
		Agents:        managementv1connect.NewAgentServiceClient(hc, hs.URL, mgmt),
		Credentials:   managementv1connect.NewCredentialServiceClient(hc, hs.URL, mgmt),
		Routing:       managementv1connect.NewRoutingServiceClient(hc, hs.URL, mgmt),
		Nodes:         dataplanev1connect.NewNodeServiceClient(hc, hs.URL, dp),
		Auth:          dataplanev1connect.NewAuthServiceClient(hc, hs.URL, dp),
		HTTPClient:    hc,
		ManagementOpt: mgmt,
		DataplaneOpt:  dp,
	}
}
