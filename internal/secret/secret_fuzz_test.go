package secret

import (
	"encoding/base64"
	"strconv"
	"strings"
	"testing"
)

var prefixes = []string{AgentToken, AccessToken, CIJobToken, Session, CSRF}

// FuzzParse: Parse never panics and accepts only what New could have made:
// the prefix, a canonical positive decimal ID and the canonical base64url
// of 32 bytes, under exactly one prefix.
func FuzzParse(f *testing.F) {
	for i, p := range prefixes {
		tok, _ := New(p, int64(i+1))
		f.Add(tok)
	}
	random := strings.Repeat("A", 43)
	for _, s := range []string{
		"", "_", "kasagent__" + random, "kasagent_0_" + random, "kasagent_-1_" + random, "kasagent_+1_" + random,
		"kasagent_01_" + random, "kasagent_9223372036854775807_" + random, "kasagent_9223372036854775808_" + random,
		"kasagent_1_" + random + "=", "kasagent_1_" + random[:42] + "B", "kasagent_1_" + random[:42] + "\n",
		"kasagent_1_" + random[:41] + "=" + "=", "kasagent_1_" + strings.Repeat("/", 43), "kasagent_1_" + strings.Repeat("+", 43),
		"kasagent_1_2_" + random, "kasagent_1_" + random + "_x", "pat:1:kaspat_1_" + random, "kaspat_1_" + random,
		"kasagent_١_" + random, "KASAGENT_1_" + random, "kasagent_1 _" + random,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		accepted := 0
		for _, p := range prefixes {
			id, r, ok := Parse(p, tok)
			if !ok {
				if id != 0 || r != "" {
					t.Fatalf("Parse(%q, %q) refused but returned %d, %q", p, tok, id, r)
				}
				continue
			}
			accepted++
			if id <= 0 {
				t.Fatalf("Parse(%q, %q): id %d", p, tok, id)
			}
			if want := p + "_" + strconv.FormatInt(id, 10) + "_" + r; tok != want {
				t.Fatalf("Parse(%q, %q) = %d, %q: does not reassemble into the token", p, tok, id, r)
			}
			b, err := base64.RawURLEncoding.DecodeString(r)
			if err != nil || len(b) != 32 || base64.RawURLEncoding.EncodeToString(b) != r {
				t.Fatalf("Parse(%q, %q): random part %q is not the canonical base64url of 32 bytes", p, tok, r)
			}
			if strings.Contains(tok, ":") {
				t.Fatalf("Parse(%q, %q): accepted a ':'", p, tok)
			}
		}
		if accepted > 1 {
			t.Fatalf("%q parses under %d prefixes", tok, accepted)
		}
	})
}
