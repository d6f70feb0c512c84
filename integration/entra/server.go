// Package entra is a Microsoft Entra ID token endpoint for tests. It speaks
// the wire format of the client credentials grant with a federated client
// assertion, as the agent's Azure exchanger (pkg/exchange/azure) and
// Azure's own libraries use it:
//
//   - POST /{tenant}/oauth2/v2.0/token, form grant_type=client_credentials,
//     client_id, scope=<resource>/.default,
//     client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer,
//     client_assertion=<ServiceAccount token>.
//
// The tenant must be known, the client ID an application of that tenant
// (Config.Credentials), and the assertion must match one of the
// application's federated identity credentials as Entra matches them:
//
//	no credentials on the application           AADSTS70025  (invalid_client)
//	no credential with the assertion's issuer   AADSTS700211 (invalid_client)
//	issuer found, subject matches ignoring case AADSTS7002138 (invalid_client)
//	issuer found, no credential with the subject AADSTS70021 (invalid_request)
//	issuer and subject found, audience not      AADSTS700212 (invalid_client)
//
// Subjects are compared case-sensitively, as Entra does since 2024. The
// assertion is verified as Entra verifies it for an issuer URL: its RS256
// signature against the keys found through the issuer's OIDC discovery (the
// real control plane's /.well-known/openid-configuration and JWKS,
// AADSTS700027 otherwise), exp in the future and nbf not (AADSTS700024), and,
// beyond Entra, that the pod the token is bound to still exists with the
// same UID (AADSTS50013, invalid_grant). Other failures carry Entra's codes
// too: 90002 (tenant not found), 700016 (application not found,
// unauthorized_client), 1002012 (a scope without /.default), 500011 (a
// resource not in Config.Resources, when set), 900144 (a missing
// parameter), 50027 (not a JWT). Error answers have Entra's shape:
// {"error","error_description":"AADSTS<n>: ...","error_codes":[n],
// "timestamp","trace_id","correlation_id","error_uri"}.
//
// Access tokens are opaque and random, have a real expiry (expires_in, and
// ext_expires_in as Entra sends it), and are recorded with the tenant,
// client ID, scope, subject and pod they were minted for (Lookup, and POST
// /introspect in RFC 7662 form), so that a test can check that the token a
// client got was minted for its own pod. The server counts calls and
// injects faults (status codes with Entra's bodies and Retry-After,
// latency, refused and reset connections).
//
// Nothing it logs or returns in an error contains a token.
package entra

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/credbroker/agent/integration/clusterkeys"
	"github.com/credbroker/agent/integration/peer"
)

// TokenAudience is the audience of a federated identity credential unless
// it names another.
const TokenAudience = "api://AzureADTokenExchange"

const (
	grantType       = "client_credentials"
	assertionType   = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	defaultLifetime = time.Hour
	scopeSuffix     = "/.default"
)

// ErrPodNotFound is what a PodUIDFunc returns when the pod does not exist.
var ErrPodNotFound = peer.ErrPodNotFound

// PodUIDFunc returns the UID of the pod namespace/name, or ErrPodNotFound.
type PodUIDFunc = peer.PodUIDFunc

// App names an application (or user-assigned managed identity) in a
// tenant.
type App struct {
	Tenant   string
	ClientID string
}

// FederatedCredential is one federated identity credential of an
// application.
type FederatedCredential struct {
	// Issuer must equal the assertion's iss exactly.
	Issuer string
	// Subject must equal the assertion's sub exactly (case-sensitive):
	// system:serviceaccount:NAMESPACE:NAME.
	Subject string
	// Audiences must contain one of the assertion's aud; empty means
	// TokenAudience.
	Audiences []string
}

