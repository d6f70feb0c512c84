// Package googlests is Google STS and IAM Credentials for tests, in one
// HTTP server. It speaks the wire formats the agent's GCP exchanger and
// Google's own libraries use:
//
//   - POST /v1/token: the RFC 8693 token-exchange grant of Workload Identity
//     Federation. The subject token is verified as Google verifies it for an
//     OIDC provider: the RS256 signature against the keys found through the
//     issuer's OIDC discovery (the real control plane's
//     /.well-known/openid-configuration and JWKS); iss equal to the issuer;
//     aud one of the provider's accepted audiences (//iam.googleapis.com/ +
//     provider, with or without https:); exp in the future, nbf not; and,
//     beyond Google, that the pod the token is bound to still exists with the
//     same UID. The audience parameter must name the provider. Failures are
//     OAuth errors (invalid_grant, invalid_target, invalid_request).
//   - POST /v1/projects/-/serviceAccounts/{email}:generateAccessToken and
//     :generateIdToken, authorised by a federated token it issued, for a
//     principal (system:serviceaccount:NS:SA) that Impersonation lets use
//     that email; otherwise 403 PERMISSION_DENIED, as Google answers for
//     missing permissions and unknown accounts alike. Identity tokens are
//     JWTs signed with the server's own RSA key (IDTokenKey, JWKS at
//     /oauth2/v3/certs), with aud, azp, sub (the account's unique ID),
//     email and email_verified.
//   - POST /v1/introspect (RFC 7662): is an access token one it issued and
//     still valid, for whom.
//
// Everything it issues is opaque and random, has a real expiry, and is
// recorded with the subject, pod and service account it was minted for
// (Lookup), so that a test can check that the token a client got was minted
// for its own pod. It counts calls per endpoint and injects faults (status
// codes, latency, refused and reset connections) like oidcsts.
//
// Nothing it logs or returns in an error contains a token.
package googlests

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/credbroker/agent/integration/clusterkeys"
	"github.com/credbroker/agent/integration/peer"
)

// DefaultProvider is the workload identity provider the server plays when
// Config.Provider is empty.
const DefaultProvider = "projects/123456789012/locations/global/workloadIdentityPools/credbroker-it/providers/cluster"

// CloudPlatformScope is the scope a federated token needs to call IAM
// Credentials.
const CloudPlatformScope = "https://www.googleapis.com/auth/cloud-platform"

// IDTokenIssuer is the iss of the identity tokens it signs, as Google's.
const IDTokenIssuer = "https://accounts.google.com"

const (
	defaultLifetime = time.Hour
	grantType       = "urn:ietf:params:oauth:grant-type:token-exchange"
	accessTokenType = "urn:ietf:params:oauth:token-type:access_token"
	jwtTokenType    = "urn:ietf:params:oauth:token-type:jwt"
	idTokenType     = "urn:ietf:params:oauth:token-type:id_token"
)

// ErrPodNotFound is what a PodUIDFunc returns when the pod does not exist.
var ErrPodNotFound = peer.ErrPodNotFound

// PodUIDFunc returns the UID of the pod namespace/name, or ErrPodNotFound.
type PodUIDFunc = peer.PodUIDFunc

