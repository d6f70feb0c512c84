// Package gcp exchanges pod-bound Kubernetes ServiceAccount tokens for
// Google Cloud credentials through Workload Identity Federation.
//
// An exchange is one or two HTTP calls:
//
//  1. Google STS (POST {sts}/v1/token, the RFC 8693 token-exchange grant)
//     trades the ServiceAccount token, whose audience is TokenAudience of the
//     configured workload identity provider, for a federated access token.
//  2. Only when Request.Role names a Google service account: IAM Credentials
//     generateAccessToken (an access token for the requested scopes and
//     lifetime) or generateIdToken (an identity token for an audience),
//     authorised by the federated token, impersonates that service account.
//
// Without a Role the federated token itself is served for the requested
// scopes: Google's "direct resource access", where IAM bindings name the
// pool's principal
// principal://iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/subject/system:serviceaccount:NS:SA,
// as on GKE with Workload Identity Federation. Google STS cannot mint
// identity tokens, so an identity token without a Role is refused with
// InvalidRequest before any call.
//
// Guarantees:
//   - Each Exchange makes at most one STS and one IAM Credentials request and
//     never retries: the caller owns retries, backoff and rate limiting.
//   - Every failure is an *exchange.Error whose Kind was decided once, here,
//     from the upstream's error code and HTTP status, never from message
//     texts; Code is the upstream's code (invalid_grant, PERMISSION_DENIED).
//   - No error text contains the ServiceAccount token or any access token.
//   - Expirations come from the upstream's own answer (expires_in,
//     expireTime, the identity token's exp claim); expires_in is counted
//     from the moment before the request was sent, so an expiration is
//     never later than the truth.
//
// Why net/http and not Google's client libraries. Measured on the agent
// (CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' ./cmd/agent, 22,032,546
// bytes before GCP, each library reached from a live code path):
//
//	this package                                    +49 KB
//	golang.org/x/oauth2/google/externalaccount     +120 KB (and bumps x/net, x/oauth2, x/term, x/text)
//	google.golang.org/api sts/v1 + iamcredentials  +10.1 MiB (gRPC, OpenTelemetry, s2a, cloud.google.com/go/auth)
//
// The generated API clients are ruled out by size alone: they would give
// back the 11 MB the agent just shed. externalaccount is small (the agent
// already links x/oauth2 through client-go) but does only half the job and
// the wrong half for us: it cannot mint identity tokens (generateIdToken
// would be hand-written anyway); it caches and refreshes tokens itself,
// underneath the broker's own cache, refresh-ahead and single flight; it
// reads the subject token through a supplier and hides which of its two
// calls failed; and its errors are fmt strings quoting the response body
// ("oauth2/google: status code 400: <body>"), so classifying them would mean matching
// texts, and keeping secrets out of them would mean trusting the peer. The
// three requests here are a form and two small JSON documents.
//
// An Exchanger is safe for concurrent use.
package gcp

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/credbroker/agent/pkg/exchange"
)

// Defaults for Config's zero values.
const (
	DefaultSTSEndpoint            = "https://sts.googleapis.com"
	DefaultIAMCredentialsEndpoint = "https://iamcredentials.googleapis.com"
	DefaultDuration               = time.Hour
	// MaxDuration is the longest lifetime generateAccessToken grants, and
	// only where the organisation policy
	// constraints/iam.allowServiceAccountCredentialLifetimeExtension allows
	// it (else 1 hour; Google answers longer requests with
	// INVALID_ARGUMENT, classified InvalidRequest).
	MaxDuration = 12 * time.Hour
	// MinDuration is the shortest lifetime asked for.
	MinDuration = time.Minute
	// UnextendedMaxDuration is the longest lifetime generateAccessToken
	// grants without that organisation policy: longer requests are refused
	// (classified InvalidRequest with exchange.CauseLifetime).
	UnextendedMaxDuration = time.Hour
)

