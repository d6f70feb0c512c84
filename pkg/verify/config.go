package verify

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
)

// Config configures New. Audiences and Subjects are required, and one of
// Issuer or Kubernetes.
type Config struct {
	// Issuer is the "iss" every token must carry, exactly. With Kubernetes
	// unset it is also where discovery starts
	// (Issuer + "/.well-known/openid-configuration"), and it must be https;
	// the discovery document must name the same issuer, and its jwks_uri
	// must be https. With Kubernetes set, Issuer may be empty: the API
	// server's own discovery document then names it.
	Issuer string

	// Kubernetes, when set, is the API server to fetch discovery
	// (/.well-known/openid-configuration) and the key set (/openid/v1/jwks)
	// from, authenticated as the config says (in a pod:
	// rest.InClusterConfig(), the pod's projected token and cluster CA).
	// The document's jwks_uri is ignored, so these credentials go to the
	// API server only. Required for TokenReview. The verifier's identity
	// needs the system:service-account-issuer-discovery role (bound to all
	// ServiceAccounts by default) and, for TokenReview,
	// system:auth-delegator.
	Kubernetes *rest.Config

	// HTTPClient fetches discovery and the key set when Kubernetes is unset.
	// Default: a client with a 10 s timeout.
	HTTPClient *http.Client

	// Audiences are the audiences this service accepts; a token must name
	// at least one of them. Use a name that is this service's alone
	// (e.g. "orders.shop.svc"): a token minted for it is useless elsewhere,
	// and a token minted for anyone else (sts.amazonaws.com, the API server)
	// is refused here.
	Audiences []string

	// Subjects is the allow-list of callers, as patterns
	// "system:serviceaccount:<namespace>:<name>", where namespace and name
	// are globs in path.Match syntax ("*", "?", "[a-z]"), matched each on its
	// own (a "*" never crosses the ":"). "system:serviceaccount:*:*" allows
	// every ServiceAccount; it has to be said.
	Subjects []string

	// Nodes, when set, accepts only tokens minted for a pod bound to one of
	// these nodes: the API server puts the pod's node name (and UID) in the
	// kubernetes.io claim of a pod-bound token (KEP-4193, Kubernetes 1.32+).
	// Identity.RequireNode checks one node per request instead.
	Nodes []string

	// Algorithms are the accepted signature algorithms, a subset of RS256
	// and ES256. Default both. Whatever a token's header, the discovery
	// document or the key set say, nothing else is accepted: not "none", not
	// HMAC, not RSA-PSS.
	Algorithms []string

	// Leeway is the clock skew allowed on exp, nbf and iat. Zero means the
	// default, 30 s; at most 5 minutes.
	Leeway time.Duration

	// RefreshInterval is the shortest time between two key set fetches,
	// however many tokens name unknown key IDs (a flood of tokens with
	// random key IDs costs the issuer one fetch per interval). Default 10 s.
	RefreshInterval time.Duration

	// MaxKeyAge is how long a fetched key set is used before the next
	// verification fetches it again (so that a key the issuer removed stops
	// being accepted). If that fetch fails, the old set stays in use.
	// Default 10 minutes; it is never shorter than RefreshInterval.
	MaxKeyAge time.Duration

	// TokenReview, when true, also asks the API server (Kubernetes must be
	// set) whether it still authenticates the token, after every local
	// check passed: it rejects tokens whose pod, ServiceAccount or secret
	// has been deleted, which a signature cannot tell.
	TokenReview bool

	// ReviewCacheTTL is how long a TokenReview answer is reused for the
	// same token (keyed by its SHA-256). Default 10 s; negative disables the
	// cache. A deleted pod's token is refused at most this long after the
	// deletion, plus the API server's own cache of successful token
	// authentications (10 s in kube-apiserver 1.37): 20 s by default.
	ReviewCacheTTL time.Duration

	// ReviewCacheSize bounds the TokenReview cache. Default 4096 entries.
	ReviewCacheSize int

	// Realm is the realm in WWW-Authenticate answers. Default "service".
	Realm string

	// Logger receives key set refresh failures and, at debug level, the
	// middleware's refusals (reasons only, never tokens). Default: discard.
	Logger *slog.Logger

	// Clock is for tests. Default: the real clock.
	Clock clock.PassiveClock
}

const (
	defaultLeeway          = 30 * time.Second
	maxLeeway              = 5 * time.Minute
	defaultRefreshInterval = 10 * time.Second
	defaultMaxKeyAge       = 10 * time.Minute
	defaultReviewTTL       = 10 * time.Second
	defaultReviewCacheSize = 4096
	fetchTimeout           = 10 * time.Second
	// maxTokenSize bounds what is parsed: ServiceAccount tokens are 1-2 KiB.
	maxTokenSize = 16 << 10
	// maxDocumentSize bounds discovery documents, key sets and TokenReview
	// answers.
	maxDocumentSize = 1 << 20
)

// supportedAlgorithms are the only algorithms this package ever accepts.
var supportedAlgorithms = map[string]jose.SignatureAlgorithm{
	"RS256": jose.RS256,
	"ES256": jose.ES256,
}

