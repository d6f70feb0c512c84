package broker

import (
	"github.com/credbroker/agent/pkg/exchange"
	awsexchange "github.com/credbroker/agent/pkg/exchange/aws"
	"github.com/credbroker/agent/pkg/exchange/azure"
	"github.com/credbroker/agent/pkg/exchange/podtoken"
)

// The tests' clouds, as their packages describe them.

func awsCloud(x Exchanger) Cloud { return awsexchange.Profile(awsexchange.ProfileConfig{Exchanger: x}) }

// azureCloud keeps the broker's default denied-retry window, which the
// tests' timings assume.
func azureCloud(x Exchanger, clientAnnotation, tenantAnnotation, defaultTenant string) Cloud {
	c := azure.Profile(azure.ProfileConfig{Exchanger: x, ClientAnnotation: clientAnnotation,
		TenantAnnotation: tenantAnnotation, Tenant: defaultTenant})
	c.DeniedRetryWindow = 0
	return c
}

func prefetchOf(reqs ...Request) []exchange.Prefetch {
	var p []exchange.Prefetch
	for _, r := range reqs {
		p = append(p, exchange.Prefetch{Want: r.Want, Scope: r.Scope})
	}
	return p
}

var podTokenCloud = func() Cloud {
	c, err := podtoken.Profile(podtoken.Config{Prefix: "https://svc.example.com/", Annotation: audienceAnnotation,
		Reserved: []podtoken.Reserved{{Audience: "sts.amazonaws.com", Owner: "the aws exchange's"}}})
	if err != nil {
		panic(err)
	}
	return c
}()
