// Package azure exchanges pod-bound Kubernetes ServiceAccount tokens for
// Microsoft Entra ID access tokens through workload identity federation.
//
// An exchange is one HTTP call: the OAuth 2.0 client credentials grant at
// {AuthorityHost}{tenant}/oauth2/v2.0/token, authenticated with the
// ServiceAccount token as a client assertion
// (client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer),
// as Azure Workload Identity's clients do. Entra accepts the assertion when
// the application (Request.Role, its client ID) has a federated identity
// credential whose issuer is the cluster's ServiceAccount issuer, whose
// subject is system:serviceaccount:NAMESPACE:NAME (compared
// case-sensitively) and whose audience is the token's (TokenAudience).
//
// Guarantees:
//   - Each Exchange makes at most one request and never retries: the caller
//     owns retries, backoff and rate limiting.
//   - Requests that cannot succeed (no token, another credential kind, a
//     tenant or client ID of the wrong shape, no resource or more than one)
//     fail with InvalidRequest before any network call.
//   - Every failure is an *exchange.Error whose Kind was decided once, here:
//     a 5xx or 429 by its status, otherwise by Entra's numeric AADSTS code
//     (error_codes), then its OAuth error, then the status. Code is
//     "AADSTS<n>" (or the OAuth error when Entra gives no number). For the
//     federated-credential refusals the error text says what to fix, naming
//     the client ID, tenant and the assertion's issuer and subject.
//   - No error text or Code contains the ServiceAccount token, a part of it
//     or an access token.
//   - The expiration is expires_in counted from the moment before the
//     request was sent, so it is never later than the truth.
//
// Request.Duration is ignored: the client credentials grant has no
// lifetime parameter; Entra decides (an hour or more, never less than five
// minutes).
//
// Entra's directory is eventually consistent: denials are worth retrying
// for DeniedRetryWindow (the broker's Cloud.DeniedRetryWindow).
//
// An Exchanger is safe for concurrent use.
package azure

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/credbroker/agent/pkg/exchange"
)

// DefaultAuthorityHost is Entra ID's public cloud authority (the default of
// the Azure SDKs' AZURE_AUTHORITY_HOST).
const DefaultAuthorityHost = "https://login.microsoftonline.com/"

// DeniedRetryWindow is how long a denial from Entra is worth retrying.
// Microsoft documents Entra's directory as eventually consistent, with a
// newly created application, service principal or credential possibly
// "Not Found" at first ("Designing for Eventual Consistency for Microsoft
// Entra", devblogs.microsoft.com/identity, 2026-03-24), and Azure Workload
// Identity's FAQ names a propagation delay after creating a federated
// identity credential; neither gives an upper bound. Five minutes: longer
// than AWS's two, short enough that a real misconfiguration turns into a
// final 403 soon.
const DeniedRetryWindow = 5 * time.Minute

// TokenAudience is the audience Entra expects of a federated assertion, and
// the default audience of a federated identity credential.
const TokenAudience = "api://AzureADTokenExchange"

// Client credentials grant parameters.
const (
	grantTypeClientCredentials = "client_credentials"
	assertionTypeJWTBearer     = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	defaultScopeSuffix         = "/.default"
)

// maxBody bounds how much of an answer is read.
const maxBody = 1 << 20

// maxMessageLen bounds how much of Entra's error_description goes into an
// error.
const maxMessageLen = 512

// maxResourceLen bounds a resource (Entra's own limit on a scope is far
// below this).
const maxResourceLen = 512

const userAgent = "credbroker"

