package aws

import (
	"cmp"
	"time"

	"github.com/credbroker/agent/pkg/exchange"
)

// Defaults of AWS's description (EKS's names).
const (
	// DefaultAudience is the audience STS expects of web identity tokens.
	DefaultAudience = "sts.amazonaws.com"
	// DefaultAnnotation is the ServiceAccount annotation naming the role.
	DefaultAnnotation = "eks.amazonaws.com/role-arn"
)

// ProfileConfig configures Profile. Zero values take the defaults.
type ProfileConfig struct {
	// Exchanger is required: an *STS, or a test's.
	Exchanger exchange.Exchanger
	// Audience of the pod-bound token; default DefaultAudience.
	Audience string
	// Annotation naming the role; default DefaultAnnotation.
	Annotation string
	// AllowedRoles are glob patterns (exchange.Glob) of the role ARNs
	// pods may assume; empty allows all.
	AllowedRoles []string
	// Lifetime of the credentials (--session-duration); default
	// DefaultSessionDuration.
	Lifetime time.Duration
}

// Profile describes AWS to the broker: the role the ServiceAccount's
// annotation names, and the container credentials prefetched for every pod
// with one.
func Profile(cfg ProfileConfig) exchange.Profile {
	cfg.Audience = cmp.Or(cfg.Audience, DefaultAudience)
	cfg.Annotation = cmp.Or(cfg.Annotation, DefaultAnnotation)
	cfg.Lifetime = cmp.Or(cfg.Lifetime, DefaultSessionDuration)
	return exchange.Profile{
		Name:              exchange.AWS,
		Exchanger:         cfg.Exchanger,
		Audience:          cfg.Audience,
		Annotation:        cfg.Annotation,
		AllowedIdentities: cfg.AllowedRoles,
		Prefetch:          []exchange.Prefetch{{Want: exchange.KindAWS}},
		Lifetime:          cfg.Lifetime,
		Noun:              "role",
		TrustHint:         "the role's",
		AudienceHint:      "--audience",
	}
}
