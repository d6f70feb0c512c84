// Package azureidentity serves the Azure managed-identity token endpoint
// that Azure's client libraries use to get access tokens: MSAL Go (under
// azidentity's ManagedIdentityCredential and DefaultAzureCredential),
// Python azure-identity and JS @azure/identity.
//
// One path, TokenPath, answers two request forms:
//
//   - App Service style (api-version=2019-08-01), which every client picks
//     when the pod sets IDENTITY_ENDPOINT=http://169.254.170.23/metadata/identity/oauth2/token
//     and IDENTITY_HEADER=<Config.IdentityHeader>: the request carries
//     X-IDENTITY-HEADER; the answer is {"access_token","expires_on","resource",
//     "token_type","client_id"} with expires_on in Unix seconds, as a string
//     (App Service's own format; MSAL Go, azure-identity and msal-node all
//     accept it).
//   - IMDS style (api-version=2018-02-01), for a client pointed at the agent
//     as if it were IMDS: the request carries Metadata: true; the answer is
//     {"access_token","expires_in","expires_on","not_before","resource",
//     "token_type"}, every value a string as IMDS sends them.
//
// It is a thin http.Handler over the broker: every token comes from
// Broker.Credentials for the pod at the connection's source address, so the
// cache, refresh-ahead, single flight, limits and policy are the broker's.
//
// Rules, each one tested:
//   - a request carrying X-IDENTITY-HEADER is the App Service form: a value
//     other than Config.IdentityHeader (or an empty one) is a 401, as App
//     Service answers; the header is an SSRF guard, not a secret;
//   - a request without it must carry Metadata: true (the IMDS form);
//     without either it is a 400 invalid_request "Required metadata header
//     not specified", IMDS's answer;
//   - X-Forwarded-For is refused with 403: a proxy inside the pod must not
//     become a token client for someone else;
//   - only GET (405 otherwise); only TokenPath, byte for byte (404
//     otherwise); unknown query parameters are ignored;
//   - resource is required (400); it is canonicalised (surrounding spaces
//     and a "/.default" suffix dropped: the exchanger appends /.default) and
//     bounded (MaxResourceLen, printable ASCII), so that no spelling of one
//     resource makes a second cache entry. A trailing slash is kept: Entra
//     ID puts the resource as spelled into the token's audience, so
//     "https://management.core.windows.net/" and its slashless form are two
//     tokens;
//   - client_id names the identity (optional; naming another than the pod's
//     ServiceAccount's is the broker's 403 IdentityNotAllowed); object_id,
//     principal_id, mi_res_id and msi_res_id are a 400: the agent knows
//     identities by client ID only;
//   - a transient failure is a 503 with Retry-After, throttling a 429, a
//     refusal a 403, and only a request that can never succeed a 400
//     (Python azure-identity stops using an endpoint for good after a 400);
//   - errors are JSON {"error","error_description"}: the broker's code and
//     message, never a secret, never what the caller sent.
package azureidentity

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/credbroker/agent/pkg/api/internal/surface"
	"github.com/credbroker/agent/pkg/api/internal/wire"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/guard"
)

// Name is the surface's value of the request metrics' surface label.
const Name = "azure"

// Broker is what the surface needs from the broker.
type Broker = surface.Broker

// Paths and values clients depend on.
const (
	// TokenPath is the one path served, for both forms. Pods set
	// IDENTITY_ENDPOINT=http://169.254.170.23/metadata/identity/oauth2/token.
	TokenPath = "/metadata/identity/oauth2/token"
	// IdentityHeaderName is the App Service form's SSRF guard header.
	IdentityHeaderName = "X-Identity-Header"
	// AppServiceAPIVersion and IMDSAPIVersion are what the clients send.
	// Any api-version is accepted; the headers decide the form.
	AppServiceAPIVersion = "2019-08-01"
	IMDSAPIVersion       = "2018-02-01"
)