// Config configures a Server.
type Config struct {
	// Issuer is the OIDC issuer the pool's provider trusts; its discovery
	// document is fetched from Issuer + "/.well-known/openid-configuration".
	// Required.
	Issuer string
	// HTTPClient fetches discovery and keys (kube-apiserver serves them
	// only to authenticated callers). Default http.DefaultClient.
	HTTPClient *http.Client
	// Provider is the workload identity provider's resource name,
	// projects/N/locations/global/workloadIdentityPools/P/providers/X.
	// Default DefaultProvider.
	Provider string
	// Impersonation maps each Google service account email that exists to
	// the principals (token subjects, system:serviceaccount:NS:SA) allowed
	// to impersonate it. Change it later with Allow and Revoke.
	Impersonation map[string][]string
	// PodUID, when set, is asked whether the pod a token is bound to still
	// exists; a token bound to a deleted or replaced pod is invalid_grant.
	PodUID PodUIDFunc
	// MaxLifetime is the longest lifetime generateAccessToken grants.
	// Default 1 hour, Google's unless an organisation policy extends it.
	MaxLifetime time.Duration
	// Log receives one line per call (never a token). Default: discard.
	Log *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Endpoint names one of the server's calls, for faults and counts.
type Endpoint string

const (
	EndpointToken               Endpoint = "token"
	EndpointGenerateAccessToken Endpoint = "generateAccessToken"
	EndpointGenerateIDToken     Endpoint = "generateIdToken"
	EndpointIntrospect          Endpoint = "introspect"
)

// Fault is an injected failure.
type Fault struct {
	// Endpoints limits Status, Latency and Reset to these endpoints; empty
	// means token, generateAccessToken and generateIdToken.
	Endpoints []Endpoint
	// Latency delays every answer.
	Latency time.Duration
	// Status, when non-zero, answers every call with that status and
	// Google's error JSON for it (429 RESOURCE_EXHAUSTED, 500 INTERNAL,
	// 503 UNAVAILABLE, 403 PERMISSION_DENIED, others UNKNOWN).
	Status int
	// Reset reads each request and resets the connection (TCP RST).
	Reset bool
	// Refuse closes the listener and every open connection: connections are
	// refused until the fault is cleared, when the server listens on the
	// same address again.
	Refuse bool
}

func (f Fault) applies(ep Endpoint) bool {
	if len(f.Endpoints) == 0 {
		return ep != EndpointIntrospect
	}
	return slices.Contains(f.Endpoints, ep)
}

// Counts are call counters, read atomically.
type Counts struct {
	// Token, GenerateAccessToken, GenerateIDToken and Introspect count
	// requests received (including refused and faulted ones).
	Token, GenerateAccessToken, GenerateIDToken, Introspect int64
	// Federated, AccessTokens and IDTokens count tokens issued.
	Federated, AccessTokens, IDTokens int64
	// InvalidToken counts subject tokens (STS) and bearer tokens (IAM)
	// rejected; Denied counts PERMISSION_DENIED answers; Faulted counts
	// answers replaced by a fault.
	InvalidToken, Denied, Faulted int64
}

// TokenKind says what an issued token is.
type TokenKind string

const (
	Federated    TokenKind = "federated"    // from STS, the pool principal's
	Impersonated TokenKind = "impersonated" // from generateAccessToken
	IDToken      TokenKind = "id_token"     // from generateIdToken
)

// Issued is what the server recorded about a token it minted.
type Issued struct {
	Kind TokenKind
	// Subject is the Kubernetes token's sub (system:serviceaccount:NS:SA),
	// the pool principal's google.subject.
	Subject   string
	Namespace string
	PodName   string
	PodUID    string
	// Email is the impersonated service account (empty for federated).
	Email string
	// Scopes of an access token; Audience of an identity token.
	Scopes     []string
	Audience   string
	IssuedAt   time.Time
	Expiration time.Time
}

// Server is the peer. Create it with New and start it with Start; its
// methods are safe for concurrent use.
type Server struct {
	cfg       Config
	audiences []string
	keys      *clusterkeys.KeySet
	log       *slog.Logger
	idKey     *rsa.PrivateKey
	idSigner  jose.Signer
	idKeyID   string

	nToken, nGAT, nGIT, nIntrospect atomic.Int64
	nFed, nAT, nID                  atomic.Int64
	nInvalid, nDenied, nFaulted     atomic.Int64

	ln  *peer.Listener
	rec peer.Record // secrets; pod UID → verified token exchanges

	mu            sync.Mutex
	impersonation map[string][]string
	fault         Fault
	lifetime      time.Duration      // SetLifetime; 0: the normal lifetimes
	issued        map[string]*Issued // token → record
}

// New checks cfg and returns a Server that is not listening yet.
func New(cfg Config) (*Server, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("googlests: Config.Issuer is required")
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = http.DefaultClient
	}
	if cfg.Provider == "" {
		cfg.Provider = DefaultProvider
	}
	if !providerRE.MatchString(cfg.Provider) {
		return nil, fmt.Errorf("googlests: provider %q is not projects/N/locations/global/workloadIdentityPools/P/providers/X", cfg.Provider)
	}
	if cfg.MaxLifetime == 0 {
		cfg.MaxLifetime = defaultLifetime
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	kid := peer.RandomString(16, lowerHex)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader(jose.HeaderKey("kid"), kid))
	if err != nil {
		return nil, err
	}
	imp := make(map[string][]string, len(cfg.Impersonation))
	for e, ps := range cfg.Impersonation {
		imp[e] = slices.Clone(ps)
	}
	return &Server{
		cfg:           cfg,
		audiences:     []string{Audience(cfg.Provider), "https:" + Audience(cfg.Provider)},
		keys:          clusterkeys.NewKeySet(cfg.Issuer, cfg.HTTPClient),
		log:           log,
		idKey:         key,
		idSigner:      signer,
		idKeyID:       kid,
		ln:            peer.NewListener("googlests"),
		impersonation: imp,
		issued:        make(map[string]*Issued),
	}, nil
}

