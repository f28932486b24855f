package app

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"connectrpc.com/connect"

	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/config"
	"github.com/kas-project/kas/internal/listen"
)

// clients are the management API's clients, every call signed with a JWT
// (issuer gitlab, audience kas-management) made from api_secret_key, as
// Rails signs its own.
type clients struct {
	agents      managementv1connect.AgentServiceClient
	credentials managementv1connect.CredentialServiceClient
	routing     managementv1connect.RoutingServiceClient
}

// connect builds the clients from the global flags. It makes no call.
func (g *globals) connect() (*clients, error) {
	if g.apiKeyFile == "" {
		return nil, fmt.Errorf("--api-secret-key-file (or $%s) is required to call the control plane", EnvAPIKeyFile)
	}
	key, err := loadKey(g.apiKeyFile)
	if err != nil {
		return nil, err // names --api-secret-key-file
	}
	hc, base, err := httpClient(g.server)
	if err != nil {
		return nil, fmt.Errorf("--server: %w", err)
	}
	signed := connect.WithInterceptors(authn.ClientInterceptor(
		authn.NewSigner(key, authn.IssuerRails, authn.AudienceManagement, jwtSubject)))
	return &clients{
		agents:      managementv1connect.NewAgentServiceClient(hc, base, signed),
		credentials: managementv1connect.NewCredentialServiceClient(hc, base, signed),
		routing:     managementv1connect.NewRoutingServiceClient(hc, base, signed),
	}, nil
}

// loadKey reads the api_secret_key file as kas does (config.LoadKeys):
// during a rotation it holds several keys, one per line, and the first
// signs. The key never appears in an error.
func loadKey(path string) ([]byte, error) {
	key, _, err := config.LoadKeys("--api-secret-key-file", path, true)
	return key, err
}

// httpClient returns the client and base URL for the control plane at raw
// (http://, https:// or unix:///path).
func httpClient(raw string) (*http.Client, string, error) {
	tr, base, err := listen.ClientTransport(raw)
	if err != nil {
		return nil, "", err
	}
	return &http.Client{Transport: tr}, strings.TrimSuffix(base, "/"), nil
}

// callError words a failed call for the operator, naming the server for
// connection problems.
func (g *globals) callError(what string, err error) error {
	if connect.CodeOf(err) == connect.CodeUnavailable {
		return fmt.Errorf("%s: cannot reach the control plane at %s (--server): %w", what, g.server, err)
	}
	var ce *connect.Error
	if errors.As(err, &ce) && ce.Code() == connect.CodeUnauthenticated {
		return fmt.Errorf("%s: the control plane refused the JWT: is --api-secret-key-file its api_secret_key? (%w)", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