// Config configures a Server.
type Config struct {
	// Issuer is the OIDC issuer whose keys verify assertions; its discovery
	// document is fetched from Issuer + "/.well-known/openid-configuration".
	// A federated credential naming another issuer never verifies.
	// Required.
	Issuer string
	// HTTPClient fetches discovery and keys (kube-apiserver serves them
	// only to authenticated callers). Default http.DefaultClient.
	HTTPClient *http.Client
	// Credentials are the applications that exist, per tenant and client
	// ID, with their federated identity credentials (an application may
	// have none). Change them later with Allow and Revoke.
	Credentials map[App][]FederatedCredential
	// Tenants are tenants that exist in addition to those of Credentials.
	Tenants []string
	// Resources, when set, are the resources a scope may name (the part
	// before /.default); others are AADSTS500011.
	Resources []string
	// PodUID, when set, is asked whether the pod a token is bound to still
	// exists; a token bound to a deleted or replaced pod is refused.
	PodUID PodUIDFunc
	// Lifetime of access tokens. Default 1 hour.
	Lifetime time.Duration
	// Log receives one line per call (never a token). Default: discard.
	Log *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Endpoint names one of the server's calls, for faults.
type Endpoint string

const (
	EndpointToken      Endpoint = "token"
	EndpointIntrospect Endpoint = "introspect"
)

// Fault is an injected failure.
type Fault struct {
	// Endpoints limits Status, Latency and Reset to these endpoints; empty
	// means the token endpoint.
	Endpoints []Endpoint
	// Latency delays every answer (cut short when the client gives up).
	Latency time.Duration
	// Status, when non-zero, answers every call with that status and an
	// Entra error for it: 429 AADSTS90055 (temporarily_unavailable),
	// 500 AADSTS50000 (server_error), 503 AADSTS90033
	// (temporarily_unavailable), 400 AADSTS50196 (a request loop), others
	// server_error without a number. 429 and 503 carry Retry-After.
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
		return ep == EndpointToken
	}
	return slices.Contains(f.Endpoints, ep)
}

// Counts are call counters, read atomically.
type Counts struct {
	// Token and Introspect count requests received (including refused and
	// faulted ones).
	Token, Introspect int64
	// Issued counts access tokens issued.
	Issued int64
	// NoMatch counts assertions that matched no federated credential
	// (70021, 700211, 700212, 7002138, 70025); InvalidToken counts
	// assertions that failed verification (signature, time, pod binding,
	// malformed); BadRequest counts other refusals (tenant, application,
	// scope, parameters); Faulted counts answers replaced by a fault.
	NoMatch, InvalidToken, BadRequest, Faulted int64
}

// Issued is what the server recorded about an access token it minted.
type Issued struct {
	Tenant   string
	ClientID string
	// Scope as asked (<resource>/.default) and Resource, the part before
	// /.default.
	Scope    string
	Resource string
	// Subject is the assertion's sub (system:serviceaccount:NS:SA); Issuer
	// its iss.
	Subject        string
	Issuer         string
	Namespace      string
	ServiceAccount string
	PodName        string
	PodUID         string
	IssuedAt       time.Time
	Expiration     time.Time
}

// Server is the peer. Create it with New and start it with Start; its
// methods are safe for concurrent use.
type Server struct {
	cfg  Config
	keys *clusterkeys.KeySet
	log  *slog.Logger

	nToken, nIntrospect, nIssued       atomic.Int64
	nNoMatch, nInvalid, nBad, nFaulted atomic.Int64

	ln  *peer.Listener
	rec peer.Record // secrets; pod UID → tokens issued

	mu       sync.Mutex
	creds    map[App][]FederatedCredential
	tenants  map[string]bool // lower-case
	fault    Fault
	lifetime time.Duration      // SetLifetime; 0: cfg.Lifetime
	issued   map[string]*Issued // token → record
}

var guidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// New checks cfg and returns a Server that is not listening yet.
func New(cfg Config) (*Server, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("entra: Config.Issuer is required")
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = http.DefaultClient
	}
	if cfg.Lifetime == 0 {
		cfg.Lifetime = defaultLifetime
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:     cfg,
		keys:    clusterkeys.NewKeySet(cfg.Issuer, cfg.HTTPClient),
		log:     log,
		ln:      peer.NewListener("entra"),
		creds:   make(map[App][]FederatedCredential, len(cfg.Credentials)),
		tenants: make(map[string]bool),
		issued:  make(map[string]*Issued),
	}
	for app, fcs := range cfg.Credentials {
		if !guidRE.MatchString(app.ClientID) {
			return nil, fmt.Errorf("entra: client ID %q is not a GUID", app.ClientID)
		}
		s.creds[app] = cloneCreds(fcs)
		s.tenants[strings.ToLower(app.Tenant)] = true
	}
	for _, t := range cfg.Tenants {
		s.tenants[strings.ToLower(t)] = true
	}
	return s, nil
}