// DeniedRetryWindow is how long a denial from Google is worth retrying:
// Google documents that changes to allow policies (a new
// roles/iam.workloadIdentityUser binding, say) "typically propagate in 2
// minutes, but could potentially take 7 minutes or longer"
// (https://cloud.google.com/iam/docs/access-change-propagation). Ten
// minutes covers the documented 7 with the broker's backoff of up to 30 s
// between tries to spare.
const DeniedRetryWindow = 10 * time.Minute

// CloudPlatformScope is the scope asked of STS when the federated token
// only serves to call IAM Credentials, and the scope of an access token
// whose Request names none.
const CloudPlatformScope = "https://www.googleapis.com/auth/cloud-platform"

// Token-exchange grant parameters (RFC 8693), as Google STS expects them.
const (
	grantTypeTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	tokenTypeAccessToken   = "urn:ietf:params:oauth:token-type:access_token"
	tokenTypeJWT           = "urn:ietf:params:oauth:token-type:jwt"
)

// maxBody bounds how much of an answer is read.
const maxBody = 1 << 20

// maxMessageLen bounds how much of an upstream message goes into an error.
const maxMessageLen = 512

const userAgent = "credbroker"

// audiencePrefix turns a provider's resource name into its canonical full
// name. Google accepts it, with or without an https: prefix, as the subject
// token's audience when the provider has no allowed-audiences list; it is
// also the STS audience parameter.
const audiencePrefix = "//iam.googleapis.com/"

