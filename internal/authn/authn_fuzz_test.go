package authn_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"hash"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kas-project/kas/internal/authn"
)

// Keys of the fuzz targets: fixed, so that a corpus entry means the same
// thing on every run.
var (
	fuzzKey   = bytes.Repeat([]byte{0x42}, authn.KeySize)
	otherKey  = bytes.Repeat([]byte{0x24}, authn.KeySize)
	validHdr  = `{"alg":"HS256","typ":"JWT"}`
	validBody = `{"iss":"gitlab","aud":"kas-management","sub":"rails","iat":"@now","exp":"@exp"}`
)

func b64(s []byte) string { return base64.RawURLEncoding.EncodeToString(s) }

func mac(h func() hash.Hash, key []byte, msg string) []byte {
	m := hmac.New(h, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// checkAccepted fails t unless a token that v accepted deserved it: the
// header says HS256, the signature is HMAC-SHA256 with key over the first
// two segments, and the claims name issuer and audience and expire within
// MaxLifetime. It is the oracle of every target here, computed without the
// JWT library.
func checkAccepted(t *testing.T, tok string, key []byte, issuer, audience string) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("accepted %q: not three segments", tok)
	}
	dec := base64.RawURLEncoding.Strict()
	hdr, err := dec.DecodeString(parts[0])
	if err != nil {
		t.Fatalf("accepted %q: header is not canonical base64url: %v", tok, err)
	}
	var h struct{ Alg any }
	if err := json.Unmarshal(hdr, &h); err != nil || h.Alg != "HS256" {
		t.Fatalf("accepted %q: header %s does not say alg HS256", tok, hdr)
	}
	sig, err := dec.DecodeString(parts[2])
	if err != nil {
		t.Fatalf("accepted %q: signature is not canonical base64url: %v", tok, err)
	}
	if !hmac.Equal(sig, mac(sha256.New, key, parts[0]+"."+parts[1])) {
		t.Fatalf("accepted %q: not signed with HS256 and the verifier's key", tok)
	}
	body, err := dec.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("accepted %q: claims are not canonical base64url: %v", tok, err)
	}
	var c struct {
		Iss any
		Aud any
		Exp any
	}
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	if err := d.Decode(&c); err != nil {
		t.Fatalf("accepted %q: claims %s: %v", tok, body, err)
	}
	if c.Iss != issuer {
		t.Fatalf("accepted %q: issuer %v, want %q", tok, c.Iss, issuer)
	}
	switch aud := c.Aud.(type) {
	case string:
		if aud != audience {
			t.Fatalf("accepted %q: audience %q, want %q", tok, aud, audience)
		}
	case []any:
		found := false
		for _, a := range aud {
			found = found || a == audience
		}
		if !found {
			t.Fatalf("accepted %q: audiences %v lack %q", tok, aud, audience)
		}
	default:
		t.Fatalf("accepted %q: audience %v, want %q", tok, c.Aud, audience)
	}
	n, ok := c.Exp.(json.Number)
	if !ok {
		t.Fatalf("accepted %q: no numeric exp (%v)", tok, c.Exp)
	}
	exp, err := n.Float64()
	if err != nil {
		t.Fatalf("accepted %q: exp %v: %v", tok, n, err)
	}
	// A little slack either side for the time the test itself takes.
	now := float64(time.Now().Unix())
	if exp < now-10 || exp > now+(authn.MaxLifetime+10*time.Second).Seconds() {
		t.Fatalf("accepted %q: exp %v is %vs from now, outside the accepted window", tok, exp, exp-now)
	}
}

// verify runs v on tok, checks that errors are the documented ones, and
// returns whether tok was accepted.
func verify(t *testing.T, v *authn.Verifier, tok string) bool {
	t.Helper()
	sub, err := v.Verify(tok)
	if err != nil {
		if !errors.Is(err, authn.ErrInvalid) {
			t.Fatalf("Verify(%q): error %v is not ErrInvalid", tok, err)
		}
		if sub != "" {
			t.Fatalf("Verify(%q): subject %q returned with an error", tok, sub)
		}
		return false
	}
	h := http.Header{"Authorization": {"Bearer " + tok}}
	if hsub, err := v.VerifyHeader(h); err != nil || hsub != sub {
		t.Fatalf("VerifyHeader disagrees with Verify on %q: %q, %v", tok, hsub, err)
	}
	return true
}

