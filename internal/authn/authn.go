// Package authn signs and verifies the JWTs that authenticate calls between
// kas's parts: Rails (and kasctl) to the control plane with api_secret_key,
// dataplane nodes to the control plane and to each other with
// private_api_secret_key. Only HS256 is accepted; issuer, audience and a short
// expiry are checked. Each audience names one API, so a key or token made for
// one never opens another.
package authn

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"
)

// Audiences and issuers. Rails uses IssuerRails + AudienceManagement.
const (
	IssuerRails        = "gitlab"
	IssuerDataplane    = "kas-dataplane"
	AudienceManagement = "kas-management"
	AudienceDataplane  = "kas-controlplane"
	AudiencePrivateAPI = "kas-private-api"
)

// MaxLifetime bounds how far in the future a token's expiry may be.
const MaxLifetime = 15 * time.Minute

// KeySize is the required length of a decoded secret key.
const KeySize = 32

// Errors returned by Verify. Their text is safe to show the caller.
var (
	ErrMissing = errors.New("missing bearer token")
	ErrInvalid = errors.New("invalid token")
)

// Verifier checks tokens for one API.
type Verifier struct {
	key      any // []byte, or jwt.VerificationKeySet during a key rotation
	issuer   string
	audience string
	now      func() time.Time
}

// NewVerifier returns a verifier for tokens signed with key for audience,
// from issuer. Tokens signed with one of previous are accepted too: during
// a key rotation, verifiers know the old and the new key while signers
// move from one to the other (empty keys are ignored).
func NewVerifier(key []byte, issuer, audience string, previous ...[]byte) *Verifier {
	v := &Verifier{key: key, issuer: issuer, audience: audience, now: time.Now}
	set := jwt.VerificationKeySet{Keys: []jwt.VerificationKey{key}}
	for _, k := range previous {
		if len(k) > 0 {
			set.Keys = append(set.Keys, k)
		}
	}
	if len(set.Keys) > 1 {
		v.key = set
	}
	return v
}

// Verify checks a raw JWT and returns its subject. The token's segments
// must be canonical base64url, so one token has exactly one spelling.
func (v *Verifier) Verify(raw string) (string, error) {
	// Base64 decoding skips line breaks; refusing every byte outside the
	// token alphabet keeps the spelling unique.
	if strings.ContainsFunc(raw, func(r rune) bool { return !isTokenChar(r) }) {
		return "", ErrInvalid
	}
	tok, err := jwt.Parse(raw, func(*jwt.Token) (any, error) { return v.key, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithStrictDecoding(),
		jwt.WithIssuer(v.issuer),
		jwt.WithAudience(v.audience),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(5*time.Second),
		jwt.WithTimeFunc(v.now),
	)
	if err != nil {
		switch {
		case errors.Is(err, jwt.ErrTokenExpired):
			return "", fmt.Errorf("%w: expired", ErrInvalid)
		case errors.Is(err, jwt.ErrTokenInvalidAudience):
			return "", fmt.Errorf("%w: wrong audience", ErrInvalid)
		case errors.Is(err, jwt.ErrTokenInvalidIssuer):
			return "", fmt.Errorf("%w: wrong issuer", ErrInvalid)
		case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
			return "", fmt.Errorf("%w: bad signature or algorithm", ErrInvalid)
		}
		return "", ErrInvalid
	}
	exp, _ := tok.Claims.GetExpirationTime()
	if exp.Sub(v.now()) > MaxLifetime+5*time.Second {
		return "", fmt.Errorf("%w: expiry more than %v ahead", ErrInvalid, MaxLifetime)
	}
	sub, _ := tok.Claims.GetSubject()
	return sub, nil
}

// isTokenChar reports whether r may appear in a JWS compact serialization:
// the base64url alphabet and the dots between segments.
func isTokenChar(r rune) bool {
	return 'A' <= r && r <= 'Z' || 'a' <= r && r <= 'z' || '0' <= r && r <= '9' || r == '-' || r == '_' || r == '.'
}

// VerifyHeader checks an "Authorization: Bearer <jwt>" header value.
func (v *Verifier) VerifyHeader(h http.Header) (string, error) {
	auth := h.Get("Authorization")
	raw, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok || raw == "" {
		return "", ErrMissing
	}
	return v.Verify(raw)
}

// Signer mints tokens and reuses each one until it is close to expiry.
type Signer struct {
	key      []byte
	issuer   string
	audience string
	subject  string
	lifetime time.Duration
	now      func() time.Time

	mu     sync.Mutex
	cached string
	until  time.Time
}

// NewSigner returns a signer of tokens for audience, from issuer, about subject.
func NewSigner(key []byte, issuer, audience, subject string) *Signer {
	return &Signer{key: key, issuer: issuer, audience: audience, subject: subject, lifetime: 5 * time.Minute, now: time.Now}
}

// Token returns a valid signed token.
func (s *Signer) Token() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if s.cached != "" && now.Before(s.until) {
		return s.cached, nil
	}
	claims := jwt.RegisteredClaims{
		Issuer:    s.issuer,
		Subject:   s.subject,
		Audience:  jwt.ClaimStrings{s.audience},
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(s.lifetime)),
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(s.key)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	s.cached, s.until = tok, now.Add(s.lifetime/2)
	return tok, nil
}

type subjectKey struct{}

// Subject returns the verified token subject stored in ctx by the server interceptor.
func Subject(ctx context.Context) string {
	s, _ := ctx.Value(subjectKey{}).(string)
	return s
}

// ServerInterceptor refuses calls whose bearer token v does not accept, with
// CodeUnauthenticated.
func ServerInterceptor(v *Verifier) connect.Interceptor { return serverInterceptor{v} }

type serverInterceptor struct{ v *Verifier }

func (i serverInterceptor) check(ctx context.Context, h http.Header) (context.Context, error) {
	sub, err := i.v.VerifyHeader(h)
	if err != nil {
		return ctx, connect.NewError(connect.CodeUnauthenticated, err)
	}
	return context.WithValue(ctx, subjectKey{}, sub), nil
}

func (i serverInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		ctx, err := i.check(ctx, req.Header())
		if err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (i serverInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i serverInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, err := i.check(ctx, conn.RequestHeader())
		if err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

// ClientInterceptor adds a bearer token from s to every outgoing call.
func ClientInterceptor(s *Signer) connect.Interceptor { return clientInterceptor{s} }

type clientInterceptor struct{ s *Signer }

func (i clientInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		tok, err := i.s.Token()
		if err != nil {
			return nil, err
		}
		req.Header().Set("Authorization", "Bearer "+tok)
		return next(ctx, req)
	}
}

func (i clientInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if tok, err := i.s.Token(); err == nil {
			conn.RequestHeader().Set("Authorization", "Bearer "+tok)
		}
		return conn
	}
}

func (i clientInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
