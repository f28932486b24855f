package impersonation

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
)

func TestEncodeDecodeRoundTrip(t *testing.T) {
	id := Identity{
		Username: "gitlab:ci_job:9",
		Groups:   []string{"gitlab:ci_job", "gitlab:project:3"},
		UID:      "u-1",
		Extra:    map[string][]string{"agent.gitlab.com/id": {"1"}, "k": {"a", "b"}},
	}
	s, err := Encode(id)
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(s, "=+/\r\n") {
		t.Errorf("encoded %q is not unpadded base64url", s)
	}
	got, err := Decode(s)
	if err != nil {
		t.Fatal(err)
	}
	if got.Username != id.Username || got.UID != id.UID || !slices.Equal(got.Groups, id.Groups) ||
		len(got.Extra) != 2 || !slices.Equal(got.Extra["k"], []string{"a", "b"}) {
		t.Errorf("round trip = %+v, want %+v", got, id)
	}
}

func TestDecodeRefusesMalformed(t *testing.T) {
	groupsOnly, _ := Encode(Identity{Groups: []string{"system:masters"}})
	for name, v := range map[string]string{
		"not base64":            "***",
		"not json":              "bm90IGpzb24",
		"groups without a user": groupsOnly,
		"too long":              strings.Repeat("A", maxEncoded+1),
	} {
		if _, err := Decode(v); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

// The escaping must be undone by what the API server does:
// url.PathUnescape of the lower-cased, canonicalised header suffix.
func TestSetHeadersEscapesExtraKeysAsKubernetes(t *testing.T) {
	keys := []string{"agent.gitlab.com/id", "scopes", "a b%c:d", "ünï"}
	id := Identity{Username: "u", Extra: map[string][]string{}}
	for _, k := range keys {
		id.Extra[k] = []string{"v:" + k}
	}
	h := http.Header{}
	id.SetHeaders(h)
	if h.Get(UserHeader) != "u" || len(h) != 1+len(keys) {
		t.Fatalf("headers = %v", h)
	}
	got := map[string]string{}
	for name, vs := range h {
		rest, ok := strings.CutPrefix(name, ExtraHeaderPrefix)
		if !ok {
			continue
		}
		key, err := url.PathUnescape(strings.ToLower(rest))
		if err != nil {
			t.Fatalf("%s does not unescape: %v", name, err)
		}
		got[key] = vs[0]
	}
	for _, k := range keys {
		if got[strings.ToLower(k)] != "v:"+k {
			t.Errorf("extra %q arrived as %v", k, got)
		}
	}
	if e := EscapeExtraKey("agent.gitlab.com/id"); e != "agent.gitlab.com%2Fid" {
		t.Errorf("EscapeExtraKey = %q", e)
	}
	empty := http.Header{}
	Identity{}.SetHeaders(empty)
	if len(empty) != 0 {
		t.Errorf("empty identity set %v", empty)
	}
}