func cloneCreds(fcs []FederatedCredential) []FederatedCredential {
	out := make([]FederatedCredential, len(fcs))
	for i, fc := range fcs {
		fc.Audiences = slices.Clone(fc.Audiences)
		out[i] = fc
	}
	return out
}

// Start listens on addr (host:port; port 0 picks one) and serves in the
// background until Close.
func (s *Server) Start(addr string) error { return s.ln.Start(addr, s) }

// URL returns http://host:port/ of the listener (also while refusing): the
// authority host, as AZURE_AUTHORITY_HOST and the exchanger's AuthorityHost
// take it.
func (s *Server) URL() string { return "http://" + s.ln.Addr() + "/" }

// Close stops serving and closes all connections.
func (s *Server) Close() error { return s.ln.Close() }

// Allow adds a federated identity credential to app, which then exists
// (and so does its tenant).
func (s *Server) Allow(app App, fc FederatedCredential) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fc.Audiences = slices.Clone(fc.Audiences)
	s.creds[app] = append(slices.Clone(s.creds[app]), fc)
	s.tenants[strings.ToLower(app.Tenant)] = true
}

// Revoke removes app's federated identity credentials with this subject
// (the application stays).
func (s *Server) Revoke(app App, subject string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fcs, ok := s.creds[app]; ok {
		s.creds[app] = slices.DeleteFunc(cloneCreds(fcs), func(fc FederatedCredential) bool { return fc.Subject == subject })
	}
}

// SetFault replaces the current fault; Fault{} clears it.
func (s *Server) SetFault(f Fault) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = f
	return s.ln.Refuse(f.Refuse)
}

// SetLifetime makes every token issued from now on expire d after issue;
// 0 restores Config.Lifetime. Entra never grants less than minutes: this
// exists so that a test can outlive a token.
func (s *Server) SetLifetime(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lifetime = d
}

// Counts returns the call counters.
func (s *Server) Counts() Counts {
	return Counts{
		Token: s.nToken.Load(), Introspect: s.nIntrospect.Load(), Issued: s.nIssued.Load(),
		NoMatch: s.nNoMatch.Load(), InvalidToken: s.nInvalid.Load(), BadRequest: s.nBad.Load(), Faulted: s.nFaulted.Load(),
	}
}

// PodCalls returns how many access tokens were issued for assertions bound
// to the pod with this UID.
func (s *Server) PodCalls(podUID string) int64 { return s.rec.PodCalls(podUID) }

// Lookup returns what the server recorded about an access token it issued,
// expired or not.
func (s *Server) Lookup(token string) (Issued, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	is, ok := s.issued[token]
	if !ok {
		return Issued{}, false
	}
	return *is, true
}

// Secrets returns every assertion received and every token issued.
func (s *Server) Secrets() []string { return s.rec.Secrets() }

// entraError is an error answer.
type entraError struct {
	status int
	oauth  string
	code   int64 // 0: no number
	msg    string
	// class is which counter it goes to.
	class *atomic.Int64
}

func (e *entraError) Error() string {
	if e.code == 0 {
		return fmt.Sprintf("%d %s: %s", e.status, e.oauth, e.msg)
	}
	return fmt.Sprintf("%d %s: AADSTS%d: %s", e.status, e.oauth, e.code, e.msg)
}

func (s *Server) noMatch(oauth string, code int64, format string, args ...any) *entraError {
	return &entraError{status: http.StatusBadRequest, oauth: oauth, code: code, msg: fmt.Sprintf(format, args...), class: &s.nNoMatch}
}

func (s *Server) invalid(status int, oauth string, code int64, format string, args ...any) *entraError {
	return &entraError{status: status, oauth: oauth, code: code, msg: fmt.Sprintf(format, args...), class: &s.nInvalid}
}