// The patterns are compiled on first use: an agent without GCP never needs
// their 63 KB of heap (which the GC's goal doubles in RSS).
var (
	providerRE = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`^projects/([0-9]{1,20})/locations/global/workloadIdentityPools/([a-z0-9-]{4,32})/providers/([a-z0-9-]{4,32})$`)
	})
	// emailRE is a service account email (NAME@PROJECT.iam.gserviceaccount.com,
	// or Google's default accounts at developer. and appspot.gserviceaccount.com)
	// or its numeric unique ID, both of which IAM Credentials accepts in the
	// path. Nothing that could change the path (/ ? # % :) gets through.
	emailRE = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`^(?:[a-zA-Z0-9][a-zA-Z0-9._+-]{0,99}@[a-zA-Z0-9][a-zA-Z0-9.-]{0,252}\.[a-zA-Z]{2,63}|[0-9]{1,30})$`)
	})
	// scopeRE is an RFC 6749 scope-token.
	scopeRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[\x21\x23-\x5b\x5d-\x7e]+$`) })
)

// Provider is a workload identity pool provider's resource name, parsed.
type Provider struct {
	ProjectNumber string
	Pool          string
	ID            string
}

// ParseProvider parses
// projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/ID.
func ParseProvider(s string) (Provider, error) {
	m := providerRE().FindStringSubmatch(s)
	if m == nil {
		hint := ""
		if strings.HasPrefix(s, audiencePrefix) || strings.HasPrefix(s, "https:"+audiencePrefix) {
			hint = " (drop the //iam.googleapis.com/ prefix)"
		}
		return Provider{}, fmt.Errorf("workload identity provider %q is not projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/ID%s", s, hint)
	}
	return Provider{ProjectNumber: m[1], Pool: m[2], ID: m[3]}, nil
}

// String returns the resource name.
func (p Provider) String() string {
	return "projects/" + p.ProjectNumber + "/locations/global/workloadIdentityPools/" + p.Pool + "/providers/" + p.ID
}

// Principal returns the IAM principal of a subject of the provider's pool,
// as IAM bindings for direct resource access name it; for a Kubernetes
// ServiceAccount, subject is system:serviceaccount:NAMESPACE:NAME (with
// google.subject mapped from assertion.sub).
func (p Provider) Principal(subject string) string {
	return "principal://iam.googleapis.com/projects/" + p.ProjectNumber + "/locations/global/workloadIdentityPools/" + p.Pool + "/subject/" + subject
}

// TokenAudience returns the audience the pod-bound ServiceAccount token
// must carry for provider (a resource name as ParseProvider accepts):
// //iam.googleapis.com/ + provider, which Google accepts when the provider
// has no allowed-audiences list.
func TokenAudience(provider string) string { return audiencePrefix + provider }

// Config configures New.
type Config struct {
	// Provider is the workload identity pool provider whose pool trusts the
	// cluster's ServiceAccount token issuer:
	// projects/NUMBER/locations/global/workloadIdentityPools/POOL/providers/ID.
	// Required.
	Provider string
	// STSEndpoint is Google STS's base URL. Default DefaultSTSEndpoint.
	STSEndpoint string
	// IAMCredentialsEndpoint is IAM Credentials' base URL. Default
	// DefaultIAMCredentialsEndpoint.
	IAMCredentialsEndpoint string
	// Duration is the lifetime asked of generateAccessToken when
	// Request.Duration is zero. Zero means DefaultDuration; it must lie
	// within [MinDuration, MaxDuration]. Federated tokens (no Role) and
	// identity tokens have the lifetime Google gives them (at most an hour).
	Duration time.Duration
	// HTTPClient sends the requests. Nil means a client with a 3 s connect
	// and TLS handshake timeout, a 10 s overall timeout, keep-alive, and the
	// proxy from the environment (HTTPS_PROXY, NO_PROXY).
	HTTPClient *http.Client
	// Clock turns expires_in into an expiration and decides whether an
	// answer has already expired. Default: the real clock.
	Clock clock.PassiveClock
}

// Exchanger exchanges ServiceAccount tokens for Google credentials.
type Exchanger struct {
	provider Provider
	audience string
	stsToken string // {sts}/v1/token
	iam      string
	duration time.Duration
	client   *http.Client
	clock    clock.PassiveClock
}

// New returns an Exchanger. It makes no network call.
func New(cfg Config) (*Exchanger, error) {
	p, err := ParseProvider(cfg.Provider)
	if err != nil {
		return nil, fmt.Errorf("gcp: %w", err)
	}
	stsURL, err := endpoint("STS", cfg.STSEndpoint, DefaultSTSEndpoint)
	if err != nil {
		return nil, err
	}
	iamURL, err := endpoint("IAM Credentials", cfg.IAMCredentialsEndpoint, DefaultIAMCredentialsEndpoint)
	if err != nil {
		return nil, err
	}
	d := cfg.Duration
	if d == 0 {
		d = DefaultDuration
	}
	if err := checkDuration(d); err != nil {
		return nil, fmt.Errorf("gcp: token lifetime: %w", err)
	}
	client := exchange.HTTPClientOr(cfg.HTTPClient)
	clk := cfg.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Exchanger{
		provider: p,
		audience: TokenAudience(p.String()),
		stsToken: stsURL + "/v1/token",
		iam:      iamURL,
		duration: d,
		client:   client,
		clock:    clk,
	}, nil
}

// Provider returns the provider the Exchanger was configured with.
func (x *Exchanger) Provider() Provider { return x.provider }

func endpoint(name, s, def string) (string, error) {
	if s == "" {
		s = def
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("gcp: %s endpoint %q is not an absolute http(s) URL without query", name, s)
	}
	return strings.TrimSuffix(s, "/"), nil
}

func checkDuration(d time.Duration) error {
	if d < MinDuration || d > MaxDuration {
		return fmt.Errorf("%v is outside [%v, %v]", d, MinDuration, MaxDuration)
	}
	return nil
}

// Exchange returns an access token (req.Want KindAccessToken) for
// req.Scopes (default CloudPlatformScope), or an identity token
// (KindIDToken) for req.Audience, as req.Role (a service account email) or,
// for access tokens with no Role, as the pod's own federated principal.
// req.Duration, when non-zero, overrides the configured lifetime of
// impersonated access tokens and is truncated to whole seconds.
//
// Requests that cannot succeed (no token, another kind, a Role that is not
// a service account email, a scope that is not a scope, an identity token
// without Role or Audience, a duration out of range) fail with
// InvalidRequest before any network call.
func (x *Exchanger) Exchange(ctx context.Context, req exchange.Request) (exchange.Credentials, error) {
	if err := check(req); err != nil {
		return exchange.Credentials{}, err
	}
	scopes := req.Scopes
	if len(scopes) == 0 {
		scopes = []string{CloudPlatformScope}
	}
	stsScopes := scopes
	if req.Role != "" {
		// The federated token only authorises the IAM Credentials call.
		stsScopes = []string{CloudPlatformScope}
	}
	fed, err := x.exchangeToken(ctx, req.Token, stsScopes)
	if err != nil {
		return exchange.Credentials{}, err
	}
	if req.Role == "" {
		if fed.Scopes == nil {
			fed.Scopes = append([]string(nil), scopes...)
		}
		return fed, nil
	}
	secrets := []exchange.Secret{req.Token, fed.AccessToken}
	if req.Want == exchange.KindIDToken {
		return x.generateIDToken(ctx, req.Role, req.Audience, fed.AccessToken, secrets)
	}
	d := x.duration
	if req.Duration != 0 {
		d = req.Duration.Truncate(time.Second)
	}
	return x.generateAccessToken(ctx, req.Role, scopes, d, fed.AccessToken, secrets)
}

func check(req exchange.Request) error {
	bad := func(format string, args ...any) error {
		return &exchange.Error{Kind: exchange.InvalidRequest, Err: &callError{
			call: "gcp exchange", email: req.Role, detail: fmt.Sprintf(format, args...),
		}}
	}
	if req.Token == "" {
		return bad("empty ServiceAccount token")
	}
	if req.Role != "" && !emailRE().MatchString(req.Role) {
		return &exchange.Error{Kind: exchange.InvalidRequest, Cause: exchange.CauseIdentityForm,
			Hint: fmt.Sprintf("%q is not a Google service account email (NAME@PROJECT.iam.gserviceaccount.com) or unique ID", req.Role), Err: &callError{
				call: "gcp exchange", detail: fmt.Sprintf("%q is not a Google service account email", req.Role),
			}}
	}
	switch req.Want {
	case exchange.KindAccessToken:
		for _, s := range req.Scopes {
			if !scopeRE().MatchString(s) {
				return bad("scope %q is not an OAuth scope", s)
			}
		}
		if req.Role != "" && req.Duration != 0 {
			if err := checkDuration(req.Duration.Truncate(time.Second)); err != nil {
				return &exchange.Error{Kind: exchange.InvalidRequest, Cause: exchange.CauseLifetime, Err: &callError{
					call: "gcp exchange", email: req.Role, detail: fmt.Sprintf("token lifetime %v", err),
				}}
			}
		}
	case exchange.KindIDToken:
		if req.Role == "" {
			return bad("an identity token needs a Google service account to impersonate " +
				"(Google STS issues only access tokens): annotate the pod's ServiceAccount " +
				"with one (iam.gke.io/gcp-service-account by default)")
		}
		if req.Audience == "" {
			return bad("an identity token needs an audience")
		}
	default:
		return bad("GCP serves access and identity tokens, not credential kind %d", req.Want)
	}
	return nil
}

// stsResponse is Google STS's token-exchange answer.
type stsResponse struct {
	AccessToken     string `json:"access_token"`
	IssuedTokenType string `json:"issued_token_type"`
	TokenType       string `json:"token_type"`
	ExpiresIn       int64  `json:"expires_in"`
	Scope           string `json:"scope"`
}

func (x *Exchanger) exchangeToken(ctx context.Context, token exchange.Secret, scopes []string) (exchange.Credentials, error) {
	const call = "gcp sts token exchange"
	form := url.Values{
		"audience":             {x.audience},
		"grant_type":           {grantTypeTokenExchange},
		"requested_token_type": {tokenTypeAccessToken},
		"subject_token_type":   {tokenTypeJWT},
		"subject_token":        {token.Reveal()},
		"scope":                {strings.Join(scopes, " ")},
	}
	hdr := http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
	start := x.clock.Now()
	var out stsResponse
	if err := x.do(ctx, call, "", x.stsToken, strings.NewReader(form.Encode()), hdr, &out, []exchange.Secret{token}); err != nil {
		return exchange.Credentials{}, x.audienceRefusal(err)
	}
	if out.AccessToken == "" || out.ExpiresIn <= 0 {
		return exchange.Credentials{}, upstreamFault(call, "", "answer lacks access_token or a positive expires_in")
	}
	c := exchange.Credentials{
		Kind:        exchange.KindAccessToken,
		AccessToken: exchange.Secret(out.AccessToken),
		TokenType:   tokenType(out.TokenType),
		Expiration:  start.Add(time.Duration(out.ExpiresIn) * time.Second).UTC(),
	}
	if out.Scope != "" {
		c.Scopes = strings.Fields(out.Scope)
	}
	return c, nil
}

func (x *Exchanger) generateAccessToken(ctx context.Context, email string, scopes []string, d time.Duration, fed exchange.Secret, secrets []exchange.Secret) (exchange.Credentials, error) {
	const call = "gcp iamcredentials generateAccessToken"
	body, _ := json.Marshal(struct {
		Scope    []string `json:"scope"`
		Lifetime string   `json:"lifetime"`
	}{scopes, strconv.FormatInt(int64(d/time.Second), 10) + "s"})
	var out struct {
		AccessToken string `json:"accessToken"`
		ExpireTime  string `json:"expireTime"`
	}
	if err := x.do(ctx, call, email, x.saURL(email, "generateAccessToken"), bytes.NewReader(body), iamHeader(fed), &out, secrets); err != nil {
		return exchange.Credentials{}, lifetimeRefusal(err, email, d)
	}
	if out.AccessToken == "" {
		return exchange.Credentials{}, upstreamFault(call, email, "answer lacks accessToken")
	}
	exp, err := time.Parse(time.RFC3339Nano, out.ExpireTime)
	if err != nil {
		return exchange.Credentials{}, upstreamFault(call, email, "answer's expireTime is not RFC 3339")
	}
	if !exp.After(x.clock.Now()) {
		return exchange.Credentials{}, upstreamFault(call, email, "answer's expireTime has passed")
	}
	return exchange.Credentials{
		Kind:        exchange.KindAccessToken,
		AccessToken: exchange.Secret(out.AccessToken),
		TokenType:   "Bearer",
		Scopes:      append([]string(nil), scopes...),
		Expiration:  exp.UTC(),
	}, nil
}

// audienceRefusal marks Google STS's refusal of the token's audience as
// such, so that the caller is told to fix the provider's allowed audiences
// and not the identity. Google answers invalid_grant for every fault of a
// subject token (signature, expiry, issuer, audience) and names the
// audience only in error_description ("The audience in ID Token [...] does
// not match the expected audience"), so the description is matched, for
// that code only.
func (x *Exchanger) audienceRefusal(err error) error {
	var xe *exchange.Error
	var ce *callError
	if !errors.As(err, &xe) || xe.Code != "invalid_grant" || !errors.As(err, &ce) ||
		!strings.Contains(strings.ToLower(ce.detail), "audience") {
		return err
	}
	xe.Cause = exchange.CauseAudience
	xe.Hint = fmt.Sprintf("Google STS refused the token's audience %s: the workload identity provider %s must accept it (no allowed-audiences list, or one that includes it)",
		x.audience, x.provider)
	return xe
}

// lifetimeRefusal marks a refusal of generateAccessToken as one of the
// lifetime asked for, so that the caller is told to fix the agent's
// lifetime and not the identity annotation: when Google names the lifetime
// field, or when Google found the request invalid and it asked for more
// than the hour Google grants unless the organisation policy
// constraints/iam.allowServiceAccountCredentialLifetimeExtension lists the
// service account. The second is a deduction from what was sent, not from
// Google's message text: the other fields are an email that passed emailRE
// and scopes that passed scopeRE.
func lifetimeRefusal(err error, email string, d time.Duration) error {
	var xe *exchange.Error
	if !errors.As(err, &xe) || xe.Kind != exchange.InvalidRequest {
		return err
	}
	var ce *callError
	named := errors.As(err, &ce) && slices.Contains(ce.fields, "lifetime")
	if !named && d <= UnextendedMaxDuration {
		return err
	}
	xe.Cause = exchange.CauseLifetime
	xe.Hint = fmt.Sprintf("Google refused an access token lifetime of %s for %s: it grants at most %s unless the organisation policy constraints/iam.allowServiceAccountCredentialLifetimeExtension lists the service account (then at most %s); lower the agent's --gcp-token-lifetime or extend the policy",
		d, email, UnextendedMaxDuration, MaxDuration)
	return xe
}

func (x *Exchanger) generateIDToken(ctx context.Context, email, audience string, fed exchange.Secret, secrets []exchange.Secret) (exchange.Credentials, error) {
	const call = "gcp iamcredentials generateIdToken"
	body, _ := json.Marshal(struct {
		Audience     string `json:"audience"`
		IncludeEmail bool   `json:"includeEmail"`
	}{audience, true})
	var out struct {
		Token string `json:"token"`
	}
	if err := x.do(ctx, call, email, x.saURL(email, "generateIdToken"), bytes.NewReader(body), iamHeader(fed), &out, secrets); err != nil {
		return exchange.Credentials{}, err
	}
	if out.Token == "" {
		return exchange.Credentials{}, upstreamFault(call, email, "answer lacks token")
	}
	exp, err := jwtExpiry(out.Token)
	if err != nil {
		return exchange.Credentials{}, upstreamFault(call, email, "identity token: "+err.Error())
	}
	if !exp.After(x.clock.Now()) {
		return exchange.Credentials{}, upstreamFault(call, email, "identity token's exp has passed")
	}
	return exchange.Credentials{
		Kind:       exchange.KindIDToken,
		IDToken:    exchange.Secret(out.Token),
		Expiration: exp.UTC(),
	}, nil
}

func (x *Exchanger) saURL(email, method string) string {
	return x.iam + "/v1/projects/-/serviceAccounts/" + url.PathEscape(email) + ":" + method
}

func iamHeader(fed exchange.Secret) http.Header {
	return http.Header{
		"Content-Type":  {"application/json"},
		"Authorization": {"Bearer " + fed.Reveal()},
	}
}

// jwtExpiry reads a JWT's exp claim without verifying the signature: the
// token came from IAM Credentials over TLS, and only its lifetime matters
// here. Errors never quote the token.
func jwtExpiry(token string) (time.Time, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, errors.New("not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, errors.New("payload is not base64url")
	}
	var c struct {
		Exp json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return time.Time{}, errors.New("payload is not a JSON object with a numeric exp")
	}
	if c.Exp == "" {
		return time.Time{}, errors.New("no exp claim")
	}
	f, err := c.Exp.Float64()
	if err != nil || f <= 0 {
		return time.Time{}, errors.New("exp claim is not a positive number")
	}
	return time.Unix(int64(f), 0), nil
}

func tokenType(t string) string {
	if t == "" || strings.EqualFold(t, "bearer") {
		return "Bearer"
	}
	return t
}

// do POSTs body to u and decodes a 200 answer into out; any other outcome
// is an *exchange.Error, classified by sendError or classify.
func (x *Exchanger) do(ctx context.Context, call, email, u string, body io.Reader, hdr http.Header, out any, secrets []exchange.Secret) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, body)
	if err != nil {
		// Only a broken endpoint gets here; New checked it.
		return &exchange.Error{Kind: exchange.InvalidRequest, Err: &callError{call: call, email: email, detail: "building request"}}
	}
	req.Header = hdr
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", userAgent)
	resp, err := x.client.Do(req)
	if err != nil {
		return sendError(ctx, call, email, 0, err, secrets)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return sendError(ctx, call, email, resp.StatusCode, err, secrets)
	}
	if resp.StatusCode != http.StatusOK {
		return classify(call, email, resp.StatusCode, b, secrets)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return upstreamFault(call, email, "answer is not the expected JSON")
	}
	return nil
}

// upstreamFault is a 200 that cannot be used: Google's fault, not ours, and
// worth another try later.
func upstreamFault(call, email, detail string) *exchange.Error {
	return &exchange.Error{Kind: exchange.Transient, Err: &callError{call: call, email: email, status: http.StatusOK, detail: detail}}
}

// callError describes one failed call in words that are safe to log: the
// call, the service account, the HTTP status, the upstream's code and its
// message (dropped if it quotes a secret). It wraps the transport's error,
// if any, so that errors.Is(err, context.DeadlineExceeded) works; the
// transport's errors carry the URL (which names no secret: tokens travel in
// the body and the Authorization header), never a body.
type callError struct {
	call   string
	email  string
	status int
	code   string
	detail string
	// fields are the request fields Google named as refused
	// (google.rpc.BadRequest field violations); not part of the text.
	fields []string
	cause  error
}

func (e *callError) Error() string {
	var b strings.Builder
	b.WriteString(e.call)
	if e.email != "" {
		fmt.Fprintf(&b, " for %s", e.email)
	}
	if e.status != 0 {
		fmt.Fprintf(&b, ": HTTP %d", e.status)
	}
	exchange.AppendDetails(&b, e.code, e.detail)
	return b.String()
}

func (e *callError) Unwrap() error { return e.cause }

// sendError classifies a request that got no (complete) answer: always
// Transient.
func sendError(ctx context.Context, call, email string, status int, err error, secrets []exchange.Secret) *exchange.Error {
	ce := &callError{call: call, email: email, status: status, cause: err}
	if ctx.Err() != nil {
		// The caller's deadline or cancellation, as opposed to the HTTP
		// client's own timeout.
		ce.detail = "caller's context: " + ctx.Err().Error()
	} else {
		ce.detail = "request failed: " + exchange.SendFailure(err)
	}
	if exchange.Leaks(ce.detail, secrets...) || exchange.Leaks(err.Error(), secrets...) {
		ce.detail = "request failed"
		ce.cause = nil
	}
	return &exchange.Error{Kind: exchange.Transient, Err: ce}
}

// errorBody holds both error shapes Google answers with: OAuth 2.0's
// {"error":"invalid_grant","error_description":"..."} (STS) and Google
// APIs' {"error":{"code":403,"message":"...","status":"PERMISSION_DENIED",
// "details":[{"reason":"..."}]}} (IAM Credentials, and STS for quota and
// server errors).
type errorBody struct {
	Error            json.RawMessage `json:"error"`
	ErrorDescription string          `json:"error_description"`
}

type googleError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Status  string `json:"status"`
	Details []struct {
		Reason string `json:"reason"`
		// FieldViolations are google.rpc.BadRequest's: which request
		// field was refused.
		FieldViolations []struct {
			Field string `json:"field"`
		} `json:"fieldViolations"`
	} `json:"details"`
}

// classify turns a non-200 answer into an *exchange.Error. The upstream's
// code decides where it is known; the HTTP status otherwise.
func classify(call, email string, status int, body []byte, secrets []exchange.Secret) *exchange.Error {
	ce := &callError{call: call, email: email, status: status}
	var reasons []string
	var eb errorBody
	if json.Unmarshal(body, &eb) == nil && len(eb.Error) > 0 {
		var oauth string
		var g googleError
		switch {
		case json.Unmarshal(eb.Error, &oauth) == nil:
			ce.code, ce.detail = oauth, eb.ErrorDescription
		case json.Unmarshal(eb.Error, &g) == nil:
			ce.code, ce.detail = g.Status, g.Message
			for _, d := range g.Details {
				if d.Reason != "" {
					reasons = append(reasons, d.Reason)
				}
				for _, v := range d.FieldViolations {
					if codeRE().MatchString(v.Field) {
						ce.fields = append(ce.fields, v.Field)
					}
				}
			}
		}
	}
	if !codeRE().MatchString(ce.code) || exchange.Leaks(ce.code, secrets...) {
		// Code goes into metrics and logs: only identifiers of the kind
		// Google uses, and never a token a peer echoed.
		ce.code = ""
	}
	switch {
	case ce.detail == "" && ce.code == "":
		ce.detail = "unparsable error answer"
	case exchange.Leaks(ce.detail, secrets...):
		// Only a peer that is not Google would echo a token.
		ce.detail = "(message withheld: it quotes a token)"
	case len(ce.detail) > maxMessageLen:
		ce.detail = ce.detail[:maxMessageLen] + "..."
	}
	kind, known := kindForCode(ce.code, reasons)
	if !known {
		kind = exchange.KindForStatus(status, statusKinds)
	}
	return &exchange.Error{Kind: kind, Code: ce.code, Err: ce}
}

var codeRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9_.]{1,64}$`) })