// The patterns are compiled on first use: an agent without Azure never
// needs their 46 KB of heap (which the GC's goal doubles in RSS).
var (
	// guidRE is a GUID as Entra writes tenant and application IDs.
	guidRE = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	})
	// domainRE is a tenant's domain name (contoso.onmicrosoft.com,
	// contoso.com): DNS labels, at least two, nothing that could change the
	// token endpoint's path.
	domainRE = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`^(?i:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+)$`)
	})
	// resourceRE is an RFC 6749 scope-token: no space, quote, backslash or
	// control character.
	resourceRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[\x21\x23-\x5b\x5d-\x7e]+$`) })
	// codeRE is what may go into Code (metrics, logs).
	codeRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`) })
	// aadstsRE finds the code at the start of an error_description.
	aadstsRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^AADSTS([0-9]{1,10})\b`) })
)

// multiTenant names are accepted by Entra's authorize endpoint but not for
// an application's own client credentials; refusing them gets a hint.
var multiTenant = map[string]bool{"common": true, "organizations": true, "consumers": true}

// ValidTenant reports whether s is a tenant ID (a GUID) or a tenant's
// domain name. The multi-tenant names (common, organizations, consumers)
// are neither.
func ValidTenant(s string) bool {
	return len(s) <= 253 && (guidRE().MatchString(s) || domainRE().MatchString(s))
}

// ValidClientID reports whether s is an application (client) ID: a GUID.
func ValidClientID(s string) bool { return guidRE().MatchString(s) }

// Scope returns the client credentials scope of a resource:
// resource + "/.default", or resource itself when it already ends in
// /.default. A resource with a trailing slash keeps it
// (https://management.azure.com/ becomes https://management.azure.com//.default,
// as MSAL spells it and Entra accepts).
func Scope(resource string) string {
	if strings.HasSuffix(resource, defaultScopeSuffix) {
		return resource
	}
	return resource + defaultScopeSuffix
}

// Config configures New.
type Config struct {
	// AuthorityHost is Entra ID's authority, the token endpoint's base:
	// https://login.microsoftonline.com/ (DefaultAuthorityHost, the default),
	// https://login.microsoftonline.us/, https://login.chinacloudapi.cn/.
	// A trailing slash is optional.
	AuthorityHost string
	// HTTPClient sends the requests. Nil means a client with a 3 s connect
	// and TLS handshake timeout, a 10 s overall timeout, keep-alive, and the
	// proxy from the environment (HTTPS_PROXY, NO_PROXY).
	HTTPClient *http.Client
	// Clock turns expires_in into an expiration. Default: the real clock.
	Clock clock.PassiveClock
}

// Exchanger exchanges ServiceAccount tokens for Entra ID access tokens.
type Exchanger struct {
	authority string // without the trailing slash
	client    *http.Client
	clock     clock.PassiveClock
}

// New returns an Exchanger. It makes no network call.
func New(cfg Config) (*Exchanger, error) {
	s := cfg.AuthorityHost
	if s == "" {
		s = DefaultAuthorityHost
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("azure: authority host %q is not an absolute http(s) URL without query", s)
	}
	client := exchange.HTTPClientOr(cfg.HTTPClient)
	clk := cfg.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Exchanger{authority: strings.TrimRight(s, "/"), client: client, clock: clk}, nil
}

// TokenURL returns the token endpoint of tenant.
func (x *Exchanger) TokenURL(tenant string) string {
	return x.authority + "/" + url.PathEscape(tenant) + "/oauth2/v2.0/token"
}

// Exchange returns an Entra ID access token for req.Scopes[0] (a resource
// such as https://vault.azure.net, or a scope already ending in /.default)
// as the application whose client ID is req.Role, in tenant req.Tenant.
func (x *Exchanger) Exchange(ctx context.Context, req exchange.Request) (exchange.Credentials, error) {
	if err := check(req); err != nil {
		return exchange.Credentials{}, err
	}
	scope := Scope(req.Scopes[0])
	ce := &callError{client: req.Role, tenant: req.Tenant, scope: scope}
	form := url.Values{
		"grant_type":            {grantTypeClientCredentials},
		"client_id":             {req.Role},
		"scope":                 {scope},
		"client_assertion_type": {assertionTypeJWTBearer},
		"client_assertion":      {req.Token.Reveal()},
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, x.TokenURL(req.Tenant), strings.NewReader(form.Encode()))
	if err != nil {
		// Only a broken authority gets here; New checked it.
		ce.detail = "building request"
		return exchange.Credentials{}, &exchange.Error{Kind: exchange.InvalidRequest, Err: ce}
	}
	hreq.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	hreq.Header.Set("Accept", "application/json")
	hreq.Header.Set("User-Agent", userAgent)
	start := x.clock.Now()
	resp, err := x.client.Do(hreq)
	if err != nil {
		return exchange.Credentials{}, sendError(ctx, ce, err, req.Token)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		ce.status = resp.StatusCode
		return exchange.Credentials{}, sendError(ctx, ce, err, req.Token)
	}
	ce.status = resp.StatusCode
	if resp.StatusCode != http.StatusOK {
		return exchange.Credentials{}, classify(ce, body, req.Token)
	}
	var out struct {
		AccessToken string          `json:"access_token"`
		TokenType   string          `json:"token_type"`
		ExpiresIn   json.RawMessage `json:"expires_in"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return exchange.Credentials{}, upstreamFault(ce, "answer is not the expected JSON")
	}
	secs, ok := seconds(out.ExpiresIn)
	if out.AccessToken == "" || !ok {
		return exchange.Credentials{}, upstreamFault(ce, "answer lacks access_token or a positive expires_in")
	}
	return exchange.Credentials{
		Kind:        exchange.KindAccessToken,
		AccessToken: exchange.Secret(out.AccessToken),
		TokenType:   tokenType(out.TokenType),
		Scopes:      []string{scope},
		Expiration:  start.Add(time.Duration(secs) * time.Second).UTC(),
	}, nil
}