var (
	providerRE = regexp.MustCompile(`^projects/[0-9]+/locations/global/workloadIdentityPools/[a-z0-9-]{4,32}/providers/[a-z0-9-]{4,32}$`)
	emailRE    = regexp.MustCompile(`^(?:[a-zA-Z0-9][a-zA-Z0-9._+-]*@[a-zA-Z0-9][a-zA-Z0-9.-]*\.[a-zA-Z]{2,}|[0-9]{1,30})$`)
	lifetimeRE = regexp.MustCompile(`^([0-9]+)(?:\.[0-9]{1,9})?s$`)
)

// Audience returns the canonical full name of provider, the audience Google
// expects in the token-exchange request (and, without an allowed-audiences
// list, in the subject token).
func Audience(provider string) string { return "//iam.googleapis.com/" + provider }

// Provider returns the provider's resource name.
func (s *Server) Provider() string { return s.cfg.Provider }

// Start listens on addr (host:port; port 0 picks one) and serves in the
// background until Close.
func (s *Server) Start(addr string) error { return s.ln.Start(addr, s) }

// URL returns http://host:port of the listener (also while refusing): the
// base URL of both STS and IAM Credentials.
func (s *Server) URL() string { return "http://" + s.ln.Addr() }

// Close stops serving and closes all connections.
func (s *Server) Close() error { return s.ln.Close() }

// Allow lets principal (system:serviceaccount:NS:SA) impersonate email,
// which then exists.
func (s *Server) Allow(email, principal string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.Contains(s.impersonation[email], principal) {
		s.impersonation[email] = append(s.impersonation[email], principal)
	}
}

// Revoke takes principal's permission on email away (the account stays).
func (s *Server) Revoke(email, principal string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ps, ok := s.impersonation[email]; ok {
		s.impersonation[email] = slices.DeleteFunc(slices.Clone(ps), func(p string) bool { return p == principal })
	}
}

// SetFault replaces the current fault; Fault{} clears it.
func (s *Server) SetFault(f Fault) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = f
	return s.ln.Refuse(f.Refuse)
}

// SetLifetime makes every token issued from now on expire d after issue,
// whatever was asked; 0 restores the normal lifetimes. Google never grants
// less than minutes: this exists so that a test can outlive a token.
func (s *Server) SetLifetime(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lifetime = d
}

// Counts returns the call counters.
func (s *Server) Counts() Counts {
	return Counts{
		Token: s.nToken.Load(), GenerateAccessToken: s.nGAT.Load(), GenerateIDToken: s.nGIT.Load(), Introspect: s.nIntrospect.Load(),
		Federated: s.nFed.Load(), AccessTokens: s.nAT.Load(), IDTokens: s.nID.Load(),
		InvalidToken: s.nInvalid.Load(), Denied: s.nDenied.Load(), Faulted: s.nFaulted.Load(),
	}
}

// PodCalls returns how many token exchanges carried a verified token bound
// to the pod with this UID.
func (s *Server) PodCalls(podUID string) int64 { return s.rec.PodCalls(podUID) }

// Lookup returns what the server recorded about a token it issued (an
// access token of either kind, or an identity token), expired or not.
func (s *Server) Lookup(token string) (Issued, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	is, ok := s.issued[token]
	if !ok {
		return Issued{}, false
	}
	c := *is
	c.Scopes = slices.Clone(is.Scopes)
	return c, true
}

// Secrets returns every subject token received and every token issued.
func (s *Server) Secrets() []string { return s.rec.Secrets() }

// IDTokenKey is the public key identity tokens are signed with.
func (s *Server) IDTokenKey() *rsa.PublicKey { return &s.idKey.PublicKey }

