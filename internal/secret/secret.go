// Package secret mints and checks the bearer secrets kas issues: agent
// tokens, access tokens (pat:), CI job tokens (ci:) and session IDs.
//
// A secret reads "<prefix>_<id>_<random>": the row ID lets the control plane
// find the row without an index on the hash, and the random part (32 bytes,
// base64url) is stored only as its SHA-256 and compared in constant time.
// The alphabet has no ':' so secrets fit "pat:<agent-id>:<secret>".
package secret

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"strconv"
	"strings"
)

// Prefixes name what a secret is, so a leaked one is easy to recognise.
const (
	AgentToken  = "kasagent"
	AccessToken = "kaspat"
	CIJobToken  = "kasci"
	Session     = "kassess"
	CSRF        = "kascsrf"
)

const randomLen = 43 // base64url (no padding) of 32 bytes

// New returns a fresh secret for row id and the hash to store.
func New(prefix string, id int64) (token string, hash []byte) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("secret: no randomness: " + err.Error())
	}
	r := base64.RawURLEncoding.EncodeToString(b)
	return prefix + "_" + strconv.FormatInt(id, 10) + "_" + r, Hash(r)
}

// Random returns a fresh secret without an ID (e.g. CSRF tokens) and its hash.
func Random(prefix string) (token string, hash []byte) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("secret: no randomness: " + err.Error())
	}
	t := prefix + "_" + base64.RawURLEncoding.EncodeToString(b)
	return t, Hash(t)
}

// Parse splits a secret made by New. ok is false for anything malformed,
// including another prefix.
func Parse(prefix, token string) (id int64, random string, ok bool) {
	rest, found := strings.CutPrefix(token, prefix+"_")
	if !found {
		return 0, "", false
	}
	idStr, random, found := strings.Cut(rest, "_")
	if !found || len(random) != randomLen || len(idStr) == 0 || len(idStr) > 19 {
		return 0, "", false
	}
	id, err := strconv.ParseInt(idStr, 10, 64)
	if err != nil || id <= 0 || strconv.FormatInt(id, 10) != idStr {
		return 0, "", false
	}
	// Canonical only: decoding skips line breaks and, without Strict,
	// ignores the spare bits of the last character.
	if b, err := base64.RawURLEncoding.Strict().DecodeString(random); err != nil || len(b) != 32 {
		return 0, "", false
	}
	return id, random, true
}

// Hash returns the SHA-256 of s, the form in which secrets are stored.
func Hash(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// Matches reports, in constant time, whether s hashes to stored.
func Matches(s string, stored []byte) bool {
	return subtle.ConstantTimeCompare(Hash(s), stored) == 1
}