func (s *Server) bad(oauth string, code int64, format string, args ...any) *entraError {
	return &entraError{status: http.StatusBadRequest, oauth: oauth, code: code, msg: fmt.Sprintf(format, args...), class: &s.nBad}
}

func faultError(status int) *entraError {
	switch status {
	case http.StatusTooManyRequests:
		return &entraError{status: status, oauth: "temporarily_unavailable", code: 90055, msg: "There are too many incoming requests (injected fault)."}
	case http.StatusInternalServerError:
		return &entraError{status: status, oauth: "server_error", code: 50000, msg: "There was an error issuing a token (injected fault)."}
	case http.StatusServiceUnavailable:
		return &entraError{status: status, oauth: "temporarily_unavailable", code: 90033, msg: "A transient error has occurred. Please try again (injected fault)."}
	case http.StatusBadRequest:
		return &entraError{status: status, oauth: "invalid_request", code: 50196, msg: "The server terminated an operation because it encountered a client request loop (injected fault)."}
	default:
		return &entraError{status: status, oauth: "server_error", msg: "Injected fault."}
	}
}

func (s *Server) writeError(w http.ResponseWriter, e *entraError) {
	now := s.cfg.Now().UTC()
	trace, corr := guid(), guid()
	desc := e.msg
	codes := []int64{}
	uri := ""
	if e.code != 0 {
		desc = fmt.Sprintf("AADSTS%d: %s", e.code, e.msg)
		codes = []int64{e.code}
		uri = fmt.Sprintf("https://login.microsoftonline.com/error?code=%d", e.code)
	}
	ts := now.Format("2006-01-02 15:04:05Z")
	desc += "\r\nTrace ID: " + trace + "\r\nCorrelation ID: " + corr + "\r\nTimestamp: " + ts
	body := map[string]any{
		"error": e.oauth, "error_description": desc, "error_codes": codes,
		"timestamp": ts, "trace_id": trace, "correlation_id": corr,
	}
	if uri != "" {
		body["error_uri"] = uri
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store, no-cache")
	if e.status == http.StatusTooManyRequests || e.status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	w.WriteHeader(e.status)
	_ = json.NewEncoder(w).Encode(body)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store, no-cache")
	_ = json.NewEncoder(w).Encode(v)
}

const tokenSuffix = "/oauth2/v2.0/token"

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	var ep Endpoint
	var counter *atomic.Int64
	path := r.URL.Path
	switch {
	case path == "/introspect":
		ep, counter = EndpointIntrospect, &s.nIntrospect
	case strings.HasSuffix(path, tokenSuffix) && strings.Count(path, "/") == 4:
		ep, counter = EndpointToken, &s.nToken
	default:
		s.writeError(w, &entraError{status: http.StatusNotFound, oauth: "invalid_request", msg: "unknown path"})
		return
	}
	counter.Add(1)
	if r.Method != http.MethodPost {
		s.writeError(w, &entraError{status: http.StatusMethodNotAllowed, oauth: "invalid_request", code: 900561, msg: "The endpoint only accepts POST requests."})
		return
	}
	s.mu.Lock()
	fault := s.fault
	s.mu.Unlock()
	if fault.applies(ep) && peer.Inject(w, r, fault.Reset, fault.Latency, fault.Status, func(what any) {
		s.nFaulted.Add(1)
		s.log.Info("entra call", "endpoint", ep, "fault", what)
	}, func(status int) { s.writeError(w, faultError(status)) }) {
		return
	}
	var (
		out any
		err error
	)
	switch ep {
	case EndpointToken:
		tenant := strings.TrimSuffix(strings.TrimPrefix(path, "/"), tokenSuffix)
		out, err = s.token(r, tenant)
	case EndpointIntrospect:
		out, err = s.introspect(r)
	}
	if err != nil {
		var ee *entraError
		if !errors.As(err, &ee) {
			ee = &entraError{status: http.StatusInternalServerError, oauth: "server_error", code: 50000, msg: "internal error"}
		}
		if ee.class != nil {
			ee.class.Add(1)
		}
		s.log.Info("entra call", "endpoint", ep, "status", ee.status, "reason", ee.Error())
		s.writeError(w, ee)
		return
	}
	s.log.Info("entra call", "endpoint", ep, "status", http.StatusOK)
	writeJSON(w, out)
}

