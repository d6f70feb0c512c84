package entra

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

// claims are the parts of a Kubernetes ServiceAccount token the server
// checks.
type claims struct {
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

// audience is jwt.Audience with a helper.
type audience = jwt.Audience

func containsAny(a audience, want []string) bool {
	return slices.ContainsFunc(want, a.Contains)
}

// errBadToken marks assertions that fail verification.
var errBadToken = errors.New("invalid client assertion")

// keySet fetches and caches the issuer's signing keys through OIDC
// discovery, as Entra does for a federated identity credential's issuer.
type keySet struct {
	issuer string
	client *http.Client

	mu      sync.Mutex
	keys    *jose.JSONWebKeySet
	fetched time.Time
}

// key returns the key with the given kid, fetching the set again when the
// kid is unknown (the issuer rotated keys), at most once a second.
func (ks *keySet) key(ctx context.Context, kid string) (*jose.JSONWebKey, error) {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.keys != nil {
		if k := ks.keys.Key(kid); len(k) > 0 {
			return &k[0], nil
		}
		if time.Since(ks.fetched) < time.Second {
			return nil, fmt.Errorf("%w: unknown key id %q", errBadToken, kid)
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
	return nil, fmt.Errorf("%w: unknown key id %q", errBadToken, kid)
}

func (ks *keySet) fetch(ctx context.Context) (*jose.JSONWebKeySet, error) {
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

func (ks *keySet) getJSON(ctx context.Context, url string, v any) error {
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

// verify checks an RS256 JWT's signature against the issuer's keys and
// returns its claims; issuer, audience and times are checked by the caller.
func (ks *keySet) verify(ctx context.Context, token string) (*claims, error) {
	// Only RS256, the API server's algorithm: accepting the alg a token
	// names would let "none" or an HMAC keyed with the public key through.
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errBadToken, err)
	}
	if len(tok.Headers) != 1 {
		return nil, fmt.Errorf("%w: %d signatures", errBadToken, len(tok.Headers))
	}
	key, err := ks.key(ctx, tok.Headers[0].KeyID)
	if err != nil {
		return nil, err
	}
	var c claims
	if err := tok.Claims(key.Key, &c); err != nil {
		return nil, fmt.Errorf("%w: %v", errBadToken, err)
	}
	return &c, nil
}

// unverifiedClaims reads an RS256 JWT's claims without checking the
// signature, as Entra reads iss and sub to find the federated credential
// (and so the keys) to check it with.
func unverifiedClaims(token string) (*claims, error) {
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errBadToken, err)
	}
	var c claims
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil {
		return nil, fmt.Errorf("%w: %v", errBadToken, err)
	}
	return &c, nil
}
