// Package gcemetadata serves the part of the GCE metadata server that
// Google's client libraries use to get credentials: the service-account
// tree (email, aliases, scopes, access tokens, identity tokens), the project
// IDs and the universe domain. Pods opt in with GCE_METADATA_HOST (and
// GCE_METADATA_IP for Python's detection) set to the agent's address.
//
// It is a thin http.Handler over the broker: every credential comes from
// Broker.Credentials for the pod at the connection's source address, so the
// cache, refresh-ahead, single flight, limits and policy are the broker's.
// Nothing is proxied to a real metadata server.
//
// Served (under Prefix unless rooted): "/", the directories v1/, instance/,
// project/, universe/ and instance/service-accounts/ (a listing, or JSON
// with ?recursive=true), the account directories default/ and the pod's own
// (email, aliases, scopes, token, identity), project/project-id,
// project/numeric-project-id and universe/universe-domain. Everything else
// is a 404; nothing is proxied to a real metadata server.
//
// A pod whose ServiceAccount names no Google service account is its own
// federated principal: its email shows as PROJECT_ID.svc.id.goog (as on GKE
// under Workload Identity Federation, and what Python and gcloud then name
// in the token path), it gets access tokens, and its identity tokens are a
// 404 NoGoogleServiceAccount (Google STS mints none).
//
// Rules, each one tested:
//   - every response carries Metadata-Flavor: Google (errors, redirects and
//     404s too): Node's gcp-metadata rejects a response without it;
//   - a request carrying X-Forwarded-For is refused with 403, as Google's
//     server does, so that a proxy inside the pod cannot be turned into a
//     metadata client for someone else;
//   - every path but "/" needs the request header Metadata-Flavor: Google
//     (403 without it);
//   - only GET (405 otherwise); unknown query parameters are ignored;
//   - paths are matched byte for byte: an escaped, doubled or dotted spelling
//     of a served path is a 404, never a cleaned-up match; a directory named
//     without its trailing slash redirects (301) to the slash form;
//   - scopes are canonicalised (split on commas and spaces, deduplicated,
//     sorted) and bounded, so that no spelling of a scope set makes a second
//     cache entry and no request makes a huge one.
package gcemetadata

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
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
const Name = "gcp"

// Broker is what the surface needs from the broker.
type Broker interface {
	surface.Broker
	// ServeIdentity resolves the pod at addr and returns the Google
	// service account its ServiceAccount may use ("" for its own federated
	// principal), without fetching anything; it fails as Serve does.
	ServeIdentity(ctx context.Context, addr netip.Addr, cloud exchange.Cloud) (string, *broker.Failure)
}

// Paths and values clients depend on.
const (
	// Prefix is the root of every metadata path but "/".
	Prefix = "/computeMetadata/v1/"
	// ServiceAccountsPath lists the accounts: "default/" and the pod's.
	ServiceAccountsPath = Prefix + "instance/service-accounts/"
	// UniverseDomain is what universe/universe-domain answers.
	UniverseDomain = "googleapis.com"
	// DefaultScope is the scope of tokens asked for without ?scopes= when
	// Config.DefaultScopes is empty.
	DefaultScope = "https://www.googleapis.com/auth/cloud-platform"
	// FederatedSuffix makes the email shown for a pod without a Google
	// service account: PROJECT_ID.svc.id.goog, as GKE's metadata server
	// shows under Workload Identity Federation.
	FederatedSuffix = ".svc.id.goog"
)

// Bounds on what a caller may ask for. Past them the answer is 400.
const (
	// MaxQuery is the longest raw query string accepted.
	MaxQuery = 4096
	// MaxScopes is the most distinct scopes one token may be asked for.
	MaxScopes = 32
	// MaxScopeLen is the longest single scope.
	MaxScopeLen = 256
	// MaxAudienceLen is the longest identity-token audience.
	MaxAudienceLen = 2048
)

// Error codes the surface writes itself (the broker's Failure codes are
// written as they come).
const (
	CodeNotFound         = "NotFound"
	CodeForbidden        = "Forbidden"
	CodeMethodNotAllowed = "MethodNotAllowed"
	CodeBadRequest       = "BadRequest"
	CodeUnavailable      = "ServiceUnavailable"
	CodeInternal         = "InternalError"
	// CodeNoServiceAccount answers an identity token asked for by a pod
	// that is its own federated principal.
	CodeNoServiceAccount = "NoGoogleServiceAccount"
)

