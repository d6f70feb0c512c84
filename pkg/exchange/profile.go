package exchange

import (
	"context"
	"time"
)

// Exchanger trades a pod-bound ServiceAccount token for cloud credentials.
type Exchanger interface {
	Exchange(ctx context.Context, req Request) (Credentials, error)
}

// Profile describes one cloud to the broker: everything the broker needs
// to know about it beyond its exchanger, built by the cloud's own package,
// so that the broker names no cloud and a new cloud changes no broker code.
type Profile struct {
	Name      Cloud
	Exchanger Exchanger // required
	// Audience is the audience of the pod-bound token the exchanger takes.
	Audience string
	// TokenAudience, when set, computes that audience from the request's
	// scope instead (validated by Check first); Audience is then unused.
	TokenAudience func(scope string) string
	// TokenLifetime is the lifetime of the pod-bound token; zero means the
	// broker's TokenExpiration.
	TokenLifetime time.Duration
	// Annotation is the ServiceAccount annotation naming the identity.
	Annotation string
	// ExtraAnnotations are further ServiceAccount annotations Principal
	// reads (a tenant, for example).
	ExtraAnnotations []string
	// Principal, when set, makes the principal out of the identity and
	// the values of ExtraAnnotations, in order ("" for one the account
	// lacks; extra is nil when the account has none of the agent's
	// annotations). Nil: the identity alone. It runs on every request and
	// must not allocate.
	Principal func(identity string, extra []string) Principal
	// IdentityOptional serves a ServiceAccount without the annotation as
	// its own principal (identity ""), instead of refusing it.
	IdentityOptional bool
	// AllowedIdentities are glob patterns (Glob) the annotated identity
	// must match; empty allows every identity.
	AllowedIdentities []string
	// Check, when set, replaces the identity checks: the annotation's
	// value is then a policy for the request's scope rather than an
	// identity, and Check decides. A refusal is a *Refusal.
	Check func(namespace, serviceAccount, value, scope string) error
	// Prefetch lists the requests fetched when a pod with an identity on
	// this cloud arrives (its first request is then a cache hit).
	Prefetch []Prefetch
	// Lifetime is the credential lifetime asked of the exchanger
	// (Request.Duration); zero means the exchanger's own default. It must
	// leave room to refresh before the broker's freshness floor.
	Lifetime time.Duration
	// DeniedRetryWindow is how long this cloud's denials are answered as
	// retryable after the first of a run of them, because its IAM is
	// eventually consistent; final after. Zero means the broker's default.
	DeniedRetryWindow time.Duration
	// Noun names what an identity is on this cloud, for messages ("role");
	// empty means "identity".
	Noun string
	// TrustHint says, for messages, where the trust of an identity is
	// configured on this cloud; AudienceHint which agent setting names the
	// token audience. Both are shown to pods: no secret.
	TrustHint    string
	AudienceHint string
}

// Principal is whom credentials stand for: the identity and, on a cloud
// with tenants, the tenant.
type Principal struct {
	Identity string
	Tenant   string
}

// Prefetch is a request fetched ahead for every pod with an identity.
type Prefetch struct {
	Want  Kind
	Scope string
}

// Refusal is a request a cloud's policy turns down (Profile.Check). Code
// and Message go to the caller verbatim, so they must never carry a
// secret.
type Refusal struct {
	Code    string
	Message string
}

func (r *Refusal) Error() string { return r.Code + ": " + r.Message }

// Refusal codes a cloud's policy uses; the broker has the others.
const (
	CodeNoIdentity         = "NoRoleAnnotation"
	CodeAudienceNotAllowed = "AudienceNotAllowed"
)

// Glob matches s against pattern, where '*' matches any run of characters
// (including '/', which IAM role paths contain; path.Match would stop
// there) and '?' matches one character.
func Glob(pattern, s string) bool {
	px, sx := 0, 0
	starPx, starSx := -1, 0
	for sx < len(s) {
		switch {
		case px < len(pattern) && (pattern[px] == '?' || pattern[px] == s[sx]):
			px++
			sx++
		case px < len(pattern) && pattern[px] == '*':
			starPx, starSx = px, sx
			px++
		case starPx >= 0:
			starSx++
			px, sx = starPx+1, starSx
		default:
			return false
		}
	}
	for px < len(pattern) && pattern[px] == '*' {
		px++
	}
	return px == len(pattern)
}
