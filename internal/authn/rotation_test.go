package authn_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/kas-project/kas/internal/authn"
)

// TestVerifierKeyRotation: during a rotation a verifier accepts tokens
// signed with the current key or a previous one, and still nothing else.
func TestVerifierKeyRotation(t *testing.T) {
	oldKey := bytes.Repeat([]byte{1}, authn.KeySize)
	newKey := bytes.Repeat([]byte{2}, authn.KeySize)
	strangerKey := bytes.Repeat([]byte{3}, authn.KeySize)
	token := func(key []byte, issuer, audience string) string {
		t.Helper()
		tok, err := authn.NewSigner(key, issuer, audience, "rails").Token()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	rails := func(key []byte) string { return token(key, authn.IssuerRails, authn.AudienceManagement) }

	for _, tc := range []struct {
		name     string
		verifier *authn.Verifier
		accept   map[string]string // name → token
		refuse   map[string]string
	}{
		{
			name:     "no rotation",
			verifier: authn.NewVerifier(newKey, authn.IssuerRails, authn.AudienceManagement),
			accept:   map[string]string{"current key": rails(newKey)},
			refuse:   map[string]string{"old key": rails(oldKey), "stranger": rails(strangerKey)},
		},
		{
			name:     "rotating",
			verifier: authn.NewVerifier(newKey, authn.IssuerRails, authn.AudienceManagement, oldKey),
			accept:   map[string]string{"current key": rails(newKey), "previous key": rails(oldKey)},
			refuse: map[string]string{
				"stranger": rails(strangerKey),
				// The previous key opens only what it opened before.
				"previous key, other audience": token(oldKey, authn.IssuerRails, authn.AudienceDataplane),
				"previous key, other issuer":   token(oldKey, authn.IssuerDataplane, authn.AudienceManagement),
			},
		},
		{
			name:     "empty previous keys are ignored",
			verifier: authn.NewVerifier(newKey, authn.IssuerRails, authn.AudienceManagement, nil, []byte{}),
			accept:   map[string]string{"current key": rails(newKey)},
			refuse:   map[string]string{"old key": rails(oldKey), "empty-key token": rails([]byte{0})},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for name, tok := range tc.accept {
				if sub, err := tc.verifier.Verify(tok); err != nil || sub != "rails" {
					t.Errorf("%s: got %q, %v; want accepted", name, sub, err)
				}
			}
			for name, tok := range tc.refuse {
				if _, err := tc.verifier.Verify(tok); !errors.Is(err, authn.ErrInvalid) {
					t.Errorf("%s: got %v, want ErrInvalid", name, err)
				}
			}
		})
	}
}