// Config configures a Handler.
type Config struct {
	// Broker answers credential requests. Required.
	Broker Broker
	// ProjectID is what project/project-id answers, and names the federated
	// principal's email (PROJECT_ID.svc.id.goog). Required.
	ProjectID string
	// NumericProjectID is what project/numeric-project-id answers (digits);
	// empty: that path is a 404.
	NumericProjectID string
	// DefaultScopes are the scopes of a token asked for without ?scopes=,
	// and what .../scopes lists. Default: DefaultScope (cloud-platform).
	// They are canonicalised like a caller's.
	DefaultScopes []string
	// Clock computes expires_in. Default: the real clock.
	Clock clock.PassiveClock
	// Registerer registers the request metrics. Default: not registered.
	Registerer prometheus.Registerer
}

// Handler serves the GCE metadata paths. Create it with New.
//
// SECURITY: the caller's identity comes from r.RemoteAddr only, the address
// of the TCP peer. Headers, the query string and the path never influence
// whose credentials are served; a path naming an account only selects among
// the caller's own.
type Handler struct {
	surface.Handler
	b     Broker
	clock clock.PassiveClock
	// values are the scopes and audiences asked for before, so that a hit
	// for one the client escaped allocates nothing.
	values wire.Values

	projectID     []byte // "my-project"
	numericID     []byte // "1234" or nil
	federated     string // "my-project.svc.id.goog"
	defaultScope  string // canonical, space-separated
	defaultScopes []string
	scopesBody    []byte // one scope a line
}

// New checks cfg and returns a Handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Broker == nil {
		return nil, errors.New("gcemetadata: Broker is required")
	}
	if !validProjectID(cfg.ProjectID) {
		return nil, fmt.Errorf("gcemetadata: ProjectID %q is not a project ID", cfg.ProjectID)
	}
	if cfg.NumericProjectID != "" && !allDigits(cfg.NumericProjectID) {
		return nil, fmt.Errorf("gcemetadata: NumericProjectID %q is not a number", cfg.NumericProjectID)
	}
	h := &Handler{
		b:         cfg.Broker,
		clock:     cfg.Clock,
		projectID: []byte(cfg.ProjectID),
		federated: cfg.ProjectID + FederatedSuffix,
	}
	if cfg.NumericProjectID != "" {
		h.numericID = []byte(cfg.NumericProjectID)
	}
	if h.clock == nil {
		h.clock = clock.RealClock{}
	}
	scopes := cfg.DefaultScopes
	if len(scopes) == 0 {
		scopes = []string{DefaultScope}
	}
	canon, list, err := canonicalScopes(strings.Join(scopes, ","))
	if err != nil || canon == "" {
		return nil, fmt.Errorf("gcemetadata: DefaultScopes: %v", err)
	}
	h.defaultScope, h.defaultScopes = canon, list
	h.scopesBody = []byte(strings.Join(list, "\n") + "\n")
	if h.Handler, err = surface.NewHandler(cfg.Registerer, Name, h.serve, h.clock); err != nil {
		return nil, err
	}
	return h, nil
}

// Owns reports whether the surface answers path p: "/" and the
// /computeMetadata tree.
func Owns(p string) bool { return p == "/" || strings.HasPrefix(p, "/computeMetadata") }

// Pre-built header values: assigning them directly to the header map keeps
// the cache-hit path free of allocations.
var (
	flavorGoogle    = []string{"Google"}
	contentTypeJSON = []string{"application/json"}
	contentTypeText = []string{"text/plain; charset=utf-8"}
	noStore         = []string{"no-store"}
	allowGet        = []string{"GET"}
)

