// Package kascookie encrypts and decrypts the `_gitlab_kas` cookie: a browser
// session ID that Rails seals for kas so that the Kubernetes API proxy can
// authenticate browser requests.
//
// The cookie value is
//
//	base64url-no-padding( nonce(12) || AES-256-GCM-Seal(key, nonce, session_id, ad) )
//
// where ad is the cookie name "_gitlab_kas", the sealed part ends with the
// 16-byte GCM tag, and
//
//	key = HKDF-SHA256(ikm = api_secret_key (32 decoded bytes), salt = "", info = "kas _gitlab_kas cookie v1", 32 bytes)
//
// Rails produces it with nothing but OpenSSL:
//
//	key = OpenSSL::KDF.hkdf(api_secret_key, salt: "", info: "kas _gitlab_kas cookie v1",
//	                        length: 32, hash: "SHA256")
//	c = OpenSSL::Cipher.new("aes-256-gcm").encrypt
//	c.key = key
//	nonce = c.random_iv            # 12 bytes
//	c.auth_data = "_gitlab_kas"
//	sealed = c.update(session_id) + c.final + c.auth_tag   # tag is 16 bytes
//	cookie = Base64.urlsafe_encode64(nonce + sealed, padding: false)
package kascookie

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Name is the cookie's name; it is also the AEAD's additional data.
const Name = "_gitlab_kas"

// Info is the HKDF info string that binds the derived key to this use.
const Info = "kas _gitlab_kas cookie v1"

const (
	keySize   = 32
	nonceSize = 12
	tagSize   = 16
	// maxCookie bounds what Decrypt even looks at.
	maxCookie = 4096
)

// ErrInvalid is returned for any cookie that does not decrypt: malformed,
// tampered with, or sealed with another key. It says nothing more on purpose.
var ErrInvalid = errors.New("invalid _gitlab_kas cookie")

// Encrypt seals sessionID into a cookie value with a key derived from apiKey
// (the decoded api_secret_key).
func Encrypt(apiKey []byte, sessionID string) (string, error) {
	nonce := make([]byte, nonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("read nonce: %w", err)
	}
	return seal(apiKey, nonce, sessionID)
}

// Decrypt opens a cookie value made by Encrypt (or by Rails as documented
// above) and returns the session ID. Any failure is ErrInvalid.
func Decrypt(apiKey []byte, cookie string) (string, error) {
	// Canonical base64url only: decoding would skip line breaks and, without
	// Strict, the spare bits of the last character, giving one cookie
	// several spellings.
	if len(cookie) > maxCookie || strings.ContainsAny(cookie, "\r\n") {
		return "", ErrInvalid
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(cookie)
	if err != nil || len(raw) < nonceSize+tagSize {
		return "", ErrInvalid
	}
	aead, err := newAEAD(apiKey)
	if err != nil {
		return "", err
	}
	plain, err := aead.Open(nil, raw[:nonceSize], raw[nonceSize:], []byte(Name))
	if err != nil {
		return "", ErrInvalid
	}
	return string(plain), nil
}

func seal(apiKey, nonce []byte, sessionID string) (string, error) {
	aead, err := newAEAD(apiKey)
	if err != nil {
		return "", err
	}
	out := make([]byte, nonceSize, nonceSize+len(sessionID)+tagSize)
	copy(out, nonce)
	out = aead.Seal(out, nonce, []byte(sessionID), []byte(Name))
	return base64.RawURLEncoding.EncodeToString(out), nil
}

// Key derives the AES-256 key from apiKey.
func Key(apiKey []byte) ([]byte, error) {
	if len(apiKey) == 0 {
		return nil, errors.New("derive cookie key: empty api secret key")
	}
	k, err := hkdf.Key(sha256.New, apiKey, nil, Info, keySize)
	if err != nil {
		return nil, fmt.Errorf("derive cookie key: %w", err)
	}
	return k, nil
}

func newAEAD(apiKey []byte) (cipher.AEAD, error) {
	k, err := Key(apiKey)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, fmt.Errorf("create cipher: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("create gcm: %w", err)
	}
	return aead, nil
}
