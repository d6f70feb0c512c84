// Package exchange turns a Kubernetes ServiceAccount token into cloud
// credentials. Each implementation talks to one cloud's token service; the
// broker consumes them through its own one-method interface, so adding a
// cloud never changes the broker.
//
// Implementations must keep secrets out of error texts: an error may name the
// role and the upstream error code, never the token or any credential.
package exchange

import (
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Secret is a string that must never be printed. Its String, GoString and
// LogValue methods redact it, so that a Secret that ends up in a log line,
// an error built with %v or a panic message shows "REDACTED". Use Reveal
// where the value really has to leave the process (the HTTP response, the
// upstream request).
type Secret string

// Reveal returns the secret value.
func (s Secret) Reveal() string { return string(s) }

// String redacts.
func (Secret) String() string { return "REDACTED" }

// GoString redacts, so %#v redacts too.
func (Secret) GoString() string { return `"REDACTED"` }

// LogValue redacts for log/slog.
func (Secret) LogValue() slog.Value { return slog.StringValue("REDACTED") }

// Format redacts for every verb, including %s, %q and %x.
func (s Secret) Format(f fmt.State, verb rune) { fmt.Fprint(f, "REDACTED") }

// Cloud names a cloud whose credentials the agent serves.
type Cloud string

const (
	AWS   Cloud = "aws"
	GCP   Cloud = "gcp"
	Azure Cloud = "azure"
)

// Request is one exchange of a ServiceAccount token for credentials.
type Request struct {
	// Token is the pod-bound ServiceAccount token (a JWT). It is used for
	// this one call and never stored.
	Token Secret
	// Want is the kind of credential asked for: KindAWS from AWS;
	// KindAccessToken or KindIDToken from GCP; KindAccessToken from Azure.
	Want Kind
	// Role names what the caller wants to become: an IAM role ARN for AWS,
	// a service account email for GCP (empty: the federated principal of
	// the pod's ServiceAccount itself), a client ID for Azure.
	Role string
	// Scopes are the OAuth scopes of an access token (GCP), or the one
	// "<resource>/.default" scope (Azure).
	Scopes []string
	// Audience is the audience of an identity token (KindIDToken).
	Audience string
	// Tenant is the Azure tenant of Role.
	Tenant string
	// TokenExpiration is when Token expires.
	TokenExpiration time.Time
	// Namespace, Pod and PodUID name the pod the token is bound to, for
	// the cloud's audit log.
	Namespace, Pod, PodUID string
	// SessionName, when set, names the session in the cloud's audit log
	// instead of a name the exchanger makes from the pod's.
	SessionName string
	// Duration is the requested lifetime; zero means the exchanger's default.
	Duration time.Duration
}

// Kind says which fields of Credentials are set.
type Kind int

const (
	// KindAWS credentials carry an access key, a secret key and a session token.
	KindAWS Kind = iota + 1
	// KindAccessToken credentials carry an OAuth 2.0 bearer token (GCP, Azure).
	KindAccessToken
	// KindIDToken credentials carry an OpenID Connect identity token (GCP).
	KindIDToken
)

// Credentials are what an exchange yields. They are immutable once returned.
type Credentials struct {
	Kind Kind

	// AWS, set when Kind is KindAWS.
	AccessKeyID     string
	SecretAccessKey Secret
	SessionToken    Secret
	AccountID       string

	// OAuth, set when Kind is KindAccessToken.
	AccessToken Secret
	TokenType   string
	// Scopes the access token was granted, when upstream says.
	Scopes []string

	// IDToken is set when Kind is KindIDToken.
	IDToken Secret

	// Expiration is when the credentials stop working.
	Expiration time.Time
}

// Complete reports whether c has an expiry and every field its Kind needs.
func (c Credentials) Complete() bool {
	complete := !c.Expiration.IsZero()
	switch c.Kind {
	case KindAWS:
		complete = complete && c.AccessKeyID != "" && c.SecretAccessKey != "" && c.SessionToken != ""
	case KindAccessToken:
		complete = complete && c.AccessToken != ""
	case KindIDToken:
		complete = complete && c.IDToken != ""
	}
	return complete
}

// ErrorKind classifies an upstream failure once, so that callers branch on
// it rather than on error texts.
type ErrorKind int

const (
	// Transient failures (5xx, network errors, timeouts) are worth retrying.
	Transient ErrorKind = iota + 1
	// Throttled means upstream asked us to slow down.
	Throttled
	// Denied means upstream refused this identity or role; retrying the same
	// request will not help (AccessDenied, role trust policy mismatch).
	Denied
	// InvalidToken means upstream rejected the token itself
	// (InvalidIdentityToken, ExpiredToken, IDPRejectedClaim).
	InvalidToken
	// InvalidRequest means the request was malformed (a bad role ARN, an
	// out-of-range duration): the operator's configuration is wrong.
	InvalidRequest
)

func (k ErrorKind) String() string {
	switch k {
	case Transient:
		return "transient"
	case Throttled:
		return "throttled"
	case Denied:
		return "denied"
	case InvalidToken:
		return "invalid_token"
	case InvalidRequest:
		return "invalid_request"
	default:
		return "unknown"
	}
}

// Cause names what a refusal was about, so that the caller is pointed at
// what to fix: an identity's trust, or a setting of the agent that no
// annotation can change. It is decided where the error is classified, from
// upstream codes and what was sent, never from upstream message texts
// unless an exchanger documents why only the text tells.
type Cause int

const (
	// CauseIdentity is the default: the identity the ServiceAccount names,
	// or its trust policy, was refused.
	CauseIdentity Cause = iota
	// CauseIdentityForm means the exchanger refused the identity's form
	// (the annotation's value) itself: no request was sent upstream.
	CauseIdentityForm
	// CauseLifetime means the credential lifetime the agent asked for was
	// refused: an agent setting, not the identity.
	CauseLifetime
	// CauseAudience means the audience of the ServiceAccount token the agent
	// sent was refused: an agent setting, not the identity.
	CauseAudience
)

func (c Cause) String() string {
	switch c {
	case CauseIdentity:
		return "identity"
	case CauseIdentityForm:
		return "identity_form"
	case CauseLifetime:
		return "lifetime"
	case CauseAudience:
		return "audience"
	default:
		return "unknown"
	}
}

// Error is an upstream failure classified by Kind. Code is the upstream's own
// error code (for example "AccessDenied"); it never carries a secret.
type Error struct {
	Kind ErrorKind
	Code string
	// Cause says what was refused; the zero value is CauseIdentity.
	Cause Cause
	// Hint, when set, says what to fix in the exchanger's own words (never
	// an upstream text): it may be shown to the pod, so it names only
	// identities, settings and token claims, never a secret.
	Hint string
	Err  error
}

// Error names the kind, the code, what was refused when it is not the
// identity, and ends with the hint, so that the agent's log says what to
// fix as the pod is told.
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "exchange %s", e.Kind)
	switch {
	case e.Code != "" && e.Cause != CauseIdentity:
		fmt.Fprintf(&b, " (%s, %s refused)", e.Code, e.Cause)
	case e.Code != "":
		fmt.Fprintf(&b, " (%s)", e.Code)
	case e.Cause != CauseIdentity:
		fmt.Fprintf(&b, " (%s refused)", e.Cause)
	}
	fmt.Fprintf(&b, ": %v", e.Err)
	AppendDetails(&b, e.Hint)
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Retryable reports whether the same request may succeed later.
func (e *Error) Retryable() bool { return e.Kind == Transient || e.Kind == Throttled }