func (s *Server) token(r *http.Request, tenant string) (any, error) {
	// ParseForm reads the body only when it is a form: any other body
	// lacks grant_type, as Entra says of it.
	if err := r.ParseForm(); err != nil {
		return nil, s.bad("invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'.")
	}
	f := r.PostForm
	assertion := f.Get("client_assertion")
	s.rec.Secret(assertion)
	for _, p := range []string{"grant_type", "client_id", "scope", "client_assertion_type", "client_assertion"} {
		if f.Get(p) == "" {
			return nil, s.bad("invalid_request", 900144, "The request body must contain the following parameter: '%s'.", p)
		}
		if len(f[p]) > 1 {
			return nil, s.bad("invalid_request", 90015, "Requested query string is too long or the parameter '%s' is duplicated.", p)
		}
	}
	if f.Get("grant_type") != grantType {
		return nil, s.bad("unsupported_grant_type", 70003, "The app requested an unsupported grant type '%s'.", f.Get("grant_type"))
	}
	if f.Get("client_assertion_type") != assertionType {
		return nil, s.bad("invalid_request", 700023, "Client assertion type '%s' is not supported.", f.Get("client_assertion_type"))
	}
	clientID, scope := f.Get("client_id"), f.Get("scope")
	s.mu.Lock()
	tenantKnown := s.tenants[strings.ToLower(tenant)]
	app := App{Tenant: tenant, ClientID: clientID}
	fcs, appKnown := s.creds[app]
	if !appKnown {
		// Tenant IDs and domain names are case-insensitive; so are GUIDs.
		for a, c := range s.creds {
			if strings.EqualFold(a.Tenant, tenant) && strings.EqualFold(a.ClientID, clientID) {
				app, fcs, appKnown = a, c, true
				break
			}
		}
	}
	fcs = cloneCreds(fcs)
	s.mu.Unlock()
	if !tenantKnown {
		return nil, s.bad("invalid_request", 90002, "Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.", tenant)
	}
	if !appKnown {
		return nil, &entraError{status: http.StatusBadRequest, oauth: "unauthorized_client", code: 700016, class: &s.nBad,
			msg: fmt.Sprintf("Application with identifier '%s' was not found in the directory '%s'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", clientID, tenant)}
	}
	if strings.ContainsAny(scope, " ") {
		return nil, s.bad("invalid_scope", 70011, "The provided request must include a 'scope' input parameter with a single resource's /.default scope; '%s' names more than one.", scope)
	}
	resource, ok := strings.CutSuffix(scope, scopeSuffix)
	if !ok || resource == "" {
		return nil, s.bad("invalid_scope", 1002012, "The provided value for scope %s is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).", scope)
	}
	if len(s.cfg.Resources) > 0 && !slices.Contains(s.cfg.Resources, resource) {
		return nil, &entraError{status: http.StatusBadRequest, oauth: "invalid_resource", code: 500011, class: &s.nBad,
			msg: fmt.Sprintf("The resource principal named %s was not found in the tenant named %s. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.", resource, tenant)}
	}

	c, err := s.verify(r.Context(), assertion, fcs)
	if err != nil {
		return nil, err
	}
	is := &Issued{
		Tenant: app.Tenant, ClientID: app.ClientID, Scope: scope, Resource: resource,
		Subject: c.Subject, Issuer: c.Issuer, Namespace: c.K8s.Namespace, ServiceAccount: c.K8s.ServiceAccount.Name,
	}
	if c.K8s.Pod != nil {
		is.PodName, is.PodUID = c.K8s.Pod.Name, c.K8s.Pod.UID
	}
	tok := s.issue(is)
	s.nIssued.Add(1)
	secs := int64(is.Expiration.Sub(is.IssuedAt) / time.Second)
	return map[string]any{
		"token_type":     "Bearer",
		"expires_in":     secs,
		"ext_expires_in": secs,
		"access_token":   tok,
	}, nil
}

