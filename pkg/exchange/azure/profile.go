package azure

import (
	"cmp"
	"github.com/credbroker/agent/pkg/exchange"
)

// Default ServiceAccount annotations (Azure Workload Identity's names).
const (
	DefaultClientAnnotation = "azure.workload.identity/client-id"
	DefaultTenantAnnotation = "azure.workload.identity/tenant-id"
)

// ProfileConfig configures Profile.
type ProfileConfig struct {
	// Exchanger is required: an *Exchanger, or a test's.
	Exchanger exchange.Exchanger
	// Tenant is the tenant of identities whose ServiceAccount names none.
	Tenant string
	// Audience of the pod-bound token; default TokenAudience.
	Audience string
	// ClientAnnotation names the application (client) ID (required),
	// TenantAnnotation its tenant (empty: always Tenant). The flags'
	// defaults are DefaultClientAnnotation and DefaultTenantAnnotation.
	ClientAnnotation, TenantAnnotation string
	// AllowedClientIDs are glob patterns of the client IDs pods may use;
	// empty allows all.
	AllowedClientIDs []string
	// Prefetch are the tokens fetched ahead for pods with a client ID.
	Prefetch []exchange.Prefetch
}

// Profile describes Azure to the broker: the client ID comes from the
// ServiceAccount's annotation (no annotation, no token), the tenant from
// its own annotation or, without one, cfg.Tenant: a client ID means
// nothing without its tenant. No Lifetime: the client credentials grant
// has none, Entra decides.
func Profile(cfg ProfileConfig) exchange.Profile {
	cfg.Audience = cmp.Or(cfg.Audience, TokenAudience)
	tenant := cfg.Tenant
	var extra []string
	if cfg.TenantAnnotation != "" {
		extra = []string{cfg.TenantAnnotation}
	}
	return exchange.Profile{
		Name:             exchange.Azure,
		Exchanger:        cfg.Exchanger,
		Audience:         cfg.Audience,
		Annotation:       cfg.ClientAnnotation,
		ExtraAnnotations: extra,
		Principal: func(clientID string, extra []string) exchange.Principal {
			if len(extra) > 0 && extra[0] != "" {
				return exchange.Principal{Identity: clientID, Tenant: extra[0]}
			}
			return exchange.Principal{Identity: clientID, Tenant: tenant}
		},
		AllowedIdentities: cfg.AllowedClientIDs,
		Prefetch:          cfg.Prefetch,
		DeniedRetryWindow: DeniedRetryWindow,
		Noun:              "client ID",
		TrustHint:         "the application's federated identity credential",
		AudienceHint:      "--azure-audience",
	}
}
