package agentserver

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kas-project/kas/dataplane/discovery"
	"github.com/kas-project/kas/dataplane/tunnel"
	"github.com/kas-project/kas/internal/ratelimit"
	"github.com/kas-project/kas/internal/secret"
)

// flakyAuth answers "unknown for now" for one token, as when the control
// plane is unreachable, and counts the checks that reach it.
type flakyAuth struct {
	Authenticator
	flaky  string
	checks atomic.Int64
}

func (f *flakyAuth) Valid(ctx context.Context, token string) (discovery.AgentInfo, error) {
	f.checks.Add(1)
	if token == f.flaky {
		return discovery.AgentInfo{}, errors.New("control plane unreachable")
	}
	return f.Authenticator.Valid(ctx, token)
}

// Only refused tokens count against a client; once it has none left, its
// handshakes are refused with 429 and Retry-After before the token is
// checked — except with the token of a tunnel open here.
func TestFailedHandshakesAreRateLimited(t *testing.T) {
	const burst = 3
	limiter, err := ratelimit.New(ratelimit.Options{Burst: burst, Refill: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	f := &flakyAuth{}
	e := startWith(t, discovery.AuthenticatorOptions{}, Options{FailedAuth: limiter},
		func(a Authenticator) Authenticator { f.Authenticator = a; return f })
	f.flaky, _ = secret.New(secret.AgentToken, e.agent)
	var accepted atomic.Int64
	e.dial(t, &accepted) // the agent's tunnel, before any failure

	handshake := func(token string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http"+strings.TrimPrefix(e.url, "ws"), nil)
		req.Header.Set("Sec-WebSocket-Protocol", tunnel.Subprotocol)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}
	// Checks that cannot be answered do not count.
	for range 2 * burst {
		if code, _ := handshake(f.flaky); code != http.StatusServiceUnavailable {
			t.Fatalf("token that cannot be checked: %d, want 503", code)
		}
	}
	for i := range burst {
		wrong, _ := secret.New(secret.AgentToken, e.agent)
		if code, _ := handshake(wrong); code != http.StatusUnauthorized {
			t.Fatalf("wrong token %d: %d, want 401", i, code)
		}
	}
	checks := f.checks.Load()
	wrong, _ := secret.New(secret.AgentToken, e.agent)
	if code, ra := handshake(wrong); code != http.StatusTooManyRequests || ra != "3600" {
		t.Fatalf("wrong token after the burst: %d, Retry-After %q; want 429, 3600", code, ra)
	}
	if code, _ := handshake(f.flaky); code != http.StatusTooManyRequests {
		t.Fatalf("any other token after the burst: %d, want 429", code)
	}
	if got := f.checks.Load(); got != checks {
		t.Errorf("%d tokens checked while the client was limited", got-checks)
	}
	// The token of the open tunnel still opens a second one.
	e.dial(t, &accepted)
	if st := e.srv.Stats(); st.RefusedRateLimited != 2 || st.RefusedUnauthenticated != burst || st.Accepted != 2 {
		t.Errorf("stats %+v", st)
	}
}
