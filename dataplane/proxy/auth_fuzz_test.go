package proxy

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/kas-project/kas/internal/kascookie"
)

// FuzzParseCredential feeds arbitrary Authorization, cookie, agent-ID and
// CSRF inputs to the proxy's credential parser: it never panics, accepts
// only positive agent IDs and known kinds, and its errors (shown to
// callers) never echo the presented secret.
func FuzzParseCredential(f *testing.F) {
	f.Add("Bearer pat:7:kaspat_7_abc", "", "", "GET", "")
	f.Add("Bearer ci:12:kasci_12_xyz", "", "", "POST", "")
	f.Add("bearer  pat:007:tok ", "", "", "GET", "")
	f.Add("Bearer pat:-1:x", "", "", "GET", "")
	f.Add("Bearer pat:9223372036854775808:x", "", "", "GET", "")
	f.Add("Bearer ci::x", "", "", "GET", "")
	f.Add("Basic dXNlcjpwYXNz", "", "", "GET", "")
	f.Add("", "c2Vzc2lvbg", "3", "DELETE", "")
	f.Add("", "c2Vzc2lvbg", "", "POST", "gitlab-agent-id=4&x-csrf-token=abc")
	f.Add("", "%zz", "1\x00", "PATCH", "%")
	f.Add("Bearer pat:\x01:kaspat_\x01", "", "", "GET", "")
	f.Add("\x01 pat:1:x", "", "", "GET", "")
	f.Add("", "\x01", "\x01", "PUT", "gitlab-agent-id=\x01")
	f.Fuzz(func(t *testing.T, authz, cookie, agentID, method, rawQuery string) {
		r := &http.Request{Method: method, Header: http.Header{}, URL: &url.URL{RawQuery: rawQuery}}
		if authz != "" {
			r.Header.Set("Authorization", authz)
		}
		if cookie != "" {
			r.Header.Set("Cookie", kascookie.Name+"="+cookie)
		}
		if agentID != "" {
			r.Header.Set(AgentIDHeader, agentID)
		}
		cred, err := parseCredential(r)
		if err != nil {
			// Messages are fixed text: an input byte that no message holds
			// (0x01) must never come back in one.
			if strings.ContainsRune(err.Error(), 0x01) {
				t.Fatalf("error %q echoes the caller's input", err)
			}
			return
		}
		if cred.agentID <= 0 {
			t.Fatalf("accepted agent ID %d", cred.agentID)
		}
		switch cred.kind {
		case kindPAT, kindCI:
			if cred.secret == "" || authz == "" {
				t.Fatalf("bearer credential %+v without a secret or header", cred)
			}
		case kindCookie:
			if authz != "" {
				t.Fatal("a cookie credential while an Authorization header was sent")
			}
			if !cred.unsafe && cred.csrf != "" {
				t.Fatal("CSRF token kept for a safe method")
			}
		default:
			t.Fatalf("unknown credential kind %d", cred.kind)
		}
		// Deterministic: the same request parses the same way.
		again, err := parseCredential(r)
		if err != nil || again != cred {
			t.Fatalf("second parse = %+v, %v; first %+v", again, err, cred)
		}
	})
}