// Bounds on what a caller may ask for. Past them the answer is 400.
const (
	// MaxQuery is the longest raw query string accepted.
	MaxQuery = 4096
	// MaxResourceLen is the longest resource, after canonicalisation.
	MaxResourceLen = 512
	// MaxClientIDLen is the longest client_id (a GUID is 36).
	MaxClientIDLen = 128
	// MaxIdentityHeaderLen is the longest Config.IdentityHeader.
	MaxIdentityHeaderLen = 256
)

// Error codes the surface writes itself (the broker's Failure codes are
// written as they come).
const (
	CodeBadRequest       = "invalid_request"
	CodeUnauthorized     = "Unauthorized"
	CodeForbidden        = "Forbidden"
	CodeNotFound         = "NotFound"
	CodeMethodNotAllowed = "MethodNotAllowed"
	CodeUnavailable      = "ServiceUnavailable"
	CodeInternal         = "InternalError"
)

// Config configures a Handler.
type Config struct {
	// Broker answers credential requests. Required.
	Broker Broker
	// IdentityHeader is the value pods put in IDENTITY_HEADER and clients
	// send as X-IDENTITY-HEADER. Required: printable ASCII without spaces,
	// at most MaxIdentityHeaderLen bytes. It is an SSRF guard (a request
	// forged through a URL fetcher carries no such header), not a secret.
	IdentityHeader string
	// Clock computes expires_on and expires_in. Default: the real clock.
	Clock clock.PassiveClock
	// Registerer registers the request metrics. Default: not registered.
	Registerer prometheus.Registerer
}

// Handler serves TokenPath. Create it with New.
//
// SECURITY: the caller's identity comes from r.RemoteAddr only, the address
// of the TCP peer. Headers and the query string never influence whose
// credentials are served; client_id only names which of the caller's own
// identities it wants, and the broker refuses any other.
type Handler struct {
	surface.Handler
	b      Broker
	header []byte
	clock  clock.PassiveClock
	// resources are the resources asked for before, so that a hit for one
	// the client escaped allocates nothing.
	resources wire.Values
}

// New checks cfg and returns a Handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Broker == nil {
		return nil, errors.New("azureidentity: Broker is required")
	}
	if cfg.IdentityHeader == "" {
		return nil, errors.New("azureidentity: IdentityHeader is required")
	}
	if len(cfg.IdentityHeader) > MaxIdentityHeaderLen || !wire.Printable(cfg.IdentityHeader) {
		return nil, fmt.Errorf("azureidentity: IdentityHeader must be printable ASCII without spaces, at most %d bytes", MaxIdentityHeaderLen)
	}
	h := &Handler{b: cfg.Broker, header: []byte(cfg.IdentityHeader), clock: cfg.Clock}
	if h.clock == nil {
		h.clock = clock.RealClock{}
	}
	var err error
	if h.Handler, err = surface.NewHandler(cfg.Registerer, Name, h.serve, h.clock); err != nil {
		return nil, err
	}
	return h, nil
}

// Owns reports whether the surface answers path p: the whole /metadata/
// tree, so that a near miss of TokenPath is answered in this surface's
// format.
func Owns(p string) bool { return strings.HasPrefix(p, "/metadata/") }

// TokenRequest is the broker request this surface makes for a token for
// resource on behalf of a pod that names no client ID, canonicalised as a
// caller's would be: what the agent prefetches must be the very cache entry
// the surface later reads.
func TokenRequest(resource string) (broker.Request, error) {
	canon, err := canonicalResource(resource)
	if err != nil {
		return broker.Request{}, err
	}
	return broker.Request{Cloud: exchange.Azure, Want: exchange.KindAccessToken, Scope: canon}, nil
}

// Pre-built header values: assigning them directly to the header map keeps
// the cache-hit path free of allocations.
var (
	contentTypeJSON = []string{"application/json; charset=utf-8"}
	noStore         = []string{"no-store"}
	nosniff         = []string{"nosniff"}
	allowGet        = []string{"GET"}
)