// UniqueID returns the numeric unique ID the server gives a service account
// email: the sub and azp of its identity tokens.
func UniqueID(email string) string {
	sum := sha256.Sum256([]byte(email))
	n := new(big.Int).SetBytes(sum[:9])
	return "1" + fmt.Sprintf("%020d", n)[:20]
}

// apiError is an error answer, in the OAuth shape (STS) or Google's.
type apiError struct {
	status int
	// oauth is the OAuth error code; when empty the answer is Google's
	// {"error":{"code","message","status","details"}} with rpcStatus.
	oauth     string
	rpcStatus string
	reason    string
	message   string
}

func (e *apiError) Error() string {
	code := e.oauth
	if code == "" {
		code = e.rpcStatus
	}
	return fmt.Sprintf("%d %s: %s", e.status, code, e.message)
}

func oauthError(status int, code, msg string) *apiError {
	return &apiError{status: status, oauth: code, message: msg}
}

func googleError(status int, rpc, reason, msg string) *apiError {
	return &apiError{status: status, rpcStatus: rpc, reason: reason, message: msg}
}

func faultError(status int) *apiError {
	switch status {
	case http.StatusTooManyRequests:
		return googleError(status, "RESOURCE_EXHAUSTED", "RATE_LIMIT_EXCEEDED", "Quota exceeded (injected fault).")
	case http.StatusInternalServerError:
		return googleError(status, "INTERNAL", "", "Internal error encountered (injected fault).")
	case http.StatusServiceUnavailable:
		return googleError(status, "UNAVAILABLE", "", "The service is currently unavailable (injected fault).")
	case http.StatusForbidden:
		return googleError(status, "PERMISSION_DENIED", "IAM_PERMISSION_DENIED", "Permission denied (injected fault).")
	default:
		return googleError(status, "UNKNOWN", "", "Injected fault.")
	}
}

func writeError(w http.ResponseWriter, e *apiError) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(e.status)
	if e.oauth != "" {
		_ = json.NewEncoder(w).Encode(map[string]string{"error": e.oauth, "error_description": e.message})
		return
	}
	body := map[string]any{"code": e.status, "message": e.message, "status": e.rpcStatus}
	if e.reason != "" {
		body["details"] = []map[string]any{{
			"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": e.reason, "domain": "iam.googleapis.com",
		}}
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"error": body})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	_ = json.NewEncoder(w).Encode(v)
}

const saPrefix = "/v1/projects/-/serviceAccounts/"

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	var ep Endpoint
	var counter *atomic.Int64
	path := r.URL.Path
	switch {
	case path == "/oauth2/v3/certs" && r.Method == http.MethodGet:
		s.serveCerts(w)
		return
	case path == "/v1/token":
		ep, counter = EndpointToken, &s.nToken
	case path == "/v1/introspect":
		ep, counter = EndpointIntrospect, &s.nIntrospect
	case strings.HasPrefix(path, "/v1/projects/") && strings.HasSuffix(path, ":generateAccessToken"):
		ep, counter = EndpointGenerateAccessToken, &s.nGAT
	case strings.HasPrefix(path, "/v1/projects/") && strings.HasSuffix(path, ":generateIdToken"):
		ep, counter = EndpointGenerateIDToken, &s.nGIT
	default:
		writeError(w, googleError(http.StatusNotFound, "NOT_FOUND", "", "unknown path"))
		return
	}
	counter.Add(1)
	if r.Method != http.MethodPost {
		writeError(w, googleError(http.StatusMethodNotAllowed, "INVALID_ARGUMENT", "", "POST only"))
		return
	}
	s.mu.Lock()
	fault := s.fault
	s.mu.Unlock()
	if fault.applies(ep) && peer.Inject(w, r, fault.Reset, fault.Latency, fault.Status, func(what any) {
		s.nFaulted.Add(1)
		s.log.Info("google call", "endpoint", ep, "fault", what)
	}, func(status int) { writeError(w, faultError(status)) }) {
		return
	}
	var (
		out any
		err error
	)
	switch ep {
	case EndpointToken:
		out, err = s.token(r)
	case EndpointIntrospect:
		out, err = s.introspect(r)
	case EndpointGenerateAccessToken, EndpointGenerateIDToken:
		out, err = s.impersonate(r, ep)
	}
	if err != nil {
		var ae *apiError
		if !errors.As(err, &ae) {
			ae = googleError(http.StatusInternalServerError, "INTERNAL", "", "internal error")
		}
		switch {
		case ae.rpcStatus == "PERMISSION_DENIED":
			s.nDenied.Add(1)
		case ae.oauth == "invalid_grant" || ae.rpcStatus == "UNAUTHENTICATED":
			s.nInvalid.Add(1)
		}
		s.log.Info("google call", "endpoint", ep, "status", ae.status, "reason", err.Error())
		writeError(w, ae)
		return
	}
	s.log.Info("google call", "endpoint", ep, "status", http.StatusOK)
	writeJSON(w, out)
}