func (h *Handler) serve(w http.ResponseWriter, r *http.Request) int {
	hdr := w.Header()
	hdr["Metadata-Flavor"] = flavorGoogle
	if _, ok := r.Header["X-Forwarded-For"]; ok {
		return writeText(w, http.StatusForbidden, CodeForbidden,
			"requests carrying X-Forwarded-For are refused")
	}
	if r.Method != http.MethodGet {
		hdr["Allow"] = allowGet
		return writeText(w, http.StatusMethodNotAllowed, CodeMethodNotAllowed, "only GET is supported")
	}
	p := r.URL.Path
	// Only the exact bytes of a served path: URL.Path is the decoded path,
	// so "%2F" or "%65mail" would decode into one. EscapedPath equals Path
	// only when the request used no escape and needed none.
	if r.URL.RawPath != "" || r.URL.EscapedPath() != p {
		return notFound(w)
	}
	if p == "/" {
		return writeBody(w, contentTypeText, rootBody)
	}
	if r.Header.Get("Metadata-Flavor") != "Google" {
		return writeText(w, http.StatusForbidden, CodeForbidden,
			"missing required header Metadata-Flavor: Google")
	}
	if len(r.URL.RawQuery) > MaxQuery {
		return writeText(w, http.StatusBadRequest, CodeBadRequest, "query string too long")
	}
	switch p {
	case "/computeMetadata", "/computeMetadata/v1":
		return redirect(w, r)
	case "/computeMetadata/":
		return writeBody(w, contentTypeText, computeMetadataDir)
	}
	rest, ok := strings.CutPrefix(p, Prefix)
	if !ok {
		return notFound(w)
	}
	switch rest {
	case "instance", "project", "universe":
		return redirect(w, r)
	case "", "instance/", "project/", "universe/":
		return h.directory(w, r, rest)
	case "project/project-id":
		return writeBody(w, contentTypeText, h.projectID)
	case "project/numeric-project-id":
		if h.numericID == nil {
			return notFound(w)
		}
		return writeBody(w, contentTypeText, h.numericID)
	case "universe/universe-domain":
		return writeBody(w, contentTypeText, universeBody)
	case "instance/service-accounts":
		return redirect(w, r)
	case "instance/service-accounts/":
		return h.listAccounts(w, r)
	}
	rest, ok = strings.CutPrefix(rest, "instance/service-accounts/")
	if !ok {
		return notFound(w)
	}
	account, leaf, dir := strings.Cut(rest, "/")
	if !validAccount(account) || !validLeaf(leaf) {
		return notFound(w)
	}
	if !dir {
		return redirect(w, r)
	}
	return h.serveAccount(w, r, account, leaf)
}

// directory answers the directories above the service accounts: a
// listing, or with ?recursive=true their JSON (camelCase keys, as GCE).
func (h *Handler) directory(w http.ResponseWriter, r *http.Request, dir string) int {
	if !recursive(r.URL.RawQuery) {
		switch dir {
		case "":
			return writeBody(w, contentTypeText, v1Dir)
		case "instance/":
			return writeBody(w, contentTypeText, instanceDir)
		case "project/":
			if h.numericID == nil {
				return writeBody(w, contentTypeText, projectDirNoNumber)
			}
			return writeBody(w, contentTypeText, projectDir)
		default:
			return writeBody(w, contentTypeText, universeDir)
		}
	}
	project := projectJSON{ProjectID: string(h.projectID), NumericProjectID: json.Number(h.numericID)}
	universe := universeJSON{UniverseDomain: UniverseDomain}
	switch dir {
	case "project/":
		return writeJSON(w, project)
	case "universe/":
		return writeJSON(w, universe)
	}
	addr, ok := surface.Addr(r)
	if !ok {
		return badPeer(w)
	}
	email, code := h.identity(w, r, addr)
	if code != 0 {
		return code
	}
	instance := instanceJSON{ServiceAccounts: h.accounts(email)}
	if dir == "instance/" {
		return writeJSON(w, instance)
	}
	return writeJSON(w, struct {
		Instance instanceJSON `json:"instance"`
		Project  projectJSON  `json:"project"`
		Universe universeJSON `json:"universe"`
	}{instance, project, universe})
}

type projectJSON struct {
	NumericProjectID json.Number `json:"numericProjectId,omitempty"`
	ProjectID        string      `json:"projectId"`
}

type universeJSON struct {
	UniverseDomain string `json:"universeDomain"`
}

type instanceJSON struct {
	ServiceAccounts map[string]accountJSON `json:"serviceAccounts"`
}

var (
	computeMetadataDir = []byte("v1/\n")
	v1Dir              = []byte("instance/\nproject/\nuniverse/\n")
	instanceDir        = []byte("service-accounts/\n")
	projectDir         = []byte("numeric-project-id\nproject-id\n")
	projectDirNoNumber = []byte("project-id\n")
	universeDir        = []byte("universe-domain\n")
)

var (
	rootBody     = []byte("computeMetadata/\n")
	universeBody = []byte(UniverseDomain)
	accountDir   = []byte("aliases\nemail\nidentity\nscopes\ntoken\n")
	aliasesBody  = []byte("default\n")
)