func (h *Handler) serve(w http.ResponseWriter, r *http.Request) int {
	if _, ok := r.Header["X-Forwarded-For"]; ok {
		return writeError(w, http.StatusForbidden, CodeForbidden, "requests carrying X-Forwarded-For are refused")
	}
	if r.Method != http.MethodGet {
		w.Header()["Allow"] = allowGet
		return writeError(w, http.StatusMethodNotAllowed, CodeMethodNotAllowed, "only GET is supported")
	}
	// Only the exact bytes of the served path: URL.Path is decoded, so an
	// escaped spelling would decode into it.
	if r.URL.Path != TokenPath || r.URL.RawPath != "" || r.URL.EscapedPath() != TokenPath {
		return writeError(w, http.StatusNotFound, CodeNotFound, "no such path; the token endpoint is "+TokenPath)
	}
	appService := false
	if v, ok := r.Header[IdentityHeaderName]; ok {
		// One value, equal to the configured one. Not a secret, but
		// comparing in constant time costs nothing.
		if len(v) != 1 || subtle.ConstantTimeCompare([]byte(v[0]), h.header) != 1 {
			return writeError(w, http.StatusUnauthorized, CodeUnauthorized,
				"the X-IDENTITY-HEADER header does not match: set it to the IDENTITY_HEADER value the agent's operator configured (--azure-identity-header)")
		}
		appService = true
	} else if v := r.Header["Metadata"]; len(v) != 1 || !strings.EqualFold(v[0], "true") {
		return writeError(w, http.StatusBadRequest, CodeBadRequest, "Required metadata header not specified")
	}
	q := r.URL.RawQuery
	if len(q) > MaxQuery {
		return writeError(w, http.StatusBadRequest, CodeBadRequest, "query string too long")
	}
	for _, k := range [...]string{"object_id", "principal_id", "mi_res_id", "msi_res_id"} {
		if _, ok := wire.QueryValue(q, k); ok {
			return writeError(w, http.StatusBadRequest, CodeBadRequest,
				k+" is not supported: name the identity by client_id, or omit it for the one the pod's ServiceAccount names")
		}
	}
	raw, _ := wire.QueryValue(q, "resource")
	res, err := h.resources.Unescape(raw)
	if err != nil {
		return writeError(w, http.StatusBadRequest, CodeBadRequest, "resource: invalid escape")
	}
	res, err = canonicalResource(res)
	if err != nil {
		return writeError(w, http.StatusBadRequest, CodeBadRequest, err.Error())
	}
	var clientID string
	if raw, ok := wire.QueryValue(q, "client_id"); ok {
		id, err := wire.Unescape(raw)
		if err != nil {
			return writeError(w, http.StatusBadRequest, CodeBadRequest, "client_id: invalid escape")
		}
		id = strings.TrimSpace(id)
		if len(id) > MaxClientIDLen || !wire.Printable(id) {
			return writeError(w, http.StatusBadRequest, CodeBadRequest,
				fmt.Sprintf("client_id must be printable ASCII, at most %d bytes", MaxClientIDLen))
		}
		clientID = id
	}
	return h.token(w, r, appService, res, clientID)
}

func (h *Handler) token(w http.ResponseWriter, r *http.Request, appService bool, res, clientID string) int {
	addr, ok := surface.Addr(r)
	if !ok {
		return writeError(w, http.StatusBadRequest, CodeBadRequest, "the caller's address could not be read")
	}
	ans, f := h.b.Serve(r.Context(), addr, broker.Request{
		Cloud: exchange.Azure, Want: exchange.KindAccessToken, Identity: clientID, Scope: res})
	if f != nil {
		return statuses.Write(w, f, WriteError)
	}
	c := ans.Credentials
	if c == nil || c.AccessToken == "" {
		return writeError(w, http.StatusInternalServerError, CodeInternal, "the broker returned no access token")
	}
	now := h.clock.Now()
	// Whole seconds, rounded down: never promise more life than is left.
	secs := int64(c.Expiration.Sub(now) / time.Second)
	if secs <= 0 {
		w.Header()["Retry-After"] = []string{"1"}
		return writeError(w, http.StatusServiceUnavailable, CodeUnavailable, "the access token is being refreshed; retry")
	}
	expiresOn := c.Expiration.Unix()
	bp := wire.Buffer()
	b := append(*bp, `{"access_token":`...)
	b = wire.AppendJSONString(b, c.AccessToken.Reveal())
	if appService {
		b = append(b, `,"client_id":`...)
		b = wire.AppendJSONString(b, ans.Identity)
	} else {
		b = append(b, `,"expires_in":"`...)
		b = strconv.AppendInt(b, secs, 10)
		b = append(b, '"')
	}
	b = append(b, `,"expires_on":"`...)
	b = strconv.AppendInt(b, expiresOn, 10)
	b = append(b, '"')
	if !appService {
		b = append(b, `,"not_before":"`...)
		b = strconv.AppendInt(b, now.Unix(), 10)
		b = append(b, '"')
	}
	b = append(b, `,"resource":`...)
	b = wire.AppendJSONString(b, res)
	b = append(b, `,"token_type":"Bearer"}`...)
	hdr := w.Header()
	hdr["Content-Type"] = contentTypeJSON
	hdr["Cache-Control"] = noStore
	return wire.Reply(w, bp, b, false)
}

