package proxy

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// Requests without Origin (kubectl, client-go, CI) pay no allocation for
// CORS: the Origin lookup, the upstream Access-Control-* sweep and the
// (skipped) CORS headers of the answer.
func TestCORSNoOriginAllocatesNothing(t *testing.T) {
	p := &Proxy{opts: Options{AllowedOrigins: []string{"https://gitlab.example.com"}, PathPrefix: DefaultPathPrefix}}
	r := httptest.NewRequest("GET", "http://kas/k8s-proxy/api", nil)
	r.Header.Set("Authorization", "Bearer pat:1:x")
	resp := http.Header{"Content-Type": {"application/json"}, "Audit-Id": {"x"}, "Cache-Control": {"no-cache, private"}}
	allocs := testing.AllocsPerRun(100, func() {
		origin, ok := requestOrigin(r)
		if ok {
			t.Fatal("an Origin")
		}
		stripUpstreamCORS(resp)
		setCORS(resp, origin)
		setCORS(resp, p.allowedOrigin(r))
	})
	if allocs != 0 {
		t.Errorf("%v allocations per request without Origin", allocs)
	}
	if len(resp) != 3 {
		t.Errorf("response headers changed: %v", resp)
	}
}

func TestAddVaryOrigin(t *testing.T) {
	for _, c := range []struct{ in, want []string }{
		{nil, []string{"Origin"}},
		{[]string{"Accept-Encoding"}, []string{"Accept-Encoding", "Origin"}},
		{[]string{"Accept-Encoding, origin"}, []string{"Accept-Encoding, origin"}},
		{[]string{"*"}, []string{"*"}},
	} {
		h := http.Header{}
		if c.in != nil {
			h["Vary"] = c.in
		}
		addVaryOrigin(h)
		if got := h["Vary"]; len(got) != len(c.want) || got[len(got)-1] != c.want[len(c.want)-1] {
			t.Errorf("Vary %q -> %q, want %q", c.in, got, c.want)
		}
	}
}