// identity resolves the caller and returns the email shown for it (the
// Google service account, or PROJECT_ID.svc.id.goog for its federated
// principal). On failure it has answered and returns the status.
func (h *Handler) identity(w http.ResponseWriter, r *http.Request, addr netip.Addr) (string, int) {
	id, f := h.b.ServeIdentity(r.Context(), addr, exchange.GCP)
	if f != nil {
		return "", statuses.Write(w, f, WriteError)
	}
	if id == "" {
		return h.federated, 0
	}
	return id, 0
}

// shownEmail is the email a path shows for the identity id the broker
// answered with.
func (h *Handler) shownEmail(id string) string {
	if id == "" {
		return h.federated
	}
	return id
}

func (h *Handler) listAccounts(w http.ResponseWriter, r *http.Request) int {
	addr, ok := surface.Addr(r)
	if !ok {
		return badPeer(w)
	}
	email, code := h.identity(w, r, addr)
	if code != 0 {
		return code
	}
	if recursive(r.URL.RawQuery) {
		return writeJSON(w, h.accounts(email))
	}
	return writeBody(w, contentTypeText, []byte("default/\n"+email+"/\n"))
}

// accountJSON is the recursive answer for one account directory, as GCE
// gives it: the token and identity leaves are not part of it.
type accountJSON struct {
	Aliases []string `json:"aliases"`
	Email   string   `json:"email"`
	Scopes  []string `json:"scopes"`
}

// accounts is the recursive answer for the service-accounts directory.
func (h *Handler) accounts(email string) map[string]accountJSON {
	info := h.accountInfo(email)
	return map[string]accountJSON{"default": info, email: info}
}

func (h *Handler) accountInfo(email string) accountJSON {
	return accountJSON{Aliases: []string{"default"}, Email: email, Scopes: h.defaultScopes}
}

func (h *Handler) serveAccount(w http.ResponseWriter, r *http.Request, account, leaf string) int {
	addr, ok := surface.Addr(r)
	if !ok {
		return badPeer(w)
	}
	// A path naming an email must name the caller's own; default/token
	// needs no look-up before the credential request (the broker resolves
	// the pod anyway), so the hottest path resolves it once.
	named := ""
	if account != "default" || leaf != "token" {
		email, code := h.identity(w, r, addr)
		if code != 0 {
			return code
		}
		if account != "default" && account != email {
			return notFound(w)
		}
		named = email
	}
	switch leaf {
	case "":
		if recursive(r.URL.RawQuery) {
			return writeJSON(w, h.accountInfo(named))
		}
		return writeBody(w, contentTypeText, accountDir)
	case "email":
		return writeBody(w, contentTypeText, []byte(named))
	case "aliases":
		return writeBody(w, contentTypeText, aliasesBody)
	case "scopes":
		return writeBody(w, contentTypeText, h.scopesBody)
	case "token":
		return h.token(w, r, addr, named)
	case "identity":
		return h.idToken(w, r, addr, named)
	}
	return notFound(w)
}

// token answers an access token. named is the email the path named ("" for
// default/). The request always names the pod's own identity as "" so that
// default/ and the email path share one cache entry; the answer's identity
// is checked against the path afterwards (the annotation may have changed
// in between).
func (h *Handler) token(w http.ResponseWriter, r *http.Request, addr netip.Addr, named string) int {
	scope := h.defaultScope
	if raw, ok := wire.QueryValue(r.URL.RawQuery, "scopes"); ok {
		s, err := h.values.Unescape(raw)
		if err != nil {
			return writeText(w, http.StatusBadRequest, CodeBadRequest, "scopes: invalid escape")
		}
		canon, err := canonicalScope(s)
		if err != nil {
			return writeText(w, http.StatusBadRequest, CodeBadRequest, err.Error())
		}
		if canon != "" {
			scope = canon
		}
	}
	ans, f := h.b.Serve(r.Context(), addr, broker.Request{
		Cloud: exchange.GCP, Want: exchange.KindAccessToken, Scope: scope})
	if f != nil {
		return statuses.Write(w, f, WriteError)
	}
	if named != "" && h.shownEmail(ans.Identity) != named {
		return notFound(w)
	}
	c := ans.Credentials
	if c == nil || c.AccessToken == "" {
		return writeText(w, http.StatusInternalServerError, CodeInternal, "the broker returned no access token")
	}
	// Whole seconds, rounded down: never promise more life than is left,
	// and never 0 (x/oauth2 rejects it).
	secs := int64(c.Expiration.Sub(h.clock.Now()) / time.Second)
	if secs <= 0 {
		return writeRetry(w, CodeUnavailable, "the access token is being refreshed; retry", time.Second)
	}
	bp := wire.Buffer()
	b := append(*bp, `{"access_token":`...)
	b = wire.AppendJSONString(b, c.AccessToken.Reveal())
	b = append(b, `,"expires_in":`...)
	b = strconv.AppendInt(b, secs, 10)
	b = append(b, `,"token_type":"Bearer"}`...)
	hdr := w.Header()
	hdr["Content-Type"] = contentTypeJSON
	hdr["Cache-Control"] = noStore
	return wire.Reply(w, bp, b, false)
}

