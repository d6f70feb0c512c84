// Package clusterkeys verifies a cluster's ServiceAccount tokens the way a
// cloud's token service does: the issuer's keys through OIDC discovery,
// cached and fetched again on an unknown key ID, RS256 only. The test
// peers (integration/oidcsts, integration/googlests, integration/entra)
// share it.
package clusterkeys

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Claims are the parts of a Kubernetes ServiceAccount token the peers
// check.
type Claims struct {
	jwt.Claims
	K8s struct {
		Namespace string `json:"namespace"`
		Pod       *struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"pod"`
		ServiceAccount struct {
			Name string `json:"name"`
		} `json:"serviceaccount"`
	} `json:"kubernetes.io"`
}

// ContainsAny reports whether a names any of want.
func ContainsAny(a jwt.Audience, want []string) bool {
	return slices.ContainsFunc(want, a.Contains)
}

// ErrBadToken marks tokens that fail verification.
var ErrBadToken = errors.New("invalid token")

// KeySet fetches and caches the issuer's signing keys through OIDC
// discovery, as AWS STS, Google and Entra do for a trusted issuer.
type KeySet struct {
	issuer string
	client *http.Client

	mu      sync.Mutex
	keys    *jose.JSONWebKeySet
	fetched time.Time
}

// key returns the key with the given kid, fetching the set again when the
// kid is unknown (the issuer rotated keys), at most once a second.
func (ks *KeySet) key(ctx context.Context, kid string) (*jose.JSONWebKey, error) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.keys != nil {
		if k := ks.keys.Key(kid); len(k) > 0 {
			return &k[0], nil
		}
		if time.Since(ks.fetched) < time.Second {
			return nil, fmt.Errorf("%w: unknown key id %q", ErrBadToken, kid)
		}
	}
	keys, err := ks.fetch(ctx)
	if err != nil {
		return nil, err
	}
	ks.keys, ks.fetched = keys, time.Now()
	if k := keys.Key(kid); len(k) > 0 {
		return &k[0], nil
	}
	return nil, fmt.Errorf("%w: unknown key id %q", ErrBadToken, kid)
}

func (ks *KeySet) fetch(ctx context.Context) (*jose.JSONWebKeySet, error) {
	var disc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := ks.getJSON(ctx, strings.TrimSuffix(ks.issuer, "/")+"/.well-known/openid-configuration", &disc); err != nil {
		return nil, fmt.Errorf("OIDC discovery: %w", err)
	}
	if disc.Issuer != ks.issuer {
		return nil, fmt.Errorf("OIDC discovery names issuer %q, want %q", disc.Issuer, ks.issuer)
	}
	var set jose.JSONWebKeySet
	if err := ks.getJSON(ctx, disc.JWKSURI, &set); err != nil {
		return nil, fmt.Errorf("fetching JWKS: %w", err)
	}
	return &set, nil
}

func (ks *KeySet) getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := ks.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("reading %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("decoding %s: %w", url, err)
	}
	return nil
}

// NewKeySet reads issuer's keys with client.
func NewKeySet(issuer string, client *http.Client) *KeySet {
	return &KeySet{issuer: issuer, client: client}
}

// Verify checks an RS256 JWT's signature against the issuer's keys and
// returns its claims; issuer, audience and times are checked by the caller.
func (ks *KeySet) Verify(ctx context.Context, token string) (*Claims, error) {
	// Only RS256, the API server's algorithm: accepting the alg a token
	// names would let "none" or an HMAC keyed with the public key through.
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	if len(tok.Headers) != 1 {
		return nil, fmt.Errorf("%w: %d signatures", ErrBadToken, len(tok.Headers))
	}
	key, err := ks.key(ctx, tok.Headers[0].KeyID)
	if err != nil {
		return nil, err
	}
	var c Claims
	if err := tok.Claims(key.Key, &c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	return &c, nil
}

// UnverifiedClaims reads an RS256 JWT's claims without checking the
// signature, as Entra reads iss and sub to find the federated credential
// (and so the keys) to check it with.
func UnverifiedClaims(token string) (*Claims, error) {
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	var c Claims
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	return &c, nil
}