// FuzzVerify: arbitrary strings never panic, never pass, and fail with
// ErrInvalid (or ErrMissing in a header).
func FuzzVerify(f *testing.F) {
	for _, s := range []string{
		"", ".", "..", "a.b.c", "a.b.c.d",
		"eyJhbGciOiJub25lIn0.eyJpc3MiOiJnaXRsYWIifQ.",
		"eyJhbGciOiJIUzI1NiJ9.e30.AAAA",
		"eyJhbGciOiJIUzI1NiJ9.bnVsbA.x",
		"eyJhbGciOiJIUzI1NiJ9..",
		"Bearer x", strings.Repeat("a.", 1000),
		"eyJhbGciOiJIUzI1NiIsImtpZCI6Ii4uLy4uLy4uL2V0Yy9wYXNzd2QifQ.e30.e30",
	} {
		f.Add(s)
	}
	v := authn.NewVerifier(fuzzKey, authn.IssuerRails, authn.AudienceManagement)
	f.Fuzz(func(t *testing.T, raw string) {
		if verify(t, v, raw) {
			// Only a token made with fuzzKey in the last minutes could pass.
			checkAccepted(t, raw, fuzzKey, authn.IssuerRails, authn.AudienceManagement)
		}
		if _, err := v.VerifyHeader(http.Header{"Authorization": {raw}}); err == nil {
			checkAccepted(t, strings.TrimPrefix(raw, "Bearer "), fuzzKey, authn.IssuerRails, authn.AudienceManagement)
		}
	})
}

// forge builds a token from a header and claims, substituting "@now",
// "@exp" (a minute ahead), "@past" (an hour ago) and "@far" (a day ahead)
// with Unix times, and signs it as mode says.
func forge(header, claims string, mode byte) string {
	now := time.Now().Unix()
	claims = strings.NewReplacer(
		`"@now"`, strconv.FormatInt(now, 10),
		`"@exp"`, strconv.FormatInt(now+60, 10),
		`"@past"`, strconv.FormatInt(now-3600, 10),
		`"@far"`, strconv.FormatInt(now+86400, 10),
	).Replace(claims)
	in := b64([]byte(header)) + "." + b64([]byte(claims))
	switch mode % 6 {
	case 0:
		return in + "." + b64(mac(sha256.New, fuzzKey, in))
	case 1:
		return in + "." + b64(mac(sha256.New, otherKey, in))
	case 2:
		return in + "." + b64(mac(sha512.New, fuzzKey, in))
	case 3:
		return in + "." + b64(mac(sha512.New384, fuzzKey, in))
	case 4:
		return in + "."
	default: // the key as an "unsigned" signature: a classic confusion
		return in + "." + b64(fuzzKey)
	}
}

// FuzzVerifyForged builds tokens from fuzzed headers and claims, signed
// correctly or not: whatever Verify accepts must carry alg HS256, a valid
// HMAC-SHA256 with the key, the right issuer and audience and a short expiry.
func FuzzVerifyForged(f *testing.F) {
	f.Add(validHdr, validBody, byte(0))
	for mode := range byte(6) {
		f.Add(validHdr, validBody, mode)
	}
	for _, h := range []string{
		`{"alg":"none"}`, `{"alg":"HS512"}`, `{"alg":"RS256"}`, `{"alg":"hs256"}`, `{"alg":"HS256 "}`,
		`{"alg":["HS256"]}`, `{"alg":"HS256","alg":"none"}`, `{"alg":"none","alg":"HS256"}`,
		`{"alg":"HS256","kid":"../../../../dev/null"}`, `{"alg":"HS256","crit":["exp"]}`, `{}`, `null`, `[]`,
	} {
		f.Add(h, validBody, byte(0))
	}
	for _, c := range []string{
		`{"iss":"gitlab","aud":["x","kas-management"],"exp":"@exp"}`,
		`{"iss":"gitlab","aud":"kas-controlplane","exp":"@exp"}`,
		`{"iss":"kas-dataplane","aud":"kas-management","exp":"@exp"}`,
		`{"iss":"gitlab","aud":"kas-management"}`,
		`{"iss":"gitlab","aud":"kas-management","exp":"@past"}`,
		`{"iss":"gitlab","aud":"kas-management","exp":"@far"}`,
		`{"iss":"gitlab","aud":"kas-management","exp":"1e300"}`,
		`{"iss":"gitlab","aud":"kas-management","exp":1e300}`,
		`{"iss":"gitlab","aud":"kas-management","exp":-1}`,
		`{"iss":"gitlab","aud":"kas-management","exp":"@exp","nbf":"@far"}`,
		`{"iss":"gitlab","aud":"kas-management","exp":"@exp","iat":"@far"}`,
		`{"iss":"gitlab","aud":"kas-management","exp":"@exp","iss":"evil"}`,
		`{"iss":"evil","iss":"gitlab","aud":"kas-management","exp":"@exp"}`,
		`{"iss":["gitlab"],"aud":"kas-management","exp":"@exp"}`,
		`{"iss":"gitlab","aud":[["kas-management"]],"exp":"@exp"}`,
		`{"iss":"gitlab","aud":"kas-management","exp":"@exp"`,
		`{"iss":"gitlab\u0000","aud":"kas-management","exp":"@exp"}`,
	} {
		f.Add(validHdr, c, byte(0))
	}
	v := authn.NewVerifier(fuzzKey, authn.IssuerRails, authn.AudienceManagement)
	f.Fuzz(func(t *testing.T, header, claims string, mode byte) {
		tok := forge(header, claims, mode)
		accepted := verify(t, v, tok)
		if accepted {
			checkAccepted(t, tok, fuzzKey, authn.IssuerRails, authn.AudienceManagement)
		}
		if header == validHdr && claims == validBody && mode == 0 && !accepted {
			t.Fatalf("a genuine token was refused: %q", tok)
		}
	})
}