// kindForCode classifies Google STS's OAuth error codes (RFC 6749 and
// RFC 8693, as Google uses them) and the canonical status names of Google
// APIs (google.rpc.Code), with rate-limit reasons from ErrorInfo details
// taking precedence.
func kindForCode(code string, reasons []string) (exchange.ErrorKind, bool) {
	for _, r := range reasons {
		switch r {
		case "RATE_LIMIT_EXCEEDED", "rateLimitExceeded", "userRateLimitExceeded", "RESOURCE_EXHAUSTED", "quotaExceeded":
			return exchange.Throttled, true
		}
	}
	switch code {
	// STS (OAuth 2.0 token endpoint).
	case "invalid_grant":
		// The subject token is invalid, expired, of another audience or
		// issuer, or its signature does not verify against the pool's keys.
		return exchange.InvalidToken, true
	case "unauthorized_client", "access_denied":
		// The token is valid but rejected by the provider's attribute
		// condition, or the pool or provider is disabled for it.
		return exchange.Denied, true
	case "invalid_request", "invalid_scope", "invalid_target", "invalid_client", "unsupported_grant_type", "unsupported_token_type":
		// A wrong provider name (invalid_target) or a malformed request:
		// the operator's configuration.
		return exchange.InvalidRequest, true
	case "temporarily_unavailable", "server_error":
		return exchange.Transient, true
	// Google APIs (IAM Credentials; STS for quota and server faults).
	case "PERMISSION_DENIED":
		// No roles/iam.workloadIdentityUser (or serviceAccountTokenCreator)
		// for this principal on the service account, or the account does
		// not exist (Google does not say which).
		return exchange.Denied, true
	case "UNAUTHENTICATED":
		// The federated token was refused.
		return exchange.InvalidToken, true
	case "INVALID_ARGUMENT", "FAILED_PRECONDITION", "OUT_OF_RANGE", "NOT_FOUND":
		// A malformed email, a lifetime the organisation policy forbids, a
		// disabled or deleted service account.
		return exchange.InvalidRequest, true
	case "RESOURCE_EXHAUSTED":
		return exchange.Throttled, true
	case "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "ABORTED", "UNKNOWN", "CANCELLED":
		return exchange.Transient, true
	}
	return 0, false
}

// statusKinds are the statuses Google's APIs give a meaning of their own.
var statusKinds = map[int]exchange.ErrorKind{
	http.StatusTooManyRequests: exchange.Throttled,
	http.StatusUnauthorized:    exchange.InvalidToken,
	http.StatusForbidden:       exchange.Denied,
}