func (s *Server) token(r *http.Request) (any, error) {
	if err := r.ParseForm(); err != nil {
		return nil, oauthError(http.StatusBadRequest, "invalid_request", "cannot parse the form")
	}
	f := r.PostForm
	subject := f.Get("subject_token")
	s.rec.Secret(subject)
	switch {
	case f.Get("grant_type") != grantType:
		return nil, oauthError(http.StatusBadRequest, "unsupported_grant_type", fmt.Sprintf("grant_type %q is not supported", f.Get("grant_type")))
	case f.Get("requested_token_type") != accessTokenType:
		return nil, oauthError(http.StatusBadRequest, "invalid_request", "Invalid value for \"requested_token_type\".")
	case f.Get("subject_token_type") != jwtTokenType && f.Get("subject_token_type") != idTokenType:
		return nil, oauthError(http.StatusBadRequest, "invalid_request", "Invalid value for \"subject_token_type\".")
	case f.Get("audience") != Audience(s.cfg.Provider):
		return nil, oauthError(http.StatusBadRequest, "invalid_target",
			"The target service indicated by the \"audience\" parameters is invalid. This might either be because the pool or provider is disabled or deleted or because it doesn't exist.")
	case subject == "":
		return nil, oauthError(http.StatusBadRequest, "invalid_request", "Missing subject_token.")
	}
	scopes := strings.Fields(f.Get("scope"))
	if len(scopes) == 0 {
		return nil, oauthError(http.StatusBadRequest, "invalid_scope", "Scope(s) must be provided.")
	}
	c, err := s.verify(r.Context(), subject)
	if err != nil {
		return nil, err
	}
	is := &Issued{Kind: Federated, Subject: c.Subject, Namespace: c.K8s.Namespace, Scopes: scopes}
	if c.K8s.Pod != nil {
		is.PodName, is.PodUID = c.K8s.Pod.Name, c.K8s.Pod.UID
	}
	tok := s.issue(is, defaultLifetime, "ya29.d.")
	s.nFed.Add(1)
	return map[string]any{
		"access_token":      tok,
		"issued_token_type": accessTokenType,
		"token_type":        "Bearer",
		"expires_in":        int64(is.Expiration.Sub(is.IssuedAt) / time.Second),
	}, nil
}

// issue records is under a new random token with the given lifetime (or
// the one SetLifetime forces) and returns the token.
func (s *Server) issue(is *Issued, lifetime time.Duration, prefix string) string {
	now := s.cfg.Now().UTC().Truncate(time.Second)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lifetime > 0 {
		lifetime = s.lifetime
	}
	is.IssuedAt, is.Expiration = now, now.Add(lifetime)
	tok := prefix + peer.RandomString(160, tokenAlphabet)
	s.issued[tok] = is
	s.rec.Secret(tok)
	if is.Kind == Federated && is.PodUID != "" {
		s.rec.PodCall(is.PodUID)
	}
	return tok
}