// verify checks the assertion as Entra checks a federated client assertion:
// the credential matching (issuer, subject, audience) on the unverified
// claims, then the signature against the issuer's keys, then the validity
// window; and, beyond Entra, the pod binding. Errors are *entraError and
// never contain the token.
func (s *Server) verify(ctx context.Context, token string, fcs []FederatedCredential) (*clusterkeys.Claims, error) {
	c, err := clusterkeys.UnverifiedClaims(token)
	if err != nil {
		return nil, s.invalid(http.StatusBadRequest, "invalid_request", 50027, "JWT token is invalid or malformed.")
	}
	if len(fcs) == 0 {
		return nil, s.noMatch("invalid_client", 70025, "The client has no configured federated identity credentials.")
	}
	var byIssuer []FederatedCredential
	for _, fc := range fcs {
		if fc.Issuer == c.Issuer {
			byIssuer = append(byIssuer, fc)
		}
	}
	if len(byIssuer) == 0 {
		return nil, s.noMatch("invalid_client", 700211, "No matching federated identity record found for presented assertion issuer '%s'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation", c.Issuer)
	}
	var bySubject []FederatedCredential
	folded := false
	for _, fc := range byIssuer {
		switch {
		case fc.Subject == c.Subject:
			bySubject = append(bySubject, fc)
		case strings.EqualFold(fc.Subject, c.Subject):
			folded = true
		}
	}
	if len(bySubject) == 0 {
		if folded {
			return nil, s.noMatch("invalid_client", 7002138, "No matching federated identity record found for presented assertion subject '%s'. The subject matches with case-insensitive comparison, but not with case-sensitive comparison. Check your federated identity credential Subject, Audience and Issuer against the presented assertion. See documentation at: https://learn.microsoft.com/entra/workload-id/workload-identity-federation.", c.Subject)
		}
		return nil, s.noMatch("invalid_request", 70021, "No matching federated identity record found for presented assertion. Assertion Issuer: '%s'. Assertion Subject: '%s'. Assertion Audience: '%s'. https://learn.microsoft.com/entra/workload-id/workload-identity-federation", c.Issuer, c.Subject, strings.Join(c.Audience, ","))
	}
	audOK := false
	for _, fc := range bySubject {
		auds := fc.Audiences
		if len(auds) == 0 {
			auds = []string{TokenAudience}
		}
		if clusterkeys.ContainsAny(c.Audience, auds) {
			audOK = true
			break
		}
	}
	if !audOK {
		return nil, s.noMatch("invalid_client", 700212, "No matching federated identity record found for presented assertion audience '%s'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation", strings.Join(c.Audience, ","))
	}

	if c.Issuer != s.cfg.Issuer {
		// The credential names an issuer whose keys this server does not
		// fetch.
		return nil, s.invalid(http.StatusUnauthorized, "invalid_client", 700027, "Client assertion failed signature validation: no keys for issuer '%s'.", c.Issuer)
	}
	vc, err := s.keys.Verify(ctx, token)
	switch {
	case errors.Is(err, clusterkeys.ErrBadToken):
		return nil, s.invalid(http.StatusUnauthorized, "invalid_client", 700027, "Client assertion failed signature validation. (%v)", err)
	case err != nil:
		// The issuer's keys could not be fetched: Entra's fault to the
		// caller, worth retrying.
		return nil, &entraError{status: http.StatusServiceUnavailable, oauth: "temporarily_unavailable", code: 90033, msg: "A transient error has occurred. Please try again. (fetching the issuer's keys: " + err.Error() + ")"}
	}
	now := s.cfg.Now()
	switch {
	case vc.Expiry == nil || !now.Before(vc.Expiry.Time()):
		return nil, s.invalid(http.StatusBadRequest, "invalid_client", 700024, "Client assertion is not within its valid time range. Current time: %s, expiry time of assertion %s.", now.UTC().Format("2006-01-02T15:04:05.0000000Z"), expiry(vc))
	case vc.NotBefore != nil && now.Add(5*time.Minute).Before(vc.NotBefore.Time()):
		return nil, s.invalid(http.StatusBadRequest, "invalid_client", 700024, "Client assertion is not within its valid time range. Current time: %s, assertion valid from %s.", now.UTC().Format("2006-01-02T15:04:05.0000000Z"), vc.NotBefore.Time().UTC().Format("2006-01-02T15:04:05.0000000Z"))
	}
	if s.cfg.PodUID != nil {
		if vc.K8s.Pod == nil {
			return nil, s.invalid(http.StatusBadRequest, "invalid_grant", 50013, "Assertion failed validation: the token is not bound to a pod.")
		}
		uid, err := s.cfg.PodUID(ctx, vc.K8s.Namespace, vc.K8s.Pod.Name)
		switch {
		case errors.Is(err, ErrPodNotFound):
			return nil, s.invalid(http.StatusBadRequest, "invalid_grant", 50013, "Assertion failed validation: pod %s/%s the token is bound to no longer exists.", vc.K8s.Namespace, vc.K8s.Pod.Name)
		case err != nil:
			return nil, &entraError{status: http.StatusServiceUnavailable, oauth: "temporarily_unavailable", code: 90033, msg: "A transient error has occurred. Please try again. (looking up the pod: " + err.Error() + ")"}
		case uid != vc.K8s.Pod.UID:
			return nil, s.invalid(http.StatusBadRequest, "invalid_grant", 50013, "Assertion failed validation: pod %s/%s the token is bound to was replaced.", vc.K8s.Namespace, vc.K8s.Pod.Name)
		}
	}
	return vc, nil
}

