package controlplane_test

import (
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kas-project/kas/controlplane"
	dataplanev1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/cptest"
	"github.com/kas-project/kas/internal/kascookie"
)

// TestKeyRotation: with extra keys configured, the control plane accepts
// JWTs and _gitlab_kas cookies made with them as well as with the current
// keys, each key still only for its own API; without them, it refuses the
// old ones.
func TestKeyRotation(t *testing.T) {
	oldAPI, oldPrivate, stranger := cptest.Key(t), cptest.Key(t), cptest.Key(t)
	env := cptest.Start(t, func(o *controlplane.Options) {
		o.ExtraAPISecretKeys = [][]byte{oldAPI}
		o.ExtraPrivateAPISecretKeys = [][]byte{oldPrivate}
	})
	ctx := t.Context()
	management := func(key []byte) managementv1connect.AgentServiceClient {
		return managementv1connect.NewAgentServiceClient(env.HTTPClient, env.URL, connect.WithInterceptors(
			authn.ClientInterceptor(authn.NewSigner(key, authn.IssuerRails, authn.AudienceManagement, "rails"))))
	}
	dataplane := func(key []byte) dataplanev1connect.AuthServiceClient {
		return dataplanev1connect.NewAuthServiceClient(env.HTTPClient, env.URL, connect.WithInterceptors(
			authn.ClientInterceptor(authn.NewSigner(key, authn.IssuerDataplane, authn.AudienceDataplane, "node"))))
	}
	for name, key := range map[string][]byte{"current": env.APIKey, "extra": oldAPI} {
		if _, err := management(key).ListAgents(ctx, &managementv1.ListAgentsRequest{}); err != nil {
			t.Errorf("management API refused the %s api_secret_key: %v", name, err)
		}
	}
	for name, key := range map[string][]byte{"current": env.PrivateKey, "extra": oldPrivate} {
		// Past authentication, the method itself refuses agent 0.
		_, err := dataplane(key).GetAgentConfig(ctx, &dataplanev1.GetAgentConfigRequest{AgentId: 0})
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("dataplane API with the %s private_api_secret_key: %v, want InvalidArgument from the method", name, err)
		}
	}
	// Still one key per API, and strangers stay out.
	for _, key := range [][]byte{stranger, oldPrivate} {
		_, err := management(key).ListAgents(ctx, &managementv1.ListAgentsRequest{})
		wantCode(t, err, connect.CodeUnauthenticated, "invalid token")
	}
	for _, key := range [][]byte{stranger, oldAPI} {
		_, err := dataplane(key).GetAgentConfig(ctx, &dataplanev1.GetAgentConfigRequest{AgentId: 0})
		wantCode(t, err, connect.CodeUnauthenticated, "invalid token")
	}

	// A cookie Rails sealed with the old api_secret_key still opens its session.
	a := createAgent(t, env, 1, "rotating")
	sess, err := env.Credentials.CreateSession(ctx, &managementv1.CreateSessionRequest{
		User:      &managementv1.UserIdentity{Id: 1, Username: "alice"},
		AgentIds:  []int64{a.Id},
		ExpiresAt: timestamppb.New(time.Now().Add(time.Hour)),
	})
	if err != nil {
		t.Fatal(err)
	}
	authorize := func(key []byte) dataplanev1.AuthorizeProxyResponse_Decision {
		t.Helper()
		c, err := kascookie.Encrypt(key, sess.SessionId)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := env.Auth.AuthorizeProxy(ctx, &dataplanev1.AuthorizeProxyRequest{AgentId: a.Id,
			Credential: &dataplanev1.AuthorizeProxyRequest_SessionCookie{SessionCookie: c}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.Decision
	}
	for name, key := range map[string][]byte{"current": env.APIKey, "extra": oldAPI} {
		if d := authorize(key); d != dataplanev1.AuthorizeProxyResponse_DECISION_ALLOWED {
			t.Errorf("cookie sealed with the %s key: %v, want allowed", name, d)
		}
	}
	if d := authorize(stranger); d != dataplanev1.AuthorizeProxyResponse_DECISION_UNAUTHENTICATED {
		t.Errorf("cookie sealed with a stranger's key: %v, want unauthenticated", d)
	}

	// Once the rotation is over, the old keys open nothing.
	after := cptest.Start(t)
	old := managementv1connect.NewAgentServiceClient(after.HTTPClient, after.URL, connect.WithInterceptors(
		authn.ClientInterceptor(authn.NewSigner(oldAPI, authn.IssuerRails, authn.AudienceManagement, "rails"))))
	_, err = old.ListAgents(ctx, &managementv1.ListAgentsRequest{})
	wantCode(t, err, connect.CodeUnauthenticated)

	// Extra keys are checked like the others.
	_, err = controlplane.New(controlplane.Options{Pool: pool(env), APISecretKey: env.APIKey, PrivateAPISecretKey: env.PrivateKey,
		ExtraAPISecretKeys: [][]byte{[]byte("short")}})
	if err == nil {
		t.Error("a 5-byte extra key was accepted")
	}
}