// verify checks a subject token as Google does for an OIDC provider, plus
// the pod binding. Errors are *apiError and never contain the token.
func (s *Server) verify(ctx context.Context, token string) (*clusterkeys.Claims, error) {
	invalid := func(format string, args ...any) error {
		return oauthError(http.StatusBadRequest, "invalid_grant", fmt.Sprintf(format, args...))
	}
	c, err := s.keys.Verify(ctx, token)
	if errors.Is(err, clusterkeys.ErrBadToken) {
		return nil, invalid("%v", err)
	}
	if err != nil {
		// The issuer's keys could not be fetched.
		return nil, oauthError(http.StatusServiceUnavailable, "temporarily_unavailable", err.Error())
	}
	now := s.cfg.Now()
	switch {
	case c.Issuer != s.cfg.Issuer:
		return nil, invalid("The issuer in ID Token %q does not match the expected ones.", c.Issuer)
	case !clusterkeys.ContainsAny(c.Audience, s.audiences):
		return nil, invalid("The audience in ID Token %q does not match the expected audience.", []string(c.Audience))
	case c.Expiry == nil || !now.Before(c.Expiry.Time()):
		return nil, invalid("ID Token has expired.")
	case c.NotBefore != nil && now.Add(time.Minute).Before(c.NotBefore.Time()):
		return nil, invalid("ID Token is not yet valid.")
	case c.Subject == "":
		return nil, invalid("The ID Token has no sub claim to map to google.subject.")
	}
	if s.cfg.PodUID != nil {
		if c.K8s.Pod == nil {
			return nil, invalid("The token is not bound to a pod.")
		}
		uid, err := s.cfg.PodUID(ctx, c.K8s.Namespace, c.K8s.Pod.Name)
		switch {
		case errors.Is(err, ErrPodNotFound):
			return nil, invalid("pod %s/%s the token is bound to no longer exists", c.K8s.Namespace, c.K8s.Pod.Name)
		case err != nil:
			return nil, oauthError(http.StatusServiceUnavailable, "temporarily_unavailable", "looking up the pod: "+err.Error())
		case uid != c.K8s.Pod.UID:
			return nil, invalid("pod %s/%s the token is bound to was replaced", c.K8s.Namespace, c.K8s.Pod.Name)
		}
	}
	return c, nil
}

// bearer returns the federated token record behind the request's
// Authorization header.
func (s *Server) bearer(r *http.Request) (*Issued, error) {
	unauth := googleError(http.StatusUnauthorized, "UNAUTHENTICATED", "ACCESS_TOKEN_TYPE_UNSUPPORTED",
		"Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.")
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return nil, unauth
	}
	s.mu.Lock()
	is, known := s.issued[tok]
	s.mu.Unlock()
	if !known || is.Kind == IDToken || !s.cfg.Now().Before(is.Expiration) {
		return nil, unauth
	}
	if !slices.Contains(is.Scopes, CloudPlatformScope) {
		return nil, googleError(http.StatusForbidden, "PERMISSION_DENIED", "ACCESS_TOKEN_SCOPE_INSUFFICIENT", "Request had insufficient authentication scopes.")
	}
	return is, nil
}

