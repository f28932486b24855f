package discovery

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dpv1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
	mgmtv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/internal/cptest"
)

// countingAuth wraps the real AuthService client and counts calls.
// When hold is set, calls wait for it to close.
type countingAuth struct {
	dataplanev1connect.AuthServiceClient
	calls atomic.Int64
	hold  chan struct{}
}

func (c *countingAuth) AuthenticateAgent(ctx context.Context, r *dpv1.AuthenticateAgentRequest) (*dpv1.AuthenticateAgentResponse, error) {
	c.calls.Add(1)
	if c.hold != nil {
		<-c.hold
	}
	return c.AuthServiceClient.AuthenticateAgent(ctx, r)
}

type agentToken struct {
	agentID, tokenID int64
	secret           string
}

func createAgentToken(t *testing.T, env *cptest.Env, name string) agentToken {
	t.Helper()
	ctx := context.Background()
	a, err := env.Agents.CreateAgent(ctx, &mgmtv1.CreateAgentRequest{ProjectId: 9, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := env.Agents.CreateAgentToken(ctx, &mgmtv1.CreateAgentTokenRequest{AgentId: a.GetAgent().GetId(), Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	return agentToken{agentID: a.GetAgent().GetId(), tokenID: tok.GetToken().GetId(), secret: tok.GetSecret()}
}

func revoke(t *testing.T, env *cptest.Env, tok agentToken) {
	t.Helper()
	if _, err := env.Agents.RevokeAgentToken(context.Background(), &mgmtv1.RevokeAgentTokenRequest{TokenId: tok.tokenID}); err != nil {
		t.Fatal(err)
	}
}

func newAuthenticator(t *testing.T, client dataplanev1connect.AuthServiceClient, clk *fakeClock, logs *logRecorder) *AgentAuthenticator {
	t.Helper()
	if logs == nil {
		logs = &logRecorder{}
	}
	a, err := NewAgentAuthenticator(AuthenticatorOptions{Auth: client, Clock: clk, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return a
}

func TestAgentAuthenticatorCache(t *testing.T) {
	clk := newFakeClock()
	env := startControlPlane(t, clk)
	tok := createAgentToken(t, env, "agent-one")
	auth := &countingAuth{AuthServiceClient: env.Auth}
	a := newAuthenticator(t, auth, clk, nil)
	ctx := context.Background()

	info, err := a.Valid(ctx, tok.secret)
	if err != nil {
		t.Fatal(err)
	}
	want := AgentInfo{AgentID: tok.agentID, TokenID: tok.tokenID, AgentName: "agent-one", ProjectID: 9}
	if info != want {
		t.Fatalf("Valid() = %+v, want %+v", info, want)
	}
	// Keyed by the token's SHA-256, never the token.
	a.mu.Lock()
	_, byHash := a.cache[sha256.Sum256([]byte(tok.secret))]
	n := len(a.cache)
	a.mu.Unlock()
	if !byHash || n != 1 {
		t.Fatalf("cache has %d entries, keyed by hash: %v", n, byHash)
	}

	// Accepted for 30 s without asking again, even once revoked.
	revoke(t, env, tok)
	clk.Advance(30*time.Second - time.Millisecond)
	if _, err := a.Valid(ctx, tok.secret); err != nil {
		t.Fatalf("cached acceptance: %v", err)
	}
	if got := auth.calls.Load(); got != 1 {
		t.Fatalf("%d calls, want 1", got)
	}
	clk.Advance(time.Millisecond)
	if _, err := a.Valid(ctx, tok.secret); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("revoked token after the allow TTL: %v", err)
	}

	// Refused for 5 s without asking again.
	clk.Advance(5*time.Second - time.Millisecond)
	if _, err := a.Valid(ctx, tok.secret); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("cached refusal: %v", err)
	}
	if got := auth.calls.Load(); got != 2 {
		t.Fatalf("%d calls, want 2", got)
	}
	clk.Advance(time.Millisecond)
	if _, err := a.Valid(ctx, tok.secret); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("refusal after the deny TTL: %v", err)
	}
	if got := auth.calls.Load(); got != 3 {
		t.Fatalf("%d calls, want 3", got)
	}

	// Garbage and empty tokens are refused; empty without a call.
	for _, bad := range []string{"kasagent_1_nope", "not-a-token", ""} {
		if _, err := a.Valid(ctx, bad); !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("Valid(%q) = %v", bad, err)
		}
	}
	if got := auth.calls.Load(); got != 5 {
		t.Fatalf("%d calls, want 5", got)
	}
	if st := a.Stats(); st.Hits != 2 || st.Misses != 5 || st.Denied != 6 || st.Errors != 0 {
		t.Fatalf("stats %+v", st)
	}

	// Entries too old to serve even when stale are swept.
	clk.Advance(10 * time.Minute)
	if _, err := a.Valid(ctx, "not-a-token"); !errors.Is(err, ErrUnauthenticated) {
		t.Fatal(err)
	}
	a.mu.Lock()
	n = len(a.cache)
	a.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d cache entries after the sweep, want 1", n)
	}
}

func TestAgentAuthenticatorConcurrentChecksShareOneCall(t *testing.T) {
	clk := newFakeClock()
	env := startControlPlane(t, clk)
	tok := createAgentToken(t, env, "agent-two")
	auth := &countingAuth{AuthServiceClient: env.Auth, hold: make(chan struct{})}
	a := newAuthenticator(t, auth, clk, nil)
	a.flight.onJoin = clk.bc.Notify
	const callers = 20
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for range callers {
		wg.Go(func() {
			_, err := a.Valid(context.Background(), tok.secret)
			errs <- err
		})
	}
	key := sha256.Sum256([]byte(tok.secret))
	clk.bc.WaitFor(t, "callers joining", func() bool { return a.flight.waiters(key) == callers })
	close(auth.hold)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := auth.calls.Load(); got != 1 {
		t.Fatalf("%d calls for %d concurrent checks, want 1", got, callers)
	}
	if st := a.Stats(); st.Misses != callers || st.Hits != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestAgentAuthenticatorRecheckClosesRevokedWithin60s(t *testing.T) {
	clk := newFakeClock()
	env := startControlPlane(t, clk)
	tok := createAgentToken(t, env, "agent-three")
	a := newAuthenticator(t, env.Auth, clk, nil)
	if _, err := a.Valid(context.Background(), tok.secret); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var done atomic.Bool
	result := make(chan error, 1)
	go func() {
		err := a.Recheck(ctx, tok.secret)
		done.Store(true)
		clk.bc.Notify()
		result <- err
	}()
	clk.WaitTimers(t, 1)
	revoke(t, env, tok) // right after the token was checked: the worst case
	var elapsed time.Duration
	for !done.Load() {
		if elapsed > MaxRevocationDelay {
			t.Fatalf("revoked token still accepted after %v", elapsed)
		}
		clk.Advance(time.Second)
		elapsed += time.Second
		// Wait until Recheck is idle again (timer armed) or finished.
		clk.bc.WaitFor(t, "recheck round", func() bool { return done.Load() || clk.Timers() >= 1 })
	}
	if err := <-result; !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("Recheck returned %v", err)
	}
	if elapsed > 50*time.Second {
		t.Fatalf("revocation noticed after %v, want ≤ 50s (allow TTL + recheck interval)", elapsed)
	}
	t.Logf("revocation noticed after %v", elapsed)

	// A valid token keeps its tunnel until the tunnel ends.
	tok2 := createAgentToken(t, env, "agent-four")
	ctx2, cancel2 := context.WithCancel(context.Background())
	go func() { result <- a.Recheck(ctx2, tok2.secret) }()
	for range 5 {
		clk.WaitTimers(t, 1)
		clk.Advance(20 * time.Second)
	}
	clk.WaitTimers(t, 1)
	cancel2()
	if err := <-result; err != nil {
		t.Fatalf("Recheck of a valid token: %v", err)
	}
}

func TestAgentAuthenticatorControlPlaneDown(t *testing.T) {
	clk := newFakeClock()
	env := startControlPlane(t, clk)
	tok := createAgentToken(t, env, "agent-five")
	up, err := url.Parse(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	dialer := &switchDialer{}
	dialer.target.Store(up.Host)
	hc := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true}}
	t.Cleanup(hc.CloseIdleConnections)
	logs := &logRecorder{}
	a := newAuthenticator(t, dataplanev1connect.NewAuthServiceClient(hc, env.URL, env.DataplaneOpt), clk, logs)
	ctx := context.Background()
	if _, err := a.Valid(ctx, tok.secret); err != nil {
		t.Fatal(err)
	}
	dialer.target.Store(closedAddr(t))

	// A token accepted earlier stays accepted; its tunnel stays open.
	clk.Advance(30 * time.Second)
	info, err := a.Valid(ctx, tok.secret)
	if err != nil || info.AgentID != tok.agentID {
		t.Fatalf("Valid during outage = %+v, %v", info, err)
	}
	if logs.Count("WARN", "trusting its last answer", "connection refused") != 1 {
		t.Fatal("stale acceptance not logged")
	}
	// An unknown token cannot be checked: an error, but not a refusal.
	_, err = a.Valid(ctx, "kasagent_1_"+strings.Repeat("x", 43))
	if err == nil || errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("unknown token during outage: %v", err)
	}
	// Past the stale TTL the old acceptance is no longer trusted.
	clk.Advance(10 * time.Minute)
	if _, err := a.Valid(ctx, tok.secret); err == nil || errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("Valid beyond the stale TTL: %v", err)
	}
	if st := a.Stats(); st.Stale != 1 || st.Errors != 2 {
		t.Fatalf("stats %+v", st)
	}
	logs.mu.Lock()
	defer logs.mu.Unlock()
	for _, r := range logs.recs {
		if strings.Contains(r, tok.secret) {
			t.Fatalf("token logged: %s", r)
		}
	}
}

func TestAuthenticatorOptionsValidate(t *testing.T) {
	_, err := NewAgentAuthenticator(AuthenticatorOptions{AllowTTL: 50 * time.Second})
	want := "agent authenticator: AuthService client is required\n" +
		"agent authenticator: allow TTL (50s) + recheck interval (20s) must not exceed 1m0s, the longest a revoked token may keep its tunnels"
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v, want %q", err, want)
	}
}