// seconds reads expires_in, a number (v2.0 endpoint) or a string of digits
// (as v1.0 and some proxies write it; json.Number takes both).
func seconds(raw json.RawMessage) (int64, bool) {
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return 0, false
	}
	v, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil || v <= 0 || v > 1<<31 {
		return 0, false
	}
	return v, true
}

func tokenType(t string) string {
	if t == "" || strings.EqualFold(t, "bearer") {
		return "Bearer"
	}
	return t
}

func check(req exchange.Request) error {
	bad := func(format string, args ...any) error {
		return &exchange.Error{Kind: exchange.InvalidRequest, Err: &callError{detail: fmt.Sprintf(format, args...)}}
	}
	if req.Token == "" {
		return bad("empty ServiceAccount token")
	}
	if req.Want != exchange.KindAccessToken {
		return bad("Azure serves access tokens, not credential kind %d", req.Want)
	}
	if !ValidClientID(req.Role) {
		return bad("client ID %q is not an application (client) ID: a GUID as on the app registration or managed identity (annotation azure.workload.identity/client-id)", req.Role)
	}
	if !ValidTenant(req.Tenant) {
		hint := ""
		if multiTenant[strings.ToLower(req.Tenant)] {
			hint = " (multi-tenant names cannot authenticate an application: name its own tenant)"
		}
		return bad("tenant %q is not a tenant ID (a GUID) or a tenant domain name%s", req.Tenant, hint)
	}
	switch len(req.Scopes) {
	case 0:
		return bad("no resource named")
	case 1:
	default:
		return bad("one resource per token, not %d (Entra issues a token for one resource's /.default scope)", len(req.Scopes))
	}
	r := req.Scopes[0]
	if len(r) > maxResourceLen || !resourceRE().MatchString(r) || r == defaultScopeSuffix {
		return bad("resource %q is not a resource URI or application ID", r)
	}
	return nil
}

// callError describes one failed call in words that are safe to log: the
// client ID, tenant and scope (none of them secret), the HTTP status,
// Entra's code, what to fix and Entra's own description (dropped if it
// quotes a secret). It wraps the transport's error, if any, so that
// errors.Is(err, context.DeadlineExceeded) works; the transport's errors
// carry the URL (tenant only: the token travels in the body), never a body.
type callError struct {
	client, tenant, scope string
	status                int
	code                  string
	hint                  string
	detail                string
	cause                 error
}

func (e *callError) Error() string {
	var b strings.Builder
	b.WriteString("azure token request")
	if e.client != "" {
		fmt.Fprintf(&b, " for client %s in tenant %s", e.client, e.tenant)
	}
	if e.scope != "" {
		fmt.Fprintf(&b, " (scope %s)", e.scope)
	}
	if e.status != 0 {
		fmt.Fprintf(&b, ": HTTP %d", e.status)
	}
	exchange.AppendDetails(&b, e.code, e.hint, e.detail)
	return b.String()
}

func (e *callError) Unwrap() error { return e.cause }

// upstreamFault is a 200 that cannot be used: Entra's fault (or a proxy's),
// worth another try later.
func upstreamFault(ce *callError, detail string) *exchange.Error {
	ce.detail = detail
	return &exchange.Error{Kind: exchange.Transient, Err: ce}
}

// sendError classifies a request that got no (complete) answer: always
// Transient.
func sendError(ctx context.Context, ce *callError, err error, token exchange.Secret) *exchange.Error {
	ce.cause = err
	if ctx.Err() != nil {
		// The caller's deadline or cancellation, as opposed to the HTTP
		// client's own timeout.
		ce.detail = "caller's context: " + ctx.Err().Error()
	} else {
		ce.detail = "request failed: " + exchange.SendFailure(err)
	}
	if exchange.Leaks(ce.detail, token) || exchange.Leaks(err.Error(), token) {
		ce.detail = "request failed"
		ce.cause = nil
	}
	return &exchange.Error{Kind: exchange.Transient, Err: ce}
}

