package proxy_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kas-project/kas/dataplane"
	"github.com/kas-project/kas/internal/ratelimit"
	"github.com/kas-project/kas/tests/framework"
)

// Refusals count against the caller's address, answers the control plane
// could not give and cached decisions do not; a limited caller gets a 429
// Status with Retry-After and its good, cached token keeps working.
func TestFailedAuthenticationsAreRateLimited(t *testing.T) {
	const burst = 2
	limiter, err := ratelimit.New(ratelimit.Options{Burst: burst, Refill: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t)
	cp := framework.ProxyTo(t, strings.TrimPrefix(w.env.URL, "http://"))
	n := w.node(t, "node-a", func(o *dataplane.Options) {
		o.ControlPlaneURL = "http://" + cp.Addr()
		o.KubernetesAPI.FailedAuth = limiter
	})
	a, _ := w.agent(t, n, "a", "")
	pat, _ := w.pat(t, a.ID)
	if resp, body := do(t, "GET", n.ProxyURL+"api", auth(bearer("pat", a.ID, pat)), nil); resp.StatusCode != 200 {
		t.Fatalf("good token: %d %s", resp.StatusCode, body)
	}
	cp.Down()
	for i := range 2 * burst {
		resp, body := do(t, "GET", n.ProxyURL+"api", auth(bearer("pat", a.ID, fmt.Sprintf("unknown-%d", i))), nil)
		wantStatus(t, resp, body, 503, metav1.StatusReasonServiceUnavailable, "control plane is unavailable")
	}
	cp.Up()
	for i := range burst {
		resp, body := do(t, "GET", n.ProxyURL+"api", auth(bearer("pat", a.ID, fmt.Sprintf("wrong-%d", i))), nil)
		if resp.StatusCode != 401 {
			t.Fatalf("wrong token %d: %d %s", i, resp.StatusCode, body)
		}
	}
	resp, body := do(t, "GET", n.ProxyURL+"api", auth(bearer("pat", a.ID, "wrong-again")), nil)
	wantStatus(t, resp, body, 429, metav1.StatusReasonTooManyRequests, "too many failed authentications")
	if ra := resp.Header.Get("Retry-After"); ra != "3600" {
		t.Errorf("Retry-After %q, want 3600", ra)
	}
	if resp, body := do(t, "GET", n.ProxyURL+"api", auth(bearer("pat", a.ID, pat)), nil); resp.StatusCode != 200 {
		t.Errorf("good (cached) token of a limited caller: %d %s", resp.StatusCode, body)
	}
	if got := n.Metric(t, "proxy_auth_rate_limited_total"); got != 1 {
		t.Errorf("kas_dataplane_proxy_auth_rate_limited_total = %v, want 1", got)
	}
}
