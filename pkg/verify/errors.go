package verify

import (
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The reasons a token is refused. Every error Verify returns is an *Error
// whose Kind is one of these, so callers branch with errors.Is:
//
//	if errors.Is(err, verify.ErrExpired) { ... }
//
// or read the reason with errors.As(err, &ve) and ve.Kind.
var (
	// ErrMissing: the request carries no bearer token (middleware only).
	ErrMissing = errors.New("verify: no bearer token")
	// ErrMalformed: not a compact JWS, too large, or claims that do not decode.
	ErrMalformed = errors.New("verify: malformed token")
	// ErrAlgorithm: the header names an algorithm that is not accepted
	// ("none", any HMAC, anything outside Config.Algorithms).
	ErrAlgorithm = errors.New("verify: signature algorithm not accepted")
	// ErrUnknownKey: the key ID is not in the issuer's key set, even after a
	// refresh (or a refresh was not allowed yet by the rate limit).
	ErrUnknownKey = errors.New("verify: unknown signing key")
	// ErrSignature: the signature does not verify with the named key.
	ErrSignature = errors.New("verify: bad signature")
	// ErrIssuer: iss is not the expected issuer.
	ErrIssuer = errors.New("verify: wrong issuer")
	// ErrAudience: aud names none of the accepted audiences.
	ErrAudience = errors.New("verify: wrong audience")
	// ErrExpired: exp is past (beyond the leeway).
	ErrExpired = errors.New("verify: token expired")
	// ErrNotYetValid: nbf or iat is in the future (beyond the leeway).
	ErrNotYetValid = errors.New("verify: token not valid yet")
	// ErrClaims: required claims are missing or disagree with each other
	// (exp missing, no kubernetes.io claim, sub not matching it).
	ErrClaims = errors.New("verify: missing or inconsistent claims")
	// ErrSubject: the token is valid but its subject is not allowed.
	ErrSubject = errors.New("verify: subject not allowed")
	// ErrRevoked: the API server's TokenReview did not authenticate the
	// token (its pod, ServiceAccount or secret is gone, or it was refused).
	ErrRevoked = errors.New("verify: token rejected by TokenReview")
	// ErrUnavailable: the verifier could not decide: discovery, the key set
	// or TokenReview could not be reached. Retryable; not the token's fault.
	ErrUnavailable = errors.New("verify: verification unavailable")
)

// Error is the error Verify returns. Its text never contains the token:
// Detail is written by this package from bounded, quoted values, and Err
// (the cause, for errors.Is/As) comes from go-jose's parser (sentinels and
// positions), the network (URLs of the issuer or API server) or the API
// server's TokenReview status (scrubbed of the token).
type Error struct {
	// Kind is one of the Err* values above.
	Kind error
	// Detail says more, safe to log.
	Detail string
	// Err is the underlying cause, if any.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Kind.Error())
	if e.Detail != "" {
		b.WriteString(": ")
		b.WriteString(e.Detail)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap gives both the kind and the cause to errors.Is and errors.As.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// Retryable reports whether the same token may verify later: only when the
// verifier itself could not decide (ErrUnavailable).
func (e *Error) Retryable() bool { return e.Kind == ErrUnavailable }

func newError(kind error, detail string, cause error) *Error {
	return &Error{Kind: kind, Detail: detail, Err: cause}
}

// quote bounds an attacker-controlled value (a key ID, an issuer) before it
// goes into an error text: at most 64 bytes, quoted.
func quote(s string) string {
	const max = 64
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return strconv.Quote(s)
}
