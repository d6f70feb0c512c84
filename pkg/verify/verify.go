package verify

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"k8s.io/client-go/rest"
)

// Identity is what a verified token says about its caller.
type Identity struct {
	// Subject is "system:serviceaccount:<Namespace>:<ServiceAccount>".
	Subject           string
	Namespace         string
	ServiceAccount    string
	ServiceAccountUID string
	// PodName and PodUID are set for tokens bound to a pod (TokenRequest
	// with a Pod boundObjectRef, as the agent and projected volumes mint).
	PodName string
	PodUID  string
	// NodeName and NodeUID are set when the API server put the pod's node
	// in the token (pod-bound tokens; NodeUID only if the Node object exists).
	NodeName string
	NodeUID  string
	// Issuer, Audiences, ID (jti), IssuedAt and Expiry are the token's.
	Issuer    string
	Audiences []string
	ID        string
	IssuedAt  time.Time
	Expiry    time.Time
	// Reviewed is true when the API server's TokenReview confirmed the
	// token (Config.TokenReview).
	Reviewed bool
}

// Verifier checks ServiceAccount tokens. It is safe for concurrent use;
// make one per service and keep it (it caches the issuer's keys).
type Verifier struct {
	s      *settings
	keys   *keyCache
	review *reviewer // nil without TokenReview
}

// New checks cfg and returns a Verifier. It makes no network call: the key
// set is fetched by the first verification (or Ready).
func New(cfg Config) (*Verifier, error) {
	s, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	v := &Verifier{s: s}
	var src keySource
	if s.Kubernetes != nil {
		client, base, err := apiServerClient(s.Kubernetes)
		if err != nil {
			return nil, err
		}
		src = &apiServerSource{base: base, client: client, issuer: s.Issuer}
		if s.TokenReview {
			v.review, err = newReviewer(s, client, base)
			if err != nil {
				return nil, err
			}
		}
	} else {
		client := s.HTTPClient
		if client == nil {
			client = &http.Client{Timeout: fetchTimeout}
		}
		src = &issuerSource{issuer: s.Issuer, client: client}
	}
	v.keys = &keyCache{
		src: src, algs: s.algorithms, clock: s.Clock,
		interval: s.RefreshInterval, maxAge: s.MaxKeyAge, log: s.Logger,
	}
	return v, nil
}

// apiServerClient returns an HTTP client that authenticates to the API
// server as cfg says (bearer token, token file re-read as it rotates, client
// certificate, CA) and the server's base URL.
func apiServerClient(cfg *rest.Config) (*http.Client, string, error) {
	client, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("verify: API server client: %w", err)
	}
	u, _, err := rest.DefaultServerUrlFor(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("verify: API server URL: %w", err)
	}
	if u.Scheme != "https" {
		return nil, "", fmt.Errorf("verify: API server URL %q is not https", u.String())
	}
	return client, strings.TrimSuffix(u.Scheme+"://"+u.Host+u.Path, "/"), nil
}

// Ready fetches the issuer's key set if none is loaded yet (subject to the
// rate limit) and reports whether one is: for a readiness probe, or to fail
// fast at start-up.
func (v *Verifier) Ready(ctx context.Context) error {
	_, err := v.keys.current(ctx)
	return err
}

// claims are the JWT claims read from a ServiceAccount token.
type claims struct {
	jwt.Claims
	K8s *k8sClaims `json:"kubernetes.io"`
}

type k8sClaims struct {
	Namespace      string  `json:"namespace"`
	ServiceAccount *objRef `json:"serviceaccount"`
	Pod            *objRef `json:"pod"`
	Node           *objRef `json:"node"`
}

type objRef struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

