package kascookie

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os/exec"
	"strings"
	"testing"
)

func key(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func TestRoundTrip(t *testing.T) {
	const sid = "kassess_42_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	c1, err := Encrypt(key(1), sid)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := Encrypt(key(1), sid)
	if err != nil {
		t.Fatal(err)
	}
	if c1 == c2 {
		t.Fatal("two encryptions gave the same cookie: nonce is not random")
	}
	if strings.ContainsAny(c1, "+/=%") {
		t.Fatalf("cookie %q is not base64url without padding", c1)
	}
	for _, c := range []string{c1, c2} {
		got, err := Decrypt(key(1), c)
		if err != nil || got != sid {
			t.Fatalf("Decrypt = %q, %v; want %q", got, err, sid)
		}
	}
}

func TestRejects(t *testing.T) {
	c, err := Encrypt(key(1), "kassess_1_xy")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.RawURLEncoding.DecodeString(c)
	flip := func(i int) string {
		b := bytes.Clone(raw)
		b[i] ^= 1
		return base64.RawURLEncoding.EncodeToString(b)
	}
	cases := map[string]struct {
		key    []byte
		cookie string
	}{
		"wrong key":       {key(2), c},
		"nonce flipped":   {key(1), flip(0)},
		"body flipped":    {key(1), flip(nonceSize)},
		"tag flipped":     {key(1), flip(len(raw) - 1)},
		"truncated":       {key(1), c[:len(c)-2]},
		"too short":       {key(1), base64.RawURLEncoding.EncodeToString(raw[:nonceSize+tagSize-1])},
		"padding":         {key(1), base64.URLEncoding.EncodeToString(raw)}, // 40 bytes: padded
		"std alphabet":    {key(1), "+/" + c[2:]},
		"empty":           {key(1), ""},
		"huge":            {key(1), strings.Repeat("A", maxCookie+1)},
		"other ad (swap)": {key(1), sealWithAD(t, key(1), raw[:nonceSize], "kassess_1_xy", "_gitlab_session")},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got, err := Decrypt(tc.key, tc.cookie); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Decrypt = %q, %v; want ErrInvalid", got, err)
			}
		})
	}
}

func sealWithAD(t *testing.T, apiKey, nonce []byte, pt, ad string) string {
	t.Helper()
	aead, err := newAEAD(apiKey)
	if err != nil {
		t.Fatal(err)
	}
	out := aead.Seal(bytes.Clone(nonce), nonce, []byte(pt), []byte(ad))
	return base64.RawURLEncoding.EncodeToString(out)
}

// TestVector pins the format: a change here breaks every Rails deployment.
func TestVector(t *testing.T) {
	k, err := Key(key(7))
	if err != nil {
		t.Fatal(err)
	}
	// HKDF-SHA256(ikm=0x07*32, salt="", info=Info, 32), computed independently
	// (Ruby OpenSSL::KDF.hkdf and Python cryptography agree).
	const wantKey = "7054a31f4c3e89eb4d5d99d94f00cefef436d92ba991a61b447b5ed67c78b44e"
	if got := hex.EncodeToString(k); got != wantKey {
		t.Errorf("Key = %s, want %s", got, wantKey)
	}
	c, err := seal(key(7), bytes.Repeat([]byte{9}, nonceSize), "kassess_5_abc")
	if err != nil {
		t.Fatal(err)
	}
	const wantCookie = "CQkJCQkJCQkJCQkJnbOLpgJkVxlNJRfFg5iDZRmKZ3YTZdFmEE-DJuU"
	if c != wantCookie {
		t.Errorf("cookie = %s, want %s", c, wantCookie)
	}
}

// TestRuby checks that Rails can produce and read cookies with plain OpenSSL,
// using the snippet from the package documentation.
func TestRuby(t *testing.T) {
	ruby, err := exec.LookPath("ruby")
	if err != nil {
		t.Skip("ruby not installed")
	}
	k := key(3)
	const sid = "kassess_77_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
	run := func(script string, args ...string) string {
		t.Helper()
		out, err := exec.Command(ruby, append([]string{"-ropenssl", "-rbase64", "-e", script}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ruby: %v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	const derive = `key = OpenSSL::KDF.hkdf([ARGV[0]].pack("H*"), salt: "", info: "kas _gitlab_kas cookie v1", length: 32, hash: "SHA256");`

	// Ruby encrypts, Go decrypts.
	cookie := run(derive+`
c = OpenSSL::Cipher.new("aes-256-gcm").encrypt
c.key = key
nonce = c.random_iv
c.auth_data = "_gitlab_kas"
sealed = c.update(ARGV[1]) + c.final + c.auth_tag
print Base64.urlsafe_encode64(nonce + sealed, padding: false)`, hex.EncodeToString(k), sid)
	got, err := Decrypt(k, cookie)
	if err != nil || got != sid {
		t.Fatalf("Go Decrypt(Ruby cookie %q) = %q, %v; want %q", cookie, got, err, sid)
	}

	// Go encrypts, Ruby decrypts.
	cookie, err = Encrypt(k, sid)
	if err != nil {
		t.Fatal(err)
	}
	got = run(derive+`
raw = Base64.urlsafe_decode64(ARGV[1])
d = OpenSSL::Cipher.new("aes-256-gcm").decrypt
d.key = key
d.iv = raw[0, 12]
d.auth_tag = raw[-16..]
d.auth_data = "_gitlab_kas"
print d.update(raw[12...-16]) + d.final`, hex.EncodeToString(k), cookie)
	if got != sid {
		t.Fatalf("Ruby decrypt of Go cookie = %q, want %q", got, sid)
	}
}
