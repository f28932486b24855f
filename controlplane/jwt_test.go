package controlplane_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"

	dataplanev1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/cptest"
)

// bearer sets a fixed Authorization header ("" sends none).
func bearer(tok string) connect.ClientOption {
	return connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if tok != "" {
				req.Header().Set("Authorization", "Bearer "+tok)
			}
			return next(ctx, req)
		}
	}))
}

func sign(t *testing.T, method jwt.SigningMethod, key any, claims jwt.RegisteredClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestManagementAuthentication(t *testing.T) {
	env := cptest.Start(t)
	now := time.Now()
	rails := func() jwt.RegisteredClaims {
		return jwt.RegisteredClaims{
			Issuer:    authn.IssuerRails,
			Subject:   "rails",
			Audience:  jwt.ClaimStrings{authn.AudienceManagement},
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(time.Minute)),
		}
	}
	with := func(modify func(*jwt.RegisteredClaims)) jwt.RegisteredClaims {
		c := rails()
		modify(&c)
		return c
	}

	good := sign(t, jwt.SigningMethodHS256, env.APIKey, rails())
	for _, tc := range []struct {
		name  string
		token string
	}{
		{"missing header", ""},
		{"not a jwt", "hello"},
		{"alg none", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, rails())},
		{"HS512 with the right key", sign(t, jwt.SigningMethodHS512, env.APIKey, rails())},
		{"wrong key", sign(t, jwt.SigningMethodHS256, cptest.Key(t), rails())},
		{"expired", sign(t, jwt.SigningMethodHS256, env.APIKey, with(func(c *jwt.RegisteredClaims) {
			c.IssuedAt = jwt.NewNumericDate(now.Add(-10 * time.Minute))
			c.ExpiresAt = jwt.NewNumericDate(now.Add(-5 * time.Minute))
		}))},
		{"no expiry", sign(t, jwt.SigningMethodHS256, env.APIKey, with(func(c *jwt.RegisteredClaims) { c.ExpiresAt = nil }))},
		{"expiry too far ahead", sign(t, jwt.SigningMethodHS256, env.APIKey, with(func(c *jwt.RegisteredClaims) {
			c.ExpiresAt = jwt.NewNumericDate(now.Add(24 * time.Hour))
		}))},
		{"wrong audience", sign(t, jwt.SigningMethodHS256, env.APIKey, with(func(c *jwt.RegisteredClaims) {
			c.Audience = jwt.ClaimStrings{authn.AudienceDataplane}
		}))},
		{"wrong issuer", sign(t, jwt.SigningMethodHS256, env.APIKey, with(func(c *jwt.RegisteredClaims) {
			c.Issuer = authn.IssuerDataplane
		}))},
		// A dataplane node's token: private key, dataplane issuer and audience.
		{"dataplane token", sign(t, jwt.SigningMethodHS256, env.PrivateKey, jwt.RegisteredClaims{
			Issuer:    authn.IssuerDataplane,
			Subject:   "node-1",
			Audience:  jwt.ClaimStrings{authn.AudienceDataplane},
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(time.Minute)),
		})},
		// The private key with the management claims still opens nothing.
		{"private key, management claims", sign(t, jwt.SigningMethodHS256, env.PrivateKey, rails())},
	} {
		t.Run(tc.name, func(t *testing.T) {
			agents := managementv1connect.NewAgentServiceClient(env.HTTPClient, env.URL, bearer(tc.token))
			_, err := agents.ListAgents(t.Context(), &managementv1.ListAgentsRequest{})
			wantCode(t, err, connect.CodeUnauthenticated)
			creds := managementv1connect.NewCredentialServiceClient(env.HTTPClient, env.URL, bearer(tc.token))
			_, err = creds.ListAccessTokens(t.Context(), &managementv1.ListAccessTokensRequest{})
			wantCode(t, err, connect.CodeUnauthenticated)
			routing := managementv1connect.NewRoutingServiceClient(env.HTTPClient, env.URL, bearer(tc.token))
			_, err = routing.ListNodes(t.Context(), &managementv1.ListNodesRequest{})
			wantCode(t, err, connect.CodeUnauthenticated)
		})
	}

	// The control: the well-formed token opens all three services.
	agents := managementv1connect.NewAgentServiceClient(env.HTTPClient, env.URL, bearer(good))
	if _, err := agents.ListAgents(t.Context(), &managementv1.ListAgentsRequest{}); err != nil {
		t.Fatalf("good token refused: %v", err)
	}
	creds := managementv1connect.NewCredentialServiceClient(env.HTTPClient, env.URL, bearer(good))
	if _, err := creds.ListAccessTokens(t.Context(), &managementv1.ListAccessTokensRequest{}); err != nil {
		t.Fatalf("good token refused: %v", err)
	}
	routing := managementv1connect.NewRoutingServiceClient(env.HTTPClient, env.URL, bearer(good))
	if _, err := routing.ListNodes(t.Context(), &managementv1.ListNodesRequest{}); err != nil {
		t.Fatalf("good token refused: %v", err)
	}
}

// TestDataplaneRefusesManagementKey: the api_secret_key (what Rails holds)
// must not open the dataplane's services.
func TestDataplaneRefusesManagementKey(t *testing.T) {
	env := cptest.Start(t)
	for name, signer := range map[string]*authn.Signer{
		"rails token":                       authn.NewSigner(env.APIKey, authn.IssuerRails, authn.AudienceManagement, "rails"),
		"api key, dataplane claims":         authn.NewSigner(env.APIKey, authn.IssuerDataplane, authn.AudienceDataplane, "node-1"),
		"private key, private-api audience": authn.NewSigner(env.PrivateKey, authn.IssuerDataplane, authn.AudiencePrivateAPI, "node-1"),
	} {
		t.Run(name, func(t *testing.T) {
			opt := connect.WithInterceptors(authn.ClientInterceptor(signer))
			nodes := dataplanev1connect.NewNodeServiceClient(env.HTTPClient, env.URL, opt)
			_, err := nodes.ResolveAgent(t.Context(), &dataplanev1.ResolveAgentRequest{AgentId: 1})
			wantCode(t, err, connect.CodeUnauthenticated)
			auth := dataplanev1connect.NewAuthServiceClient(env.HTTPClient, env.URL, opt)
			_, err = auth.AuthenticateAgent(t.Context(), &dataplanev1.AuthenticateAgentRequest{})
			wantCode(t, err, connect.CodeUnauthenticated)
		})
	}
	// The dataplane's own signer gets past authentication (whatever the
	// method then answers, it is not Unauthenticated).
	_, err := env.Nodes.ResolveAgent(t.Context(), &dataplanev1.ResolveAgentRequest{AgentId: 1})
	if connect.CodeOf(err) == connect.CodeUnauthenticated {
		t.Fatalf("dataplane signer refused: %v", err)
	}
}
