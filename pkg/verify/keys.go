package verify

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"golang.org/x/sync/singleflight"
	"k8s.io/utils/clock"
)

// publicKey is one usable key of the issuer's key set.
type publicKey struct {
	key any // *rsa.PublicKey or *ecdsa.PublicKey (P-256)
	alg jose.SignatureAlgorithm
}

// keySet is one fetched key set; immutable once published.
type keySet struct {
	issuer  string
	keys    map[string]publicKey
	fetched time.Time
}

// keySource fetches the issuer's name and its key set.
type keySource interface {
	fetch(ctx context.Context) (issuer string, body []byte, err error)
}

// keyCache holds the issuer's key set and refreshes it on an unknown key ID
// or when it is older than maxAge, never more often than once per interval
// (including failed fetches, so an unreachable issuer is not hammered
// either). Concurrent refreshes share one fetch.
type keyCache struct {
	src      keySource
	algs     []jose.SignatureAlgorithm
	clock    clock.PassiveClock
	interval time.Duration
	maxAge   time.Duration
	log      *slog.Logger
	sf       singleflight.Group

	mu          sync.Mutex
	set         *keySet // nil until the first successful fetch
	attempted   bool
	lastAttempt time.Time
	lastErr     error // of the last fetch, nil if it succeeded
}

// lookup returns the key with this ID and the issuer's name.
func (c *keyCache) lookup(ctx context.Context, kid string) (publicKey, string, error) {
	c.mu.Lock()
	set := c.set
	now := c.clock.Now()
	fresh := set != nil && now.Sub(set.fetched) < c.maxAge
	if fresh {
		if k, ok := set.keys[kid]; ok {
			c.mu.Unlock()
			return k, set.issuer, nil
		}
	}
	allowed := c.allowedLocked(now)
	lastErr := c.lastErr
	c.mu.Unlock()

	var refreshErr error
	if allowed {
		var newSet *keySet
		newSet, refreshErr = c.refresh(ctx)
		if newSet != nil {
			set = newSet
		}
	}
	if set == nil {
		if refreshErr != nil {
			return publicKey{}, "", refreshErr
		}
		return publicKey{}, "", newError(ErrUnavailable, "no key set yet, next fetch not allowed yet", lastErr)
	}
	if k, ok := set.keys[kid]; ok {
		return k, set.issuer, nil
	}
	if refreshErr != nil {
		// The key may be a new one the issuer rotated to: not the token's
		// fault yet.
		return publicKey{}, "", refreshErr
	}
	return publicKey{}, "", newError(ErrUnknownKey, "key ID "+quote(kid)+" is not in the issuer's key set", nil)
}

// allowedLocked reports whether a fetch may start now.
func (c *keyCache) allowedLocked(now time.Time) bool {
	return !c.attempted || now.Sub(c.lastAttempt) >= c.interval
}

// current returns the published key set, loading it if there is none and a
// fetch is allowed.
func (c *keyCache) current(ctx context.Context) (*keySet, error) {
	c.mu.Lock()
	set, allowed, lastErr := c.set, c.allowedLocked(c.clock.Now()), c.lastErr
	c.mu.Unlock()
	if set != nil {
		return set, nil
	}
	if !allowed {
		return nil, newError(ErrUnavailable, "no key set yet, next fetch not allowed yet", lastErr)
	}
	return c.refresh(ctx)
}

// refresh fetches the key set, unless another fetch ran less than interval
// ago, and returns the set in use afterwards: the new one, or the old one
// (possibly nil) with the fetch's error. The fetch runs under its own
// timeout; ctx only bounds this caller's wait.
func (c *keyCache) refresh(ctx context.Context) (*keySet, error) {
	ch := c.sf.DoChan("keys", func() (any, error) {
		c.mu.Lock()
		now := c.clock.Now()
		if !c.allowedLocked(now) {
			// Another caller's fetch finished in between.
			set, lastErr := c.set, c.lastErr
			c.mu.Unlock()
			if set == nil {
				return nil, newError(ErrUnavailable, "no key set yet, next fetch not allowed yet", lastErr)
			}
			return set, nil
		}
		c.attempted, c.lastAttempt = true, now
		c.mu.Unlock()

		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fetchTimeout)
		defer cancel()
		set, err := c.load(fctx)

		if err != nil {
			c.log.Warn("verify: fetching the issuer's key set failed; keeping the previous one", "error", err)
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		c.lastErr = err
		if err != nil {
			return c.set, newError(ErrUnavailable, "fetching the issuer's key set", err)
		}
		set.fetched = now
		c.set = set
		return set, nil
	})
	select {
	case <-ctx.Done():
		return nil, newError(ErrUnavailable, "waiting for the issuer's key set", ctx.Err())
	case r := <-ch:
		set, _ := r.Val.(*keySet)
		return set, r.Err
	}
}

func (c *keyCache) load(ctx context.Context) (*keySet, error) {
	issuer, body, err := c.src.fetch(ctx)
	if err != nil {
		return nil, err
	}
	keys, err := parseKeySet(body, c.algs)
	if err != nil {
		return nil, err
	}
	return &keySet{issuer: issuer, keys: keys}, nil
}

