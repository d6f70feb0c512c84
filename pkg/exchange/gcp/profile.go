package gcp

import (
	"strings"
	"time"

	"github.com/credbroker/agent/pkg/exchange"
)

// DefaultAnnotation is the ServiceAccount annotation naming the Google
// service account to impersonate (GKE's name).
const DefaultAnnotation = "iam.gke.io/gcp-service-account"

// ProfileConfig configures Profile.
type ProfileConfig struct {
	// Exchanger is required: an *Exchanger, or a test's.
	Exchanger exchange.Exchanger
	// Provider is the workload identity provider; the pod-bound token's
	// audience is its TokenAudience.
	Provider string
	// Annotation naming the Google service account (required; the flag's
	// default is DefaultAnnotation).
	Annotation string
	// Prefetch are the tokens fetched ahead for pods whose ServiceAccount
	// names a Google service account.
	Prefetch []exchange.Prefetch
	// Lifetime of impersonated access tokens; zero means Google's default.
	Lifetime time.Duration
}

// Profile describes GCP to the broker: a ServiceAccount without the
// annotation is served as its own federated principal (Google's direct
// resource access), and Google's IAM propagation, slower than AWS's, gets
// its own denied-retry window.
func Profile(cfg ProfileConfig) exchange.Profile {
	annotation := strings.TrimSpace(cfg.Annotation)
	return exchange.Profile{
		Name:              exchange.GCP,
		Exchanger:         cfg.Exchanger,
		Audience:          TokenAudience(cfg.Provider),
		Annotation:        annotation,
		IdentityOptional:  true,
		Prefetch:          cfg.Prefetch,
		Lifetime:          cfg.Lifetime,
		DeniedRetryWindow: DeniedRetryWindow,
		Noun:              "Google service account",
		TrustHint:         "the workload identity binding",
	}
}