// mutate applies one edit to tok.
func mutate(tok string, op byte, pos uint16, val byte) string {
	b := []byte(tok)
	i := int(pos) % (len(b) + 1)
	switch op % 8 {
	case 0: // flip one bit
		if i < len(b) {
			b[i] ^= 1 << (val % 8)
		}
	case 1: // replace a byte
		if i < len(b) {
			b[i] = val
		}
	case 2: // insert a byte
		b = append(b[:i], append([]byte{val}, b[i:]...)...)
	case 3: // delete a byte
		if i < len(b) {
			b = append(b[:i], b[i+1:]...)
		}
	case 4: // truncate
		b = b[:i]
	case 5: // swap header and claims
		p := strings.Split(tok, ".")
		return p[1] + "." + p[0] + "." + p[2]
	case 6: // claims of another token, same signature
		p := strings.Split(tok, ".")
		c, _ := base64.RawURLEncoding.DecodeString(p[1])
		c = bytes.Replace(c, []byte(authn.AudienceManagement), []byte(authn.AudienceDataplane), 1)
		return p[0] + "." + b64(c) + "." + p[2]
	default: // append a fourth segment
		return tok + "." + string(rune(val))
	}
	return string(b)
}

// FuzzVerifyMutated edits a genuine token: any change at all must make it
// fail, and the genuine one must pass. Tokens for the other API, signed
// with the other key, must fail too.
func FuzzVerifyMutated(f *testing.F) {
	for op := range byte(8) {
		for _, pos := range []uint16{0, 10, 36, 37, 100, 150, 199, 200, 1000} {
			f.Add(op, pos, byte(1))
		}
	}
	v := authn.NewVerifier(fuzzKey, authn.IssuerRails, authn.AudienceManagement)
	rails := authn.NewSigner(fuzzKey, authn.IssuerRails, authn.AudienceManagement, "rails")
	// The same key, but the dataplane's claims; and the dataplane's key
	// with the management claims.
	dataplane := authn.NewSigner(fuzzKey, authn.IssuerDataplane, authn.AudienceDataplane, "node")
	wrongKey := authn.NewSigner(otherKey, authn.IssuerRails, authn.AudienceManagement, "rails")
	f.Fuzz(func(t *testing.T, op byte, pos uint16, val byte) {
		tok, err := rails.Token()
		if err != nil {
			t.Fatal(err)
		}
		m := mutate(tok, op, pos, val)
		accepted := verify(t, v, m)
		if m == tok && !accepted {
			t.Fatalf("the genuine token %q was refused", tok)
		}
		if m != tok && accepted {
			t.Fatalf("mutated token %q (of %q, op %d at %d) was accepted", m, tok, op%8, pos)
		}
		for _, s := range []*authn.Signer{dataplane, wrongKey} {
			other, err := s.Token()
			if err != nil {
				t.Fatal(err)
			}
			if verify(t, v, mutate(other, op, pos, val)) {
				t.Fatalf("a token for another API or key was accepted: %q", other)
			}
		}
	})
}