// parseKeySet keeps the keys of a JWKS that this package can use: public
// RSA keys of at least 2048 bits for RS256 and P-256 keys for ES256, with a
// key ID, for signatures, and an algorithm (when the key names one) that
// agrees with its type and is accepted. Everything else is skipped, as RFC
// 7517 section 5 asks; symmetric ("oct") keys in particular are never used.
func parseKeySet(body []byte, algs []jose.SignatureAlgorithm) (map[string]publicKey, error) {
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, fmt.Errorf("decoding key set: %w", err)
	}
	accepted := func(a jose.SignatureAlgorithm) bool {
		for _, x := range algs {
			if x == a {
				return true
			}
		}
		return false
	}
	keys := make(map[string]publicKey, len(raw.Keys))
	for _, m := range raw.Keys {
		var meta struct {
			Kid string `json:"kid"`
			Use string `json:"use"`
			Alg string `json:"alg"`
		}
		if err := json.Unmarshal(m, &meta); err != nil || meta.Kid == "" || (meta.Use != "" && meta.Use != "sig") {
			continue
		}
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(m); err != nil || !jwk.Valid() || !jwk.IsPublic() {
			continue
		}
		var pk publicKey
		switch k := jwk.Key.(type) {
		case *rsa.PublicKey:
			if k.N.BitLen() < 2048 {
				continue
			}
			pk = publicKey{key: k, alg: jose.RS256}
		case *ecdsa.PublicKey:
			if k.Curve != elliptic.P256() {
				continue
			}
			pk = publicKey{key: k, alg: jose.ES256}
		default:
			continue
		}
		if (meta.Alg != "" && meta.Alg != string(pk.alg)) || !accepted(pk.alg) {
			continue
		}
		if _, dup := keys[meta.Kid]; dup {
			continue
		}
		keys[meta.Kid] = pk
	}
	if len(keys) == 0 {
		return nil, errors.New("the key set has no usable key")
	}
	return keys, nil
}

// discovery is the part of an OpenID provider configuration used here.
type discovery struct {
	Issuer  string `json:"issuer"`
	JWKSURI string `json:"jwks_uri"`
}

// issuerSource follows OIDC discovery from the issuer URL: the document
// must name the issuer itself, and its jwks_uri must be https.
type issuerSource struct {
	issuer string
	client *http.Client

	// jwksURI is owned by the refresh (run by one goroutine at a time,
	// under keyCache.sf): discovery is fetched until it succeeds once.
	jwksURI string
}

func (s *issuerSource) fetch(ctx context.Context) (string, []byte, error) {
	if s.jwksURI == "" {
		var d discovery
		if err := getJSON(ctx, s.client, strings.TrimSuffix(s.issuer, "/")+"/.well-known/openid-configuration", &d); err != nil {
			return "", nil, fmt.Errorf("OIDC discovery: %w", err)
		}
		if d.Issuer != s.issuer {
			return "", nil, fmt.Errorf("OIDC discovery names issuer %s, want %s", quote(d.Issuer), quote(s.issuer))
		}
		u, err := url.Parse(d.JWKSURI)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return "", nil, fmt.Errorf("OIDC discovery: jwks_uri %s is not an https URL", quote(d.JWKSURI))
		}
		s.jwksURI = d.JWKSURI
	}
	body, err := get(ctx, s.client, s.jwksURI)
	if err != nil {
		return "", nil, fmt.Errorf("fetching key set: %w", err)
	}
	return s.issuer, body, nil
}

// apiServerSource reads discovery and the key set from the API server
// itself, with the client's credentials. The key set comes from
// /openid/v1/jwks whatever jwks_uri says (it may name a public host that
// must not see the credentials, or one unreachable from the cluster).
type apiServerSource struct {
	base   string // https://host:port, no trailing slash
	client *http.Client
	issuer string // expected, or "" to take the document's

	// learned is owned by the refresh, like issuerSource.jwksURI.
	learned string
}

func (s *apiServerSource) fetch(ctx context.Context) (string, []byte, error) {
	if s.learned == "" {
		var d discovery
		if err := getJSON(ctx, s.client, s.base+"/.well-known/openid-configuration", &d); err != nil {
			return "", nil, fmt.Errorf("OIDC discovery from the API server: %w", err)
		}
		if d.Issuer == "" {
			return "", nil, errors.New("the API server's discovery document names no issuer")
		}
		if s.issuer != "" && d.Issuer != s.issuer {
			return "", nil, fmt.Errorf("the API server's discovery document names issuer %s, want %s", quote(d.Issuer), quote(s.issuer))
		}
		s.learned = d.Issuer
	}
	body, err := get(ctx, s.client, s.base+"/openid/v1/jwks")
	if err != nil {
		return "", nil, fmt.Errorf("fetching key set from the API server: %w", err)
	}
	return s.learned, body, nil
}

func getJSON(ctx context.Context, client *http.Client, u string, v any) error {
	body, err := get(ctx, client, u)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("decoding %s: %w", u, err)
	}
	return nil
}

func get(ctx context.Context, client *http.Client, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json, application/jwk-set+json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocumentSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	if len(body) > maxDocumentSize {
		return nil, fmt.Errorf("GET %s: answer larger than %d bytes", u, maxDocumentSize)
	}
	return body, nil
}
