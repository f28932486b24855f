package kascookie

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

// FuzzDecrypt: arbitrary cookie values never panic and never decrypt
// (sealing needs the key), and every failure is the bare ErrInvalid.
func FuzzDecrypt(f *testing.F) {
	for _, s := range []string{
		"", "A", "CQkJCQkJCQkJCQkJnbOLpgJkVxlNJRfFg5iDZRmKZ3YTZdFmEE-DJuU",
		"CQkJCQkJCQkJCQkJnbOLpgJkVxlNJRfFg5iDZRmKZ3YTZdFmEE-DJuU=", "CQkJCQkJCQkJCQkJ",
		strings.Repeat("A", 38), strings.Repeat("A", maxCookie), strings.Repeat("A", maxCookie+1),
		"kassess_1_AAAA", "%41%41", "+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/", "\x00\xff",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cookie string) {
		for _, k := range [][]byte{key(0x5a), key(0xa5)} {
			sid, err := Decrypt(k, cookie)
			if err == nil {
				t.Fatalf("Decrypt(%q) = %q without the key having sealed it", cookie, sid)
			}
			if err != ErrInvalid || sid != "" { //nolint:errorlint // exactly ErrInvalid: it says nothing more
				t.Fatalf("Decrypt(%q) = %q, %v; want only ErrInvalid", cookie, sid, err)
			}
		}
	})
}

// FuzzDecryptTampered seals a session ID, changes the cookie, and checks
// that only the untouched cookie opens, only with its key, to exactly the
// session ID.
func FuzzDecryptTampered(f *testing.F) {
	const sid = "kassess_42_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	for op := range byte(7) {
		for _, pos := range []uint16{0, 1, 15, 16, 40, 77, 78, 79, 1000} {
			f.Add(sid, op, pos, byte(1))
		}
	}
	f.Add("", byte(0), uint16(0), byte(0))
	f.Add("\x00\xff not UTF-8", byte(1), uint16(3), byte('\n'))
	f.Fuzz(func(t *testing.T, session string, op byte, pos uint16, val byte) {
		cookie, err := Encrypt(key(7), session)
		if err != nil {
			t.Fatal(err)
		}
		m := tamper(cookie, op, pos, val)
		got, err := Decrypt(key(7), m)
		switch {
		case m == cookie && len(cookie) <= maxCookie:
			if err != nil || got != session {
				t.Fatalf("the genuine cookie %q gave %q, %v; want %q", cookie, got, err, session)
			}
		case err == nil:
			t.Fatalf("tampered cookie %q (of %q, op %d at %d) decrypted to %q", m, cookie, op%7, pos, got)
		case !errors.Is(err, ErrInvalid):
			t.Fatalf("tampered cookie: error %v, want ErrInvalid", err)
		}
		if got, err := Decrypt(key(8), m); err == nil {
			t.Fatalf("cookie %q opened with another key, to %q", m, got)
		}
	})
}

// tamper applies one edit to a cookie value.
func tamper(c string, op byte, pos uint16, val byte) string {
	b := []byte(c)
	i := int(pos) % (len(b) + 1)
	switch op % 7 {
	case 0: // flip a bit of the text
		if i < len(b) {
			b[i] ^= 1 << (val % 8)
		}
	case 1: // insert a byte
		b = append(b[:i], append([]byte{val}, b[i:]...)...)
	case 2: // delete a byte
		if i < len(b) {
			b = append(b[:i], b[i+1:]...)
		}
	case 3: // truncate
		b = b[:i]
	case 4: // flip a bit of the decoded bytes
		raw, err := base64.RawURLEncoding.DecodeString(c)
		if err != nil || len(raw) == 0 {
			return c
		}
		raw[i%len(raw)] ^= 1 << (val % 8)
		return base64.RawURLEncoding.EncodeToString(raw)
	case 5: // standard alphabet, with padding
		raw, _ := base64.RawURLEncoding.DecodeString(c)
		return base64.StdEncoding.EncodeToString(raw)
	default: // append bytes
		return c + strings.Repeat(string(rune(val)), 1+i%4)
	}
	return string(b)
}

// TestDecryptCanonicalOnly: a cookie has one spelling. The test vector with
// a spare bit of its last character set, or with a line break, decodes to
// the same bytes but is refused.
func TestDecryptCanonicalOnly(t *testing.T) {
	const vector = "CQkJCQkJCQkJCQkJnbOLpgJkVxlNJRfFg5iDZRmKZ3YTZdFmEE-DJuU"
	if got, err := Decrypt(key(7), vector); err != nil || got != "kassess_5_abc" {
		t.Fatalf("Decrypt(vector) = %q, %v", got, err)
	}
	for _, c := range []string{vector[:len(vector)-1] + "V", vector[:20] + "\n" + vector[20:], vector + "\r\n"} {
		if got, err := Decrypt(key(7), c); !errors.Is(err, ErrInvalid) {
			t.Errorf("Decrypt(%q) = %q, %v; want ErrInvalid", c, got, err)
		}
	}
}