// entraError is Entra's error answer:
// {"error":"invalid_request","error_description":"AADSTS70021: ...",
// "error_codes":[70021],"trace_id":"...","correlation_id":"..."}.
type entraError struct {
	Error            string  `json:"error"`
	ErrorDescription string  `json:"error_description"`
	ErrorCodes       []int64 `json:"error_codes"`
}

// classify turns a non-200 answer into an *exchange.Error.
func classify(ce *callError, body []byte, token exchange.Secret) *exchange.Error {
	var eb entraError
	_ = json.Unmarshal(body, &eb)
	var num int64 = -1
	if len(eb.ErrorCodes) > 0 {
		num = eb.ErrorCodes[0]
	} else if m := aadstsRE().FindStringSubmatch(eb.ErrorDescription); m != nil {
		num, _ = strconv.ParseInt(m[1], 10, 64)
	}
	oauth := eb.Error
	if !codeRE().MatchString(oauth) || exchange.Leaks(oauth, token) {
		oauth = ""
	}
	switch {
	case num >= 0:
		ce.code = "AADSTS" + strconv.FormatInt(num, 10)
	default:
		ce.code = oauth
	}
	ce.detail = description(eb.ErrorDescription, token)
	if ce.detail == "" && ce.code == "" {
		ce.detail = "unparsable error answer"
	}

	var kind exchange.ErrorKind
	switch {
	case ce.status >= 500:
		kind = exchange.Transient
	case ce.status == http.StatusTooManyRequests:
		kind = exchange.Throttled
	default:
		var known bool
		if kind, ce.hint, known = kindForAADSTS(num, ce.client, ce.tenant, claimsOf(token)); !known {
			if kind, known = kindForOAuth(oauth); !known {
				kind = exchange.KindForStatus(ce.status, statusKinds)
			}
		}
	}
	xe := &exchange.Error{Kind: kind, Code: ce.code, Err: ce}
	if num == 700212 && kind == exchange.Denied {
		// No federated credential has the token's audience: the agent's
		// --azure-audience, or the credential's, not the client ID. The
		// hint says which, to the pod too.
		xe.Cause = exchange.CauseAudience
		xe.Hint, ce.hint = ce.hint, ""
	}
	return xe
}

// description is Entra's error_description on one line, bounded, or
// nothing if it quotes the token.
func description(s string, token exchange.Secret) string {
	if s == "" {
		return ""
	}
	if exchange.Leaks(s, token) {
		// Only a peer that is not Entra would echo the assertion.
		return "(message withheld: it quotes the token)"
	}
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > maxMessageLen {
		s = s[:maxMessageLen] + "..."
	}
	return s
}

// assertion holds the claims of the ServiceAccount token that name what a
// federated identity credential must match. They are not secret (the token
// as a whole is).
type assertion struct {
	Issuer  string `json:"iss"`
	Subject string `json:"sub"`
}

