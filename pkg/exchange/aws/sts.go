package aws

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"

	"github.com/credbroker/agent/pkg/exchange"
)

// Session durations STS accepts for AssumeRoleWithWebIdentity. A role's own
// MaxSessionDuration may be lower than the upper bound; STS then answers
// ValidationError, which is classified exchange.InvalidRequest.
const (
	DefaultSessionDuration = time.Hour
	MinSessionDuration     = 15 * time.Minute
	MaxSessionDuration     = 12 * time.Hour
)

// placeholderRegion is given to the SDK when only an endpoint is configured.
// The call is unsigned, so the region is never used for signing, and with an
// explicit endpoint it plays no part in choosing the host.
const placeholderRegion = "us-east-1"

// appID goes into the User-Agent header, so that CloudTrail's userAgent field
// shows which agent made the call.
const appID = "credbroker"

// regionPattern is what an AWS region name looks like. Checking it up front
// turns a typo into a constructor error instead of a failing call per pod.
var regionPattern = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)+$`)

// STSConfig configures NewSTS.
type Config struct {
	// Region selects the regional STS endpoint (sts.<region>.amazonaws.com,
	// or the partition's equivalent). Required unless Endpoint is set. The
	// caller chooses the default, typically from AWS_REGION.
	Region string
	// Endpoint, when set, replaces the regional endpoint, for example
	// http://127.0.0.1:5000 for a local STS peer or a VPC endpoint URL.
	Endpoint string
	// Duration is the session lifetime asked for when exchange.Request.Duration is
	// zero. Zero means DefaultSessionDuration. It must lie within
	// [MinSessionDuration, MaxSessionDuration].
	Duration time.Duration
	// HTTPClient sends the requests. Nil means a client with a 3 s connect
	// and TLS handshake timeout, a 10 s overall timeout, keep-alive, and the
	// proxy from the environment (HTTPS_PROXY, NO_PROXY).
	HTTPClient *http.Client
	// ExtraPartitions are ARN partitions accepted besides AWS's (aws,
	// aws-*): an S3-compatible STS names its roles in its own, as MinIO's
	// arn:minio:iam:::role/ID. Roles in them need no 12-digit account.
	ExtraPartitions []string
}

// STS exchanges Kubernetes ServiceAccount tokens for AWS credentials with
// AssumeRoleWithWebIdentity.
//
// Guarantees:
//   - The call is unsigned: the node needs no AWS credentials, and none found
//     in the environment are ever sent.
//   - Each Exchange makes at most one HTTP request; the SDK's own retries are
//     off, because the caller owns retries, backoff and rate limiting.
//   - Every failure is an *exchange.Error whose Kind was decided once, from the AWS
//     error code and the HTTP status, never from message texts.
//   - No error text contains the web identity token or any credential.
//
// An STS is safe for concurrent use.
type STS struct {
	client   *sts.Client
	duration time.Duration
	extra    []string
}

// NewSTS returns an STS exchanger. It makes no network call.
func New(cfg Config) (*STS, error) {
	region := cfg.Region
	switch {
	case region == "" && cfg.Endpoint == "":
		return nil, errors.New("sts: a region or an endpoint is required")
	case region == "":
		region = placeholderRegion
	case !regionPattern.MatchString(region):
		return nil, fmt.Errorf("sts: region %q is not a valid AWS region name", region)
	}
	var endpoint *string
	if cfg.Endpoint != "" {
		u, err := url.Parse(cfg.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("sts: endpoint %q is not an absolute http(s) URL", cfg.Endpoint)
		}
		endpoint = aws.String(cfg.Endpoint)
	}
	duration := cfg.Duration
	if duration == 0 {
		duration = DefaultSessionDuration
	}
	if err := checkDuration(duration); err != nil {
		return nil, fmt.Errorf("sts: session duration: %w", err)
	}
	httpClient := cfg.HTTPClient
	if httpClient == nil {
		httpClient = exchange.DefaultHTTPClient()
	}
	for _, p := range cfg.ExtraPartitions {
		if !ValidPartition(p) || p == "aws" || strings.HasPrefix(p, "aws-") {
			return nil, fmt.Errorf("sts: extra ARN partition %q is not a partition name other than AWS's (lower-case letters, digits and dashes)", p)
		}
	}

	client := sts.New(sts.Options{
		Region:       region,
		BaseEndpoint: endpoint,
		HTTPClient:   httpClient,
		// AssumeRoleWithWebIdentity is modelled as anonymous already;
		// anonymous credentials make sure nothing is ever signed.
		Credentials: aws.AnonymousCredentials{},
		Retryer:     aws.NopRetryer{},
		AppID:       appID,
	})
	return &STS{client: client, duration: duration, extra: slices.Clone(cfg.ExtraPartitions)}, nil
}

func checkDuration(d time.Duration) error {
	if d < MinSessionDuration || d > MaxSessionDuration {
		return fmt.Errorf("%v is outside [%v, %v]", d, MinSessionDuration, MaxSessionDuration)
	}
	return nil
}

// Exchange calls AssumeRoleWithWebIdentity for req.Role with req.Token.
// The session is named after the pod (SessionName) unless req.SessionName
// is set, which is made acceptable to STS by the same rules. req.Duration, when non-zero,
// overrides the configured duration and is truncated to whole seconds.
//
// Requests that cannot succeed (no token, a role that is not an ARN, a
// session name under 2 characters, a duration out of range) fail with
// exchange.InvalidRequest before any network call.
func (s *STS) Exchange(ctx context.Context, req exchange.Request) (exchange.Credentials, error) {
	if req.Token == "" {
		return exchange.Credentials{}, invalidRequest(req.Role, "empty web identity token")
	}
	roleARN, err := parseRoleARN(req.Role, s.extra)
	if err != nil {
		return exchange.Credentials{}, &exchange.Error{Kind: exchange.InvalidRequest, Cause: exchange.CauseIdentityForm,
			Hint: roleHint(req.Role, err), Err: fmt.Errorf("role %q: %w", req.Role, err)}
	}
	name := req.SessionName
	if name == "" && req.Pod != "" {
		name = SessionName(req.Namespace, req.Pod, req.PodUID)
	}
	sessionName, ok := SessionNameFor(name)
	if !ok {
		return exchange.Credentials{}, invalidRequest(req.Role, "session name shorter than 2 characters")
	}
	duration := s.duration
	if req.Duration != 0 {
		duration = req.Duration.Truncate(time.Second)
	}
	if err := checkDuration(duration); err != nil {
		xe := invalidRequest(req.Role, "session duration "+err.Error())
		xe.Cause = exchange.CauseLifetime
		return exchange.Credentials{}, xe
	}

	out, err := s.client.AssumeRoleWithWebIdentity(ctx, &sts.AssumeRoleWithWebIdentityInput{
		RoleArn:          aws.String(req.Role),
		RoleSessionName:  aws.String(sessionName),
		WebIdentityToken: aws.String(req.Token.Reveal()),
		DurationSeconds:  aws.Int32(int32(duration / time.Second)),
	})
	if err != nil {
		return exchange.Credentials{}, classify(ctx, err, req.Role, req.Token, duration)
	}

	c := out.Credentials
	if c == nil || aws.ToString(c.AccessKeyId) == "" || aws.ToString(c.SecretAccessKey) == "" ||
		aws.ToString(c.SessionToken) == "" || c.Expiration == nil {
		// A 200 without credentials is an upstream fault, not ours.
		return exchange.Credentials{}, &exchange.Error{Kind: exchange.Transient, Err: &stsError{
			role: req.Role, detail: "response lacks credentials or expiration",
		}}
	}
	account := roleARN.AccountID
	if !isAccountID(account) {
		// An extra partition's account field is the STS's own business:
		// AccountId is an AWS account or nothing.
		account = ""
	}
	if out.AssumedRoleUser != nil {
		if id, err := AccountIDFromARN(aws.ToString(out.AssumedRoleUser.Arn)); err == nil {
			account = id
		}
	}
	return exchange.Credentials{
		Kind:            exchange.KindAWS,
		AccessKeyID:     aws.ToString(c.AccessKeyId),
		SecretAccessKey: exchange.Secret(aws.ToString(c.SecretAccessKey)),
		SessionToken:    exchange.Secret(aws.ToString(c.SessionToken)),
		AccountID:       account,
		Expiration:      c.Expiration.UTC(),
	}, nil
}

// roleHint says what is wrong with a role the exchanger refused to send.
func roleHint(role string, err error) string {
	if errors.Is(err, ErrOtherPartition) {
		return fmt.Sprintf("%q is not in an AWS partition (arn:aws:iam::ACCOUNT:role/NAME); an S3-compatible STS's own role forms "+
			"(MinIO: arn:minio:iam:::role/ID) are sent once the agent's --sts-extra-arn-partitions names their partition", role)
	}
	return fmt.Sprintf("%q is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME, a 12-digit account): %v", role, err)
}

func invalidRequest(role, detail string) *exchange.Error {
	return &exchange.Error{Kind: exchange.InvalidRequest, Err: &stsError{role: role, detail: detail}}
}

// stsError describes one failed call in words that are safe to log: the
// role, the HTTP status, the request ID and STS's message (dropped if it
// contains the token). It wraps the SDK's error so that callers can still use
// errors.Is (context.DeadlineExceeded) and errors.As (smithy.APIError); the
// SDK's error carries nothing from the request body, where the token is.
type stsError struct {
	role      string
	status    int
	requestID string
	detail    string
	cause     error
}

func (e *stsError) Error() string {
	var b strings.Builder
	b.WriteString("sts AssumeRoleWithWebIdentity")
	if e.role != "" {
		fmt.Fprintf(&b, " for role %s", e.role)
	}
	if e.status != 0 {
		fmt.Fprintf(&b, ": HTTP %d", e.status)
	}
	if e.requestID != "" {
		fmt.Fprintf(&b, " (request id %s)", e.requestID)
	}
	exchange.AppendDetails(&b, e.detail)
	return b.String()
}

func (e *stsError) Unwrap() error { return e.cause }

// classify turns an SDK error into an *exchange.Error. The AWS error code decides
// where it is known; the HTTP status decides otherwise; a failure without a
// response (connection refused, timeout, cancelled context) is exchange.Transient.
func classify(ctx context.Context, err error, role string, token exchange.Secret, duration time.Duration) *exchange.Error {
	se := &stsError{role: role, cause: err}

	var status interface{ HTTPStatusCode() int }
	if errors.As(err, &status) {
		se.status = status.HTTPStatusCode()
	}
	var reqID interface{ ServiceRequestID() string }
	if errors.As(err, &reqID) {
		se.requestID = reqID.ServiceRequestID()
	}

	var api smithy.APIError
	if !errors.As(err, &api) {
		kind := exchange.KindForStatus(se.status, statusKinds)
		switch {
		case se.status != 0:
			se.detail = "unparsable response"
		case ctx.Err() != nil:
			// The caller's deadline or cancellation, as opposed to the HTTP
			// client's own timeout below.
			se.detail = "caller's context: " + ctx.Err().Error()
		default:
			se.detail = "request failed: " + exchange.SendFailure(err)
			if exchange.Leaks(se.detail, token) {
				se.detail = "request failed"
			}
		}
		return &exchange.Error{Kind: kind, Err: se}
	}

	code := api.ErrorCode()
	se.detail = api.ErrorMessage()
	if exchange.Leaks(se.detail, token) {
		// Only a peer that is not STS would echo the token; keep it out of
		// the text and out of the wrapped chain as well.
		se.detail = "(message withheld: it quotes the token)"
		se.cause = &smithy.GenericAPIError{Code: code, Fault: api.ErrorFault()}
	} else if len(se.detail) > maxMessageLen {
		se.detail = se.detail[:maxMessageLen] + "..."
	}
	kind, known := kindForCode(code)
	if !known {
		kind = exchange.KindForStatus(se.status, statusKinds)
		if se.status == 0 && api.ErrorFault() == smithy.FaultClient {
			kind = exchange.InvalidRequest
		}
	}
	if kind == exchange.InvalidRequest && durationRefused(code, api.ErrorMessage()) {
		return &exchange.Error{Kind: kind, Code: code, Cause: exchange.CauseLifetime, Hint: durationHint(role, duration), Err: se}
	}
	if audienceRefused(code, api.ErrorMessage()) {
		// The token itself was refused, for a setting of the agent's: the
		// caller is told to fix --audience, not the role annotation.
		return &exchange.Error{Kind: exchange.InvalidToken, Code: code, Cause: exchange.CauseAudience,
			Hint: audienceHint(token), Err: se}
	}
	return &exchange.Error{Kind: kind, Code: code, Err: se}
}

// audienceRefused reports whether the STS refused the token's audience.
// Only the message tells, so it is matched, for these two codes only: AWS
// answers InvalidIdentityToken for every fault of a token (signature,
// issuer, expiry, and "Incorrect token audience"), and MinIO
// InvalidParameterValue for any bad parameter, the audience check included
// ("STS JWT Token has `aud` claim invalid, `aud` must match configured
// OpenID Client ID", the same for `azp`).
func audienceRefused(code, msg string) bool {
	switch code {
	case "InvalidIdentityToken":
		return strings.Contains(strings.ToLower(msg), "audience")
	case "InvalidParameterValue":
		return strings.Contains(msg, "`aud`") || strings.Contains(msg, "`azp`")
	}
	return false
}

// durationRefused reports whether STS refused the session's duration: a
// role's MaxSessionDuration below --session-duration. STS answers
// ValidationError for every malformed parameter and names the parameter
// only in the message ("The requested DurationSeconds exceeds the
// MaxSessionDuration set for this role", "Value at 'durationSeconds' failed
// to satisfy constraint"), so the message is matched, for that code only.
func durationRefused(code, msg string) bool {
	return code == "ValidationError" && strings.Contains(strings.ToLower(msg), "durationseconds")
}

// durationHint says which duration was refused and where to fix it.
func durationHint(role string, d time.Duration) string {
	return "STS refused a session of " + d.String() + " (the agent's --session-duration) for " + role +
		": lower --session-duration to at most the role's MaxSessionDuration (1h unless raised), or raise the role's"
}

// audienceHint says which audience was refused and where to fix it.
func audienceHint(token exchange.Secret) string {
	aud := "the agent's --audience"
	if a := exchange.TokenAudiences(token); len(a) > 0 {
		aud = strings.Join(a, ", ") + " (the agent's --audience)"
	}
	return "the STS refused the token's audience " + aud + ": it accepts only the client IDs its OpenID Connect provider lists " +
		"(AWS: the IAM OIDC provider's audiences; MinIO: its identity_openid client_id); set --audience to one of them, or add this one there"
}

// kindForCode classifies the error codes AssumeRoleWithWebIdentity is
// documented to return, plus the generic AWS throttling codes.
func kindForCode(code string) (exchange.ErrorKind, bool) {
	switch code {
	case "AccessDenied", "AccessDeniedException":
		return exchange.Denied, true
	case "InvalidIdentityToken", "ExpiredToken", "ExpiredTokenException", "IDPRejectedClaim":
		return exchange.InvalidToken, true
	case "IDPCommunicationError":
		// STS could not reach the identity provider's JWKS endpoint (the
		// cluster's OIDC issuer): documented as often transient.
		return exchange.Transient, true
	case "ValidationError", "MalformedPolicyDocument", "PackedPolicyTooLarge", "RegionDisabledException":
		return exchange.InvalidRequest, true
	}
	if _, ok := retry.DefaultThrottleErrorCodes[code]; ok {
		return exchange.Throttled, true
	}
	if _, ok := retry.DefaultRetryableErrorCodes[code]; ok {
		return exchange.Transient, true
	}
	return 0, false
}

// statusKinds are the statuses STS gives a meaning of its own: a 401 or
// 403 without a known code is a request STS will refuse again.
var statusKinds = map[int]exchange.ErrorKind{
	http.StatusTooManyRequests: exchange.Throttled,
}

// maxMessageLen bounds how much of STS's message goes into an error text.
// STS's messages name the problem (audience, issuer, expiry), never the token.
const maxMessageLen = 512