// idToken answers an identity token for ?audience=. format (standard or
// full) and licenses are accepted and do not change the token: the token
// is the one IAM Credentials mints for the audience, which carries the
// email either way, and keying the cache by format would only double it.
func (h *Handler) idToken(w http.ResponseWriter, r *http.Request, addr netip.Addr, named string) int {
	if named == h.federated {
		// Google STS mints no identity tokens for a federated principal;
		// GKE's metadata server answers 404 here too.
		return writeText(w, http.StatusNotFound, CodeNoServiceAccount,
			"identity tokens need a Google service account, and this pod's ServiceAccount names none "+
				"(annotate it with iam.gke.io/gcp-service-account, or the agent's --gcp-service-account-annotation)")
	}
	raw, _ := wire.QueryValue(r.URL.RawQuery, "audience")
	aud, err := h.values.Unescape(raw)
	switch {
	case err != nil:
		return writeText(w, http.StatusBadRequest, CodeBadRequest, "audience: invalid escape")
	case aud == "":
		return writeText(w, http.StatusBadRequest, CodeBadRequest, "non-empty audience parameter required")
	case len(aud) > MaxAudienceLen:
		return writeText(w, http.StatusBadRequest, CodeBadRequest, "audience too long")
	case !wire.Printable(aud):
		return writeText(w, http.StatusBadRequest, CodeBadRequest, "audience: invalid characters")
	}
	ans, f := h.b.Serve(r.Context(), addr, broker.Request{
		Cloud: exchange.GCP, Want: exchange.KindIDToken, Scope: aud})
	if f != nil {
		return statuses.Write(w, f, WriteError)
	}
	if named != "" && h.shownEmail(ans.Identity) != named {
		return notFound(w)
	}
	c := ans.Credentials
	if c == nil || c.IDToken == "" {
		return writeText(w, http.StatusInternalServerError, CodeInternal, "the broker returned no identity token")
	}
	hdr := w.Header()
	hdr["Content-Type"] = contentTypeText
	hdr["Cache-Control"] = noStore
	bp := wire.Buffer()
	return wire.Reply(w, bp, append(*bp, c.IDToken.Reveal()...), false)
}

// statuses map the failure classes to the HTTP statuses this surface
// answers.
var statuses = surface.Statuses{Refused: http.StatusForbidden, Throttled: http.StatusTooManyRequests,
	Invalid: http.StatusBadRequest, Unavailable: http.StatusServiceUnavailable, RetryableOnly: true}

// Status maps a failure class to the HTTP status this surface answers.
func Status(c broker.Class) int { return statuses.Status(c) }

// WriteError answers an error in this surface's format, so that refusals
// made in front of it (package guard: its signature is a guard.ErrorWriter)
// look like its own: Metadata-Flavor: Google, the text "CODE: MESSAGE", and
// Retry-After in whole seconds (at least 1) when retryAfter is positive.
// code and message go to the caller verbatim: never put a secret or
// anything the caller sent into them. It returns status.
func WriteError(w http.ResponseWriter, status int, code, message string, retryAfter time.Duration) int {
	w.Header()["Metadata-Flavor"] = flavorGoogle
	if retryAfter > 0 {
		w.Header()["Retry-After"] = []string{wire.RetryAfterSeconds(retryAfter)}
	}
	return writeText(w, status, code, message)
}

// GuardRules are this surface's rules for the request guard in front of
// it: refusals written by WriteError (so they carry Metadata-Flavor: Google
// and this surface's text), and never a demand for Authorization, which no
// Google client sends to the metadata server (Python google-auth detects
// GCE with a bare GET /). Metadata-Flavor is this surface's own guard
// against request forgery, checked by the Handler.
func GuardRules() guard.Rules { return guard.Rules{WriteError: WriteError} }

func writeRetry(w http.ResponseWriter, code, message string, after time.Duration) int {
	w.Header()["Retry-After"] = []string{wire.RetryAfterSeconds(after)}
	return writeText(w, http.StatusServiceUnavailable, code, message)
}

