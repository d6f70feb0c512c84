package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"k8s.io/client-go/rest"

	"github.com/credbroker/agent/pkg/api"
	"github.com/credbroker/agent/pkg/api/gcemetadata"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/exchange/gcp"
)

// gcpConfig holds the --gcp-* flags. GCP is off unless a workload identity
// provider is named.
type gcpConfig struct {
	provider      string
	projectID     string
	projectNumber string
	stsEndpoint   string
	iamEndpoint   string
	annotation    string
	defaultScopes listFlag
	// lifetime is what generateAccessToken is asked for; GCP's own, since
	// Google grants an hour where AWS grants twelve.
	lifetime time.Duration
}

func (g *gcpConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&g.provider, "gcp-workload-identity-provider", "", "projects/N/locations/global/workloadIdentityPools/P/providers/X whose pool trusts this cluster's ServiceAccount tokens; GCP is off unless set")
	fs.StringVar(&g.projectID, "gcp-project-id", "", "project ID the GCE metadata surface reports (required with GCP)")
	fs.StringVar(&g.projectNumber, "gcp-project-number", "", "project number the GCE metadata surface reports (default: the provider's)")
	fs.StringVar(&g.stsEndpoint, "gcp-sts-endpoint", gcp.DefaultSTSEndpoint, "Google STS base URL")
	fs.StringVar(&g.iamEndpoint, "gcp-iamcredentials-endpoint", gcp.DefaultIAMCredentialsEndpoint, "IAM Credentials base URL")
	fs.StringVar(&g.annotation, "gcp-service-account-annotation", gcp.DefaultAnnotation, "ServiceAccount annotation naming the Google service account to impersonate")
	fs.DurationVar(&g.lifetime, "gcp-token-lifetime", gcp.UnextendedMaxDuration, "lifetime of impersonated access tokens (generateAccessToken); at most 1h unless the organisation policy constraints/iam.allowServiceAccountCredentialLifetimeExtension lists the service accounts (then up to 12h); federated and identity tokens live as long as Google grants (1h)")
	fs.Var(&g.defaultScopes, "gcp-default-scopes", "scopes of tokens asked for without ?scopes=, and of the prefetched token (default "+gcp.CloudPlatformScope+")")
}

func (g *gcpConfig) enabled() bool { return g.provider != "" }

func (g *gcpConfig) validate() error {
	if !g.enabled() {
		return nil
	}
	p, err := gcp.ParseProvider(g.provider)
	if err != nil {
		return fmt.Errorf("--gcp-workload-identity-provider: %w", err)
	}
	if g.projectID == "" {
		return errors.New("--gcp-project-id is required with --gcp-workload-identity-provider")
	}
	if g.projectNumber == "" {
		g.projectNumber = p.ProjectNumber
	}
	switch {
	case g.lifetime < broker.MinLifetime:
		return fmt.Errorf("--gcp-token-lifetime %s leaves no room to refresh before the %s freshness floor; use at least %s", g.lifetime, broker.FreshnessFloor, broker.MinLifetime)
	case g.lifetime > gcp.MaxDuration:
		return fmt.Errorf("--gcp-token-lifetime %s is above the %s Google grants even where the organisation policy constraints/iam.allowServiceAccountCredentialLifetimeExtension allows longer tokens (and %s without it)", g.lifetime, gcp.MaxDuration, gcp.UnextendedMaxDuration)
	}
	if len(g.defaultScopes) == 0 {
		g.defaultScopes = listFlag{gcp.CloudPlatformScope}
	}
	if _, err := gcemetadata.TokenRequest(g.defaultScopes); err != nil {
		return fmt.Errorf("--gcp-default-scopes: %w", err)
	}
	return nil
}

// cloud describes GCP to the broker (gcp.Profile), with a token for the
// default scopes prefetched for pods whose ServiceAccount names a Google
// service account.
func (g *gcpConfig) cloud() (broker.Cloud, error) {
	x, err := gcp.New(gcp.Config{Provider: g.provider, STSEndpoint: g.stsEndpoint, IAMCredentialsEndpoint: g.iamEndpoint})
	if err != nil {
		return broker.Cloud{}, fmt.Errorf("GCP exchanger: %w", err)
	}
	prefetch, err := gcemetadata.TokenRequest(g.defaultScopes)
	if err != nil {
		return broker.Cloud{}, err
	}
	return gcp.Profile(gcp.ProfileConfig{Exchanger: x, Provider: g.provider, Annotation: g.annotation,
		Prefetch: []exchange.Prefetch{{Want: prefetch.Want, Scope: prefetch.Scope}}, Lifetime: g.lifetime}), nil
}

func (g *gcpConfig) build(context.Context, *rest.Config, []broker.Cloud) (broker.Cloud, error) {
	return g.cloud()
}

// lifetimeWarning is what to say at start about a lifetime above the hour
// Google grants by default: it works only where the organisation policy
// allows it, and where it does not, every impersonation is refused.
func (g *gcpConfig) lifetimeWarning() string {
	if !g.enabled() || g.lifetime <= gcp.UnextendedMaxDuration {
		return ""
	}
	return fmt.Sprintf("--gcp-token-lifetime %s is above the %s Google grants unless the organisation policy constraints/iam.allowServiceAccountCredentialLifetimeExtension lists the impersonated service accounts; where it does not, Google refuses every impersonation (LifetimeRefused)", g.lifetime, gcp.UnextendedMaxDuration)
}

// route is the GCE metadata server surface.
func (g *gcpConfig) route(b tracedBroker, grd *guards) (api.Route, error) {
	h, err := gcemetadata.New(gcemetadata.Config{Broker: b, ProjectID: g.projectID,
		NumericProjectID: g.projectNumber, DefaultScopes: g.defaultScopes, Registerer: grd.reg})
	if err != nil {
		return api.Route{}, fmt.Errorf("GCE metadata surface: %w", err)
	}
	return grd.route(gcemetadata.Owns, gcemetadata.GuardRules(), h)
}