// Verify checks a token and returns its caller's identity. In order: size
// and form; the algorithm (pinned: RS256/ES256 only); the key ID against the
// issuer's key set (refreshed, rate limited, when unknown); the signature
// with that key, whose type must match the algorithm; iss; aud; exp
// (required), nbf and iat with the leeway; the kubernetes.io claims, which
// must agree with sub; the subject allow-list; and, with TokenReview, the
// API server's verdict. Every refusal is an *Error (see the Err* kinds)
// whose text does not contain the token.
func (v *Verifier) Verify(ctx context.Context, token string) (*Identity, error) {
	if len(token) > maxTokenSize {
		return nil, newError(ErrMalformed, fmt.Sprintf("token larger than %d bytes", maxTokenSize), nil)
	}
	tok, err := jwt.ParseSigned(token, v.s.algorithms)
	if err != nil {
		var ua *jose.ErrUnexpectedSignatureAlgorithm
		if errors.As(err, &ua) {
			return nil, newError(ErrAlgorithm, "algorithm "+quote(string(ua.Got)), nil)
		}
		return nil, newError(ErrMalformed, "not a compact JWS", err)
	}
	if len(tok.Headers) != 1 {
		return nil, newError(ErrMalformed, "not exactly one signature", nil)
	}
	hdr := tok.Headers[0]
	if hdr.KeyID == "" {
		return nil, newError(ErrUnknownKey, "no key ID in the header", nil)
	}
	key, issuer, err := v.keys.lookup(ctx, hdr.KeyID)
	if err != nil {
		return nil, err
	}
	if jose.SignatureAlgorithm(hdr.Algorithm) != key.alg {
		return nil, newError(ErrAlgorithm, "algorithm "+quote(hdr.Algorithm)+" does not match key "+quote(hdr.KeyID), nil)
	}
	var c claims
	if err := tok.Claims(key.key, &c); err != nil {
		if errors.Is(err, jose.ErrCryptoFailure) {
			return nil, newError(ErrSignature, "key "+quote(hdr.KeyID), nil)
		}
		return nil, newError(ErrMalformed, "claims", err)
	}
	if err := v.checkClaims(&c, issuer); err != nil {
		return nil, err
	}
	id := identity(&c)
	if v.review != nil {
		if err := v.review.check(ctx, token, id); err != nil {
			return nil, err
		}
		id.Reviewed = true
	}
	return id, nil
}

func (v *Verifier) checkClaims(c *claims, issuer string) error {
	if issuer == "" {
		return newError(ErrUnavailable, "the issuer is not known", nil)
	}
	if c.Expiry == nil {
		return newError(ErrClaims, "no exp", nil)
	}
	err := c.Claims.ValidateWithLeeway(jwt.Expected{
		Issuer:      issuer,
		AnyAudience: v.s.Audiences,
		Time:        v.s.Clock.Now(),
	}, v.s.Leeway)
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrInvalidIssuer):
		return newError(ErrIssuer, "iss "+quote(c.Issuer)+", want "+quote(issuer), nil)
	case errors.Is(err, jwt.ErrInvalidAudience):
		return newError(ErrAudience, fmt.Sprintf("aud names none of the %d accepted audiences", len(v.s.Audiences)), nil)
	case errors.Is(err, jwt.ErrExpired):
		return newError(ErrExpired, "exp "+c.Expiry.Time().UTC().Format(time.RFC3339), nil)
	case errors.Is(err, jwt.ErrNotValidYet):
		return newError(ErrNotYetValid, "nbf "+c.NotBefore.Time().UTC().Format(time.RFC3339), nil)
	case errors.Is(err, jwt.ErrIssuedInTheFuture):
		return newError(ErrNotYetValid, "iat "+c.IssuedAt.Time().UTC().Format(time.RFC3339), nil)
	default:
		return newError(ErrClaims, "", err)
	}
	ns, name, ok := splitSubject(c.Subject)
	if !ok {
		return newError(ErrSubject, "sub is not a ServiceAccount", nil)
	}
	k := c.K8s
	if k == nil || k.ServiceAccount == nil {
		return newError(ErrClaims, "no kubernetes.io serviceaccount claim", nil)
	}
	if k.Namespace != ns || k.ServiceAccount.Name != name {
		return newError(ErrClaims, "sub disagrees with the kubernetes.io claim", nil)
	}
	for _, p := range v.s.subjects {
		if p.match(ns, name) {
			return v.checkNode(c)
		}
	}
	return newError(ErrSubject, "sub "+quote(c.Subject), nil)
}

func identity(c *claims) *Identity {
	id := &Identity{
		Subject:           c.Subject,
		Namespace:         c.K8s.Namespace,
		ServiceAccount:    c.K8s.ServiceAccount.Name,
		ServiceAccountUID: c.K8s.ServiceAccount.UID,
		Issuer:            c.Issuer,
		Audiences:         []string(c.Audience),
		ID:                c.ID,
		Expiry:            c.Expiry.Time(),
	}
	if c.IssuedAt != nil {
		id.IssuedAt = c.IssuedAt.Time()
	}
	if p := c.K8s.Pod; p != nil {
		id.PodName, id.PodUID = p.Name, p.UID
	}
	if n := c.K8s.Node; n != nil {
		id.NodeName, id.NodeUID = n.Name, n.UID
	}
	return id
}