// writeText answers an error: "Code: Message\n" as text. code and message
// go to the caller verbatim: never a secret, never what the caller sent.
func writeText(w http.ResponseWriter, status int, code, message string) int {
	hdr := w.Header()
	hdr["Content-Type"] = contentTypeText
	hdr["Cache-Control"] = noStore
	hdr["X-Content-Type-Options"] = []string{"nosniff"}
	w.WriteHeader(status)
	_, _ = w.Write([]byte(code + ": " + message + "\n"))
	return status
}

func notFound(w http.ResponseWriter) int {
	return writeText(w, http.StatusNotFound, CodeNotFound, "no such metadata path")
}

func badPeer(w http.ResponseWriter) int {
	return writeText(w, http.StatusBadRequest, CodeBadRequest, "the caller's address could not be read")
}

// redirect sends a directory named without its slash to the slash form,
// keeping the query, as Google's server does.
func redirect(w http.ResponseWriter, r *http.Request) int {
	loc := r.URL.Path + "/"
	if r.URL.RawQuery != "" {
		loc += "?" + r.URL.RawQuery
	}
	w.Header()["Location"] = []string{loc}
	w.WriteHeader(http.StatusMovedPermanently)
	return http.StatusMovedPermanently
}

func writeBody(w http.ResponseWriter, contentType []string, body []byte) int {
	w.Header()["Content-Type"] = contentType
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
	return http.StatusOK
}

func writeJSON(w http.ResponseWriter, v any) int {
	body, err := json.Marshal(v)
	if err != nil {
		return writeText(w, http.StatusInternalServerError, CodeInternal, "encoding the answer failed")
	}
	return writeBody(w, contentTypeJSON, body)
}

// canonicalScopes splits s on commas and spaces, drops empty items,
// deduplicates and sorts. It returns the scopes space-separated (the
// broker's Request.Scope) and as a list. It refuses more than MaxScopes
// distinct scopes, a scope longer than MaxScopeLen and anything but
// printable ASCII.
func canonicalScopes(s string) (string, []string, error) {
	if !strings.ContainsAny(s, ", ") {
		// One scope, the usual case.
		if s == "" {
			return "", nil, nil
		}
		if err := checkScope(s); err != nil {
			return "", nil, err
		}
		return s, []string{s}, nil
	}
	var list []string
	for item := range strings.FieldsFuncSeq(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		if err := checkScope(item); err != nil {
			return "", nil, err
		}
		if slices.Contains(list, item) {
			continue
		}
		if len(list) == MaxScopes {
			return "", nil, fmt.Errorf("more than %d scopes", MaxScopes)
		}
		list = append(list, item)
	}
	slices.Sort(list)
	return strings.Join(list, " "), list, nil
}

// canonicalScope is canonicalScopes without the list: one scope, the usual
// case, costs no allocation.
func canonicalScope(s string) (string, error) {
	if !strings.ContainsAny(s, ", ") {
		if s == "" {
			return "", nil
		}
		return s, checkScope(s)
	}
	canon, _, err := canonicalScopes(s)
	return canon, err
}

func checkScope(s string) error {
	if len(s) > MaxScopeLen {
		return fmt.Errorf("a scope is longer than %d bytes", MaxScopeLen)
	}
	if !wire.Printable(s) {
		return errors.New("a scope holds characters other than printable ASCII")
	}
	return nil
}

// recursive reports whether the query asks for ?recursive=true.
func recursive(q string) bool {
	v, ok := wire.QueryValue(q, "recursive")
	return ok && strings.EqualFold(v, "true")
}

// validAccount reports whether s can name an account: "default" or an
// email-shaped string.
func validAccount(s string) bool {
	if s == "" || len(s) > 320 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '@' || c == '.' || c == '-' || c == '_' || c == '+':
		default:
			return false
		}
	}
	return s != "." && s != ".."
}

// validLeaf reports whether s is served under an account directory ("" is
// the directory itself).
func validLeaf(s string) bool {
	switch s {
	case "", "email", "aliases", "scopes", "token", "identity":
		return true
	}
	return false
}

// validProjectID is loose on purpose (Google's rule is 6 to 30 lower-case
// letters, digits and hyphens; older projects carry a "domain:" prefix):
// it refuses only what would break a path, a header or a line.
func validProjectID(s string) bool {
	return s != "" && len(s) <= 100 && wire.Printable(s) && !strings.ContainsAny(s, "/")
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