// subjectPattern is one parsed Config.Subjects entry.
type subjectPattern struct {
	namespace, name string
}

const subjectPrefix = "system:serviceaccount:"

func parseSubjectPattern(p string) (subjectPattern, error) {
	rest, ok := strings.CutPrefix(p, subjectPrefix)
	if !ok {
		return subjectPattern{}, fmt.Errorf("subject pattern %q does not start with %q", p, subjectPrefix)
	}
	ns, name, ok := strings.Cut(rest, ":")
	if !ok || ns == "" || name == "" || strings.Contains(name, ":") {
		return subjectPattern{}, fmt.Errorf("subject pattern %q is not %s<namespace>:<name>", p, subjectPrefix)
	}
	for _, g := range []string{ns, name} {
		if _, err := path.Match(g, ""); err != nil {
			return subjectPattern{}, fmt.Errorf("subject pattern %q: %w", p, err)
		}
	}
	return subjectPattern{namespace: ns, name: name}, nil
}

func (p subjectPattern) match(namespace, name string) bool {
	okNS, _ := path.Match(p.namespace, namespace)
	okName, _ := path.Match(p.name, name)
	return okNS && okName
}

// splitSubject splits "system:serviceaccount:<ns>:<name>".
func splitSubject(sub string) (namespace, name string, ok bool) {
	rest, ok := strings.CutPrefix(sub, subjectPrefix)
	if !ok {
		return "", "", false
	}
	namespace, name, ok = strings.Cut(rest, ":")
	if !ok || namespace == "" || name == "" || strings.Contains(name, ":") {
		return "", "", false
	}
	return namespace, name, true
}

// settings is a Config after defaults and validation.
type settings struct {
	Config
	algorithms []jose.SignatureAlgorithm
	subjects   []subjectPattern
}

func (c Config) validate() (*settings, error) {
	s := &settings{Config: c}
	var errs []error
	if c.Issuer == "" && c.Kubernetes == nil {
		errs = append(errs, errors.New("Issuer or Kubernetes is required"))
	}
	if c.Issuer != "" && c.Kubernetes == nil {
		u, err := url.Parse(c.Issuer)
		if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			errs = append(errs, fmt.Errorf("Issuer %q is not an https URL without query or fragment", c.Issuer))
		}
	}
	if c.TokenReview && c.Kubernetes == nil {
		errs = append(errs, errors.New("TokenReview needs Kubernetes"))
	}
	if len(c.Audiences) == 0 {
		errs = append(errs, errors.New("at least one audience is required"))
	}
	for _, a := range c.Audiences {
		if a == "" {
			errs = append(errs, errors.New("an audience is empty"))
		}
	}
	if len(c.Subjects) == 0 {
		errs = append(errs, errors.New(`at least one subject pattern is required ("system:serviceaccount:*:*" allows all)`))
	}
	for _, p := range c.Subjects {
		sp, err := parseSubjectPattern(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.subjects = append(s.subjects, sp)
	}
	algs := c.Algorithms
	if len(algs) == 0 {
		algs = []string{"RS256", "ES256"}
	}
	for _, a := range algs {
		ja, ok := supportedAlgorithms[a]
		if !ok {
			errs = append(errs, fmt.Errorf("algorithm %q is not accepted (only RS256 and ES256)", a))
			continue
		}
		s.algorithms = append(s.algorithms, ja)
	}
	if c.Leeway < 0 || c.Leeway > maxLeeway {
		errs = append(errs, fmt.Errorf("Leeway %v is outside [0, %v]", c.Leeway, maxLeeway))
	}
	if c.Leeway == 0 {
		s.Leeway = defaultLeeway
	}
	if c.RefreshInterval < 0 || c.MaxKeyAge < 0 || c.ReviewCacheSize < 0 {
		errs = append(errs, errors.New("RefreshInterval, MaxKeyAge and ReviewCacheSize must not be negative"))
	}
	if s.RefreshInterval == 0 {
		s.RefreshInterval = defaultRefreshInterval
	}
	if s.MaxKeyAge == 0 {
		s.MaxKeyAge = defaultMaxKeyAge
	}
	if s.MaxKeyAge < s.RefreshInterval {
		s.MaxKeyAge = s.RefreshInterval
	}
	if s.ReviewCacheTTL == 0 {
		s.ReviewCacheTTL = defaultReviewTTL
	}
	if s.ReviewCacheSize == 0 {
		s.ReviewCacheSize = defaultReviewCacheSize
	}
	if s.Realm == "" {
		s.Realm = "service"
	}
	if strings.ContainsAny(s.Realm, "\"\\\r\n") {
		errs = append(errs, errors.New("Realm must not contain quotes, backslashes or line breaks"))
	}
	if s.Logger == nil {
		s.Logger = slog.New(slog.DiscardHandler)
	}
	if s.Clock == nil {
		s.Clock = clock.RealClock{}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("verify: invalid config: %w", err)
	}
	return s, nil
}