func (s *Server) impersonate(r *http.Request, ep Endpoint) (any, error) {
	name := strings.TrimPrefix(r.URL.Path, "/v1/projects/")
	project, rest, _ := strings.Cut(name, "/serviceAccounts/")
	email, _, _ := strings.Cut(rest, ":")
	if project != "-" || !emailRE.MatchString(email) {
		return nil, googleError(http.StatusBadRequest, "INVALID_ARGUMENT", "", fmt.Sprintf("Invalid form of account ID %s. Should be [Gaia ID |Email |Unique ID |] of the account", email))
	}
	caller, err := s.bearer(r)
	if err != nil {
		return nil, err
	}
	perm := "iam.serviceAccounts.getAccessToken"
	if ep == EndpointGenerateIDToken {
		perm = "iam.serviceAccounts.getOpenIdToken"
	}
	s.mu.Lock()
	allowed := caller.Kind == Federated && slices.Contains(s.impersonation[email], caller.Subject)
	s.mu.Unlock()
	if !allowed {
		return nil, googleError(http.StatusForbidden, "PERMISSION_DENIED", "IAM_PERMISSION_DENIED",
			fmt.Sprintf("Permission '%s' denied on resource (or it may not exist).", perm))
	}
	var body struct {
		Scope        []string `json:"scope"`
		Lifetime     string   `json:"lifetime"`
		Audience     string   `json:"audience"`
		IncludeEmail bool     `json:"includeEmail"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		return nil, googleError(http.StatusBadRequest, "INVALID_ARGUMENT", "", "Invalid JSON payload received.")
	}
	is := &Issued{Subject: caller.Subject, Namespace: caller.Namespace, PodName: caller.PodName, PodUID: caller.PodUID, Email: email}
	if ep == EndpointGenerateAccessToken {
		lifetime := defaultLifetime
		if body.Lifetime != "" {
			m := lifetimeRE.FindStringSubmatch(body.Lifetime)
			if m == nil {
				return nil, googleError(http.StatusBadRequest, "INVALID_ARGUMENT", "", "Invalid value at 'lifetime'.")
			}
			n, _ := strconv.ParseInt(m[1], 10, 64)
			lifetime = time.Duration(n) * time.Second
		}
		if lifetime <= 0 || lifetime > s.cfg.MaxLifetime {
			return nil, googleError(http.StatusBadRequest, "INVALID_ARGUMENT", "",
				fmt.Sprintf("The lifetime must be between 1s and %ds.", int64(s.cfg.MaxLifetime/time.Second)))
		}
		if len(body.Scope) == 0 {
			return nil, googleError(http.StatusBadRequest, "INVALID_ARGUMENT", "", "Scope must be specified.")
		}
		is.Kind, is.Scopes = Impersonated, slices.Clone(body.Scope)
		tok := s.issue(is, lifetime, "ya29.c.")
		s.nAT.Add(1)
		return map[string]string{"accessToken": tok, "expireTime": is.Expiration.Format(time.RFC3339)}, nil
	}
	if body.Audience == "" {
		return nil, googleError(http.StatusBadRequest, "INVALID_ARGUMENT", "", "Audience must be specified.")
	}
	is.Kind, is.Audience = IDToken, body.Audience
	tok, err := s.issueIDToken(is, body.IncludeEmail)
	if err != nil {
		return nil, err
	}
	s.nID.Add(1)
	return map[string]string{"token": tok}, nil
}

func (s *Server) issueIDToken(is *Issued, includeEmail bool) (string, error) {
	now := s.cfg.Now().UTC().Truncate(time.Second)
	s.mu.Lock()
	lifetime := defaultLifetime
	if s.lifetime > 0 {
		lifetime = s.lifetime
	}
	s.mu.Unlock()
	is.IssuedAt, is.Expiration = now, now.Add(lifetime)
	id := UniqueID(is.Email)
	c := map[string]any{
		"iss": IDTokenIssuer, "aud": is.Audience, "azp": id, "sub": id,
		"iat": now.Unix(), "exp": is.Expiration.Unix(),
	}
	if includeEmail {
		c["email"], c["email_verified"] = is.Email, true
	}
	tok, err := jwt.Signed(s.idSigner).Claims(c).Serialize()
	if err != nil {
		return "", fmt.Errorf("signing: %w", err)
	}
	s.mu.Lock()
	s.issued[tok] = is
	s.mu.Unlock()
	s.rec.Secret(tok)
	return tok, nil
}

func (s *Server) serveCerts(w http.ResponseWriter) {
	writeJSON(w, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{
		Key: &s.idKey.PublicKey, KeyID: s.idKeyID, Algorithm: string(jose.RS256), Use: "sig",
	}}})
}

// introspect answers RFC 7662 for access tokens this server issued, with
// extension members naming what the token was minted for.
func (s *Server) introspect(r *http.Request) (any, error) {
	if err := r.ParseForm(); err != nil {
		return nil, oauthError(http.StatusBadRequest, "invalid_request", "cannot parse the form")
	}
	s.mu.Lock()
	is, ok := s.issued[r.PostForm.Get("token")]
	s.mu.Unlock()
	if !ok || is.Kind == IDToken || !s.cfg.Now().Before(is.Expiration) {
		return map[string]any{"active": false}, nil
	}
	username := is.Email
	if username == "" {
		p := strings.Split(s.cfg.Provider, "/")
		username = "principal://iam.googleapis.com/projects/" + p[1] + "/locations/global/workloadIdentityPools/" + p[5] + "/subject/" + is.Subject
	}
	return map[string]any{
		"active":     true,
		"token_type": "Bearer",
		"scope":      strings.Join(is.Scopes, " "),
		"exp":        is.Expiration.Unix(),
		"iat":        is.IssuedAt.Unix(),
		"sub":        is.Subject,
		"username":   username,
		"kind":       string(is.Kind),
		"email":      is.Email,
		"pod_uid":    is.PodUID,
		"pod":        is.Namespace + "/" + is.PodName,
	}, nil
}

const (
	lowerHex      = "0123456789abcdef"
	tokenAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
)