// claimsOf reads the token's iss and sub without verifying it, for error
// texts only; a token that is not a JWT, or claims that do not look like
// what they should, give empty fields.
func claimsOf(token exchange.Secret) assertion {
	parts := strings.Split(token.Reveal(), ".")
	if len(parts) != 3 {
		return assertion{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return assertion{}
	}
	var a assertion
	if json.Unmarshal(payload, &a) != nil {
		return assertion{}
	}
	safe := func(s string) string {
		if len(s) > 256 || !resourceRE().MatchString(s) || exchange.Leaks(s, token) {
			return ""
		}
		return s
	}
	return assertion{Issuer: safe(a.Issuer), Subject: safe(a.Subject)}
}

// kindForAADSTS classifies Entra's numeric codes
// (https://learn.microsoft.com/entra/identity-platform/reference-error-codes)
// and says what the operator has to fix.
func kindForAADSTS(code int64, client, tenant string, a assertion) (exchange.ErrorKind, string, bool) {
	iss, sub := a.Issuer, a.Subject
	if iss == "" {
		iss = "the cluster's ServiceAccount issuer"
	}
	if sub == "" {
		sub = "system:serviceaccount:NAMESPACE:NAME"
	}
	app := "application " + client
	switch code {
	case 70021:
		// "No matching federated identity record found for presented
		// assertion. Assertion Issuer: '…'. Assertion Subject: '…'.
		// Assertion Audience: '…'."
		return exchange.Denied, fmt.Sprintf("no federated identity credential on %s matches issuer %s, subject %s and audience %s: add one with exactly these values",
			app, iss, sub, TokenAudience), true
	case 700211:
		// "No matching federated identity record found for presented
		// assertion issuer '…'."
		return exchange.Denied, fmt.Sprintf("no federated identity credential on %s has issuer %s: set the credential's issuer to the cluster's ServiceAccount issuer exactly (scheme, host, path and trailing slash as in the token's iss claim)",
			app, iss), true
	case 700212:
		// "No matching federated identity record found for presented
		// assertion audience '…'."
		return exchange.Denied, fmt.Sprintf("no federated identity credential on %s has the token's audience: set the credential's audience to %s (or the agent's --azure-audience to the credential's)",
			app, TokenAudience), true
	case 700213, 7002137:
		// "No matching federated identity record found for presented
		// assertion subject '…'."
		return exchange.Denied, fmt.Sprintf("no federated identity credential on %s with issuer %s has subject %s: add one with that subject",
			app, iss, sub), true
	case 7002138:
		// "The subject matches with case-insensitive comparison, but not
		// with case-sensitive comparison."
		return exchange.Denied, fmt.Sprintf("the federated identity credential on %s matches subject %s only ignoring case: Entra compares subjects case-sensitively, so spell the credential's subject exactly as the ServiceAccount's namespace and name",
			app, sub), true
	case 70025:
		// "The client has no configured federated identity credentials."
		return exchange.Denied, fmt.Sprintf("%s has no federated identity credentials: add one with issuer %s, subject %s and audience %s",
			app, iss, sub, TokenAudience), true
	case 7000112, 700054, 50105:
		// Application disabled; not assigned a role; consent missing.
		return exchange.Denied, fmt.Sprintf("%s is disabled in tenant %s or not allowed to get tokens", app, tenant), true
	case 700016:
		// "Application with identifier '…' was not found in the directory
		// '…'." A wrong client ID or tenant, or an application created a
		// moment ago: Entra's directory is eventually consistent, and
		// Microsoft documents that a newly created object may be "Not
		// Found" until it has replicated (DeniedRetryWindow). So it is a
		// denial, retried through the window and then a final 403, never
		// a 400: Python azure-identity gives up on the endpoint for good
		// after a 400.
		return exchange.Denied, fmt.Sprintf("%s was not found in tenant %s: check the ServiceAccount's client-id annotation and that the tenant (annotation azure.workload.identity/tenant-id, or the agent's --azure-tenant-id) is the application's",
			app, tenant), true
	case 90002, 50034, 900023, 90013:
		// "Tenant '…' not found."; an invalid tenant identifier.
		return exchange.InvalidRequest, fmt.Sprintf("tenant %s was not found: check the ServiceAccount's azure.workload.identity/tenant-id annotation or the agent's --azure-tenant-id, and the authority host (sovereign clouds have their own)",
			tenant), true
	case 70011, 500011, 500014, 50001, 28002, 28003:
		// An invalid scope; no such resource in the tenant; resource
		// disabled.
		return exchange.InvalidRequest, "the resource is not valid in this tenant: check the resource the application asked for", true
	case 700024, 50027, 50013, 700027, 50132, 700005:
		// The assertion is outside its validity window, not a valid JWT,
		// or its signature does not verify against the issuer's keys.
		return exchange.InvalidToken, fmt.Sprintf("Entra rejected the ServiceAccount token itself: check that the issuer %s serves its OpenID discovery document and keys publicly and that the node's clock is right",
			iss), true
	case 50196, 90055, 900432:
		// A client request loop; tenant throttling.
		return exchange.Throttled, "", true
	case 90033, 50000:
		// "A transient error has occurred"; Entra's own fault.
		return exchange.Transient, "", true
	}
	return 0, "", false
}

// kindForOAuth classifies the RFC 6749 error when Entra gave no known
// number.
func kindForOAuth(code string) (exchange.ErrorKind, bool) {
	switch code {
	case "invalid_client", "access_denied":
		// The assertion did not authenticate the application.
		return exchange.Denied, true
	case "invalid_grant":
		return exchange.InvalidToken, true
	case "unauthorized_client", "invalid_request", "invalid_scope", "unsupported_grant_type", "invalid_resource":
		// A wrong client ID or tenant, or a malformed request.
		return exchange.InvalidRequest, true
	case "temporarily_unavailable", "server_error":
		return exchange.Transient, true
	}
	return 0, false
}

// statusKinds are the statuses Entra ID gives a meaning of their own
// when no code explains them. A 429 or 5xx never gets here: classify
// decides those by status before any code.
var statusKinds = map[int]exchange.ErrorKind{
	http.StatusUnauthorized: exchange.InvalidToken,
	http.StatusForbidden:    exchange.Denied,
}
