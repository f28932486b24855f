// Package impersonation carries the identity a Kubernetes API proxy request
// acts as, from the dataplane node to agentk, in one trusted request header.
//
// The node learns the identity from the control plane's AuthorizeProxy
// decision (access_as already resolved), removes every header the caller
// could use to speak for someone else, and adds Header. agentk reads and
// removes Header and turns the identity into Kubernetes impersonation
// headers (SetHeaders) next to its own service-account credentials. No
// Header means no impersonation: the request acts as the agent itself.
//
// The header value is base64url (no padding) of the JSON of Identity. Only
// a node writes it: the node strips any Kas-* header a caller sends, and
// only nodes open streams to agents.
package impersonation

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Header carries the encoded Identity from the node to agentk.
const Header = "Kas-Impersonation"

// Kubernetes impersonation headers.
const (
	UserHeader        = "Impersonate-User"
	GroupHeader       = "Impersonate-Group"
	UIDHeader         = "Impersonate-Uid"
	ExtraHeaderPrefix = "Impersonate-Extra-"
)

// maxEncoded bounds what Decode looks at.
const maxEncoded = 64 << 10

// Identity is whom the Kubernetes API server sees behind a request.
type Identity struct {
	Username string              `json:"username"`
	Groups   []string            `json:"groups,omitempty"`
	UID      string              `json:"uid,omitempty"`
	Extra    map[string][]string `json:"extra,omitempty"`
}

// Empty reports whether id impersonates nobody (the agent acts as itself).
func (id Identity) Empty() bool { return id.Username == "" }

// Encode returns the Header value for id.
func Encode(id Identity) (string, error) {
	b, err := json.Marshal(id)
	if err != nil {
		return "", fmt.Errorf("encode impersonation: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Decode parses a Header value made by Encode.
func Decode(s string) (Identity, error) {
	var id Identity
	if len(s) > maxEncoded {
		return id, errors.New("decode impersonation: value too long")
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return id, fmt.Errorf("decode impersonation: %w", err)
	}
	if err := json.Unmarshal(b, &id); err != nil {
		return id, fmt.Errorf("decode impersonation: %w", err)
	}
	if id.Username == "" && (len(id.Groups) > 0 || id.UID != "" || len(id.Extra) > 0) {
		return Identity{}, errors.New("decode impersonation: groups, uid or extra without a username")
	}
	return id, nil
}

// IsImpersonateHeader reports whether the header name k is one of
// Kubernetes' Impersonate-* headers, in any case.
func IsImpersonateHeader(k string) bool {
	const p = "Impersonate-"
	return len(k) >= len(p) && strings.EqualFold(k[:len(p)], p)
}

// SetHeaders sets the Kubernetes impersonation headers for id on h
// (nothing for an empty identity): Impersonate-User, one Impersonate-Group
// per group, Impersonate-Uid, and Impersonate-Extra-<key> per value, the key
// escaped as client-go does (the API server unescapes and lower-cases it).
func (id Identity) SetHeaders(h http.Header) {
	if id.Empty() {
		return
	}
	h.Set(UserHeader, id.Username)
	for _, g := range id.Groups {
		h.Add(GroupHeader, g)
	}
	if id.UID != "" {
		h.Set(UIDHeader, id.UID)
	}
	for k, vs := range id.Extra {
		name := ExtraHeaderPrefix + EscapeExtraKey(k)
		for _, v := range vs {
			h.Add(name, v)
		}
	}
}

// EscapeExtraKey percent-encodes every byte of an extra key that may not
// appear in a header name, and '%' itself, as Kubernetes expects
// (url.PathUnescape on the API server's side): "agent.gitlab.com/id"
// becomes "agent.gitlab.com%2Fid".
func EscapeExtraKey(k string) string {
	var b strings.Builder
	for i := 0; i < len(k); i++ {
		c := k[i]
		if tokenByte(c) && c != '%' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// tokenByte reports whether c may appear in an HTTP header name (RFC 9110
// token).
func tokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
