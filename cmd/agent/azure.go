package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"k8s.io/client-go/rest"

	"github.com/credbroker/agent/pkg/api"
	"github.com/credbroker/agent/pkg/api/azureidentity"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/exchange/azure"
)

// azureConfig holds the --azure-* flags. Azure is off unless a tenant is
// named.
type azureConfig struct {
	tenant           string
	authorityHost    string
	audience         string
	identityHeader   string
	clientAnnotation string
	tenantAnnotation string
	prefetch         listFlag
}

func (a *azureConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&a.tenant, "azure-tenant-id", "", "Entra ID tenant of identities whose ServiceAccount names none; Azure is off unless set")
	fs.StringVar(&a.authorityHost, "azure-authority-host", azure.DefaultAuthorityHost, "Entra ID authority host")
	fs.StringVar(&a.audience, "azure-audience", azure.TokenAudience, "audience of the ServiceAccount token sent as the client assertion")
	fs.StringVar(&a.identityHeader, "azure-identity-header", "", "the value pods put in IDENTITY_HEADER (an SSRF guard, not a secret); required with Azure")
	fs.StringVar(&a.clientAnnotation, "azure-client-id-annotation", azure.DefaultClientAnnotation, "ServiceAccount annotation naming the Entra application (client) ID")
	fs.StringVar(&a.tenantAnnotation, "azure-tenant-id-annotation", azure.DefaultTenantAnnotation, "ServiceAccount annotation naming the identity's tenant (default --azure-tenant-id)")
	fs.Var(&a.prefetch, "azure-prefetch-resources", "resources (e.g. https://vault.azure.net) whose tokens are prefetched and refreshed ahead for pods with a client ID; repeatable")
}

func (a *azureConfig) enabled() bool { return a.tenant != "" }

func (a *azureConfig) validate() error {
	if !a.enabled() {
		return nil
	}
	switch {
	case !azure.ValidTenant(a.tenant):
		return fmt.Errorf("--azure-tenant-id %q is neither a tenant GUID nor a domain", a.tenant)
	case a.identityHeader == "":
		return errors.New("--azure-identity-header is required with --azure-tenant-id: pods send it back as X-IDENTITY-HEADER")
	}
	for _, r := range a.prefetch {
		if _, err := azureidentity.TokenRequest(r); err != nil {
			return fmt.Errorf("--azure-prefetch-resources %q: %w", r, err)
		}
	}
	return nil
}

// cloud describes Azure to the broker (azure.Profile): the client ID
// from the ServiceAccount's annotation, the tenant from its annotation or
// --azure-tenant-id.
func (a *azureConfig) cloud() (broker.Cloud, error) {
	x, err := azure.New(azure.Config{AuthorityHost: a.authorityHost})
	if err != nil {
		return broker.Cloud{}, fmt.Errorf("Azure exchanger: %w", err)
	}
	var prefetch []exchange.Prefetch
	for _, r := range a.prefetch {
		req, err := azureidentity.TokenRequest(r)
		if err != nil {
			return broker.Cloud{}, err
		}
		prefetch = append(prefetch, exchange.Prefetch{Want: req.Want, Scope: req.Scope})
	}
	return azure.Profile(azure.ProfileConfig{Exchanger: x, Tenant: a.tenant, Audience: a.audience,
		ClientAnnotation: a.clientAnnotation, TenantAnnotation: a.tenantAnnotation, Prefetch: prefetch}), nil
}

func (a *azureConfig) build(context.Context, *rest.Config, []broker.Cloud) (broker.Cloud, error) {
	return a.cloud()
}

// route is the managed-identity surface.
func (a *azureConfig) route(b tracedBroker, grd *guards) (api.Route, error) {
	h, err := azureidentity.New(azureidentity.Config{Broker: b, IdentityHeader: a.identityHeader, Registerer: grd.reg})
	if err != nil {
		return api.Route{}, fmt.Errorf("Azure managed-identity surface: %w", err)
	}
	return grd.route(azureidentity.Owns, azureidentity.GuardRules(), h)
}