// statuses map the failure classes to the HTTP statuses this surface
// answers. Every client retries 429 and 503 (azidentity: 408, 429, 500,
// 502-504 for App Service, 404, 410, 429, 5xx for IMDS; msal-node: 404,
// 408, 429, 500, 503, 504; azure-identity: azure-core's 408, 429, 500,
// 502-504), and none gives up on the endpoint after them.
var statuses = surface.Statuses{Refused: http.StatusForbidden, Throttled: http.StatusTooManyRequests,
	Invalid: http.StatusBadRequest, Unavailable: http.StatusServiceUnavailable, RetryableOnly: true}

// Status maps a failure class to the HTTP status this surface answers.
func Status(c broker.Class) int { return statuses.Status(c) }

// GuardRules are this surface's rules for the request guard in front of
// it: refusals written by WriteError, and never a demand for
// Authorization, which no Azure client sends to the managed-identity
// endpoint. X-IDENTITY-HEADER (or IMDS's Metadata: true) is this surface's
// own guard against request forgery, checked by the Handler.
func GuardRules() guard.Rules { return guard.Rules{WriteError: WriteError} }

// WriteError answers an error in this surface's format, so that refusals
// made in front of it (package guard: its signature is a
// guard.ErrorWriter) read like its own: {"error","error_description"} JSON,
// and Retry-After in whole seconds (at least 1) when retryAfter is
// positive. code and message go to the caller verbatim: never put a secret
// or anything the caller sent into them. It returns status.
func WriteError(w http.ResponseWriter, status int, code, message string, retryAfter time.Duration) int {
	if retryAfter > 0 {
		w.Header()["Retry-After"] = []string{wire.RetryAfterSeconds(retryAfter)}
	}
	return writeError(w, status, code, message)
}

// writeError answers {"error":code,"error_description":message}. code and
// message go to the caller verbatim: never a secret, never what the caller
// sent.
func writeError(w http.ResponseWriter, status int, code, message string) int {
	hdr := w.Header()
	hdr["Content-Type"] = contentTypeJSON
	hdr["Cache-Control"] = noStore
	hdr["X-Content-Type-Options"] = nosniff
	w.WriteHeader(status)
	b := append([]byte(`{"error":`), wire.AppendJSONString(nil, code)...)
	b = append(b, `,"error_description":`...)
	b = wire.AppendJSONString(b, message)
	b = append(b, "}\n"...)
	_, _ = w.Write(b)
	return status
}

// canonicalResource trims s, drops one "/.default" suffix (MSAL Go does the
// same; the exchanger appends it) and checks what is left: non-empty, at
// most MaxResourceLen bytes, printable ASCII without spaces. A trailing
// slash is kept: it changes the token's audience.
func canonicalResource(s string) (string, error) {
	s = strings.TrimSpace(s)
	s = strings.TrimSuffix(s, "/.default")
	switch {
	case s == "":
		return "", errors.New("the resource parameter is required (the URI of the resource the token is for, e.g. https://management.azure.com/)")
	case len(s) > MaxResourceLen:
		return "", fmt.Errorf("resource longer than %d bytes", MaxResourceLen)
	case !wire.Printable(s):
		return "", errors.New("resource holds characters other than printable ASCII")
	}
	return s, nil
}