func expiry(c *clusterkeys.Claims) string {
	if c.Expiry == nil {
		return "(none)"
	}
	return c.Expiry.Time().UTC().Format("2006-01-02T15:04:05.0000000Z")
}

// issue records is under a new random token and returns the token.
func (s *Server) issue(is *Issued) string {
	now := s.cfg.Now().UTC().Truncate(time.Second)
	s.mu.Lock()
	defer s.mu.Unlock()
	lifetime := s.cfg.Lifetime
	if s.lifetime > 0 {
		lifetime = s.lifetime
	}
	is.IssuedAt, is.Expiration = now, now.Add(lifetime)
	tok := "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9." + peer.RandomString(200, tokenAlphabet)
	s.issued[tok] = is
	s.rec.Secret(tok)
	if is.PodUID != "" {
		s.rec.PodCall(is.PodUID)
	}
	return tok
}

// introspect answers RFC 7662 for access tokens this server issued, with
// extension members naming what the token was minted for.
func (s *Server) introspect(r *http.Request) (any, error) {
	if err := r.ParseForm(); err != nil {
		return nil, s.bad("invalid_request", 900144, "The request body must contain the following parameter: 'token'.")
	}
	s.mu.Lock()
	is, ok := s.issued[r.PostForm.Get("token")]
	s.mu.Unlock()
	if !ok || !s.cfg.Now().Before(is.Expiration) {
		return map[string]any{"active": false}, nil
	}
	return map[string]any{
		"active":          true,
		"token_type":      "Bearer",
		"scope":           is.Scope,
		"aud":             is.Resource,
		"exp":             is.Expiration.Unix(),
		"iat":             is.IssuedAt.Unix(),
		"tid":             is.Tenant,
		"appid":           is.ClientID,
		"client_id":       is.ClientID,
		"sub":             is.Subject,
		"iss":             is.Issuer,
		"pod_uid":         is.PodUID,
		"pod":             is.Namespace + "/" + is.PodName,
		"service_account": is.Namespace + "/" + is.ServiceAccount,
	}, nil
}

// Introspect asks the server at base (URL()) about token over HTTP, as a
// resource server would, and returns the decoded answer.
func Introspect(ctx context.Context, client *http.Client, base, token string) (map[string]any, error) {
	if client == nil {
		client = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(base, "/")+"/introspect",
		strings.NewReader(url.Values{"token": {token}}.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("introspect: HTTP %d", resp.StatusCode)
	}
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		return nil, err
	}
	return m, nil
}

const tokenAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

func guid() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
