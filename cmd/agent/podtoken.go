package main

import (
	"flag"

	"github.com/credbroker/agent/pkg/api/podtoken"
	"github.com/credbroker/agent/pkg/broker"
)

// podTokenConfig holds the flags of service-to-service tokens
// (GET /v1/token?audience=). They are off unless an audience prefix is
// set: the admission policy lets the agent mint tokens for audiences with
// that prefix, and no other (docs/service-to-service.md).
type podTokenConfig struct {
	prefix     string
	annotation string
	allowed    listFlag
}

func (p *podTokenConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&p.prefix, "token-audience-prefix", "", "serve pods their own tokens for audiences starting with this prefix at /v1/token (keep it equal to the admission policy's serviceAudiencePrefix); off unless set")
	fs.StringVar(&p.annotation, "token-audience-annotation", "credbroker.io/token-audiences", "ServiceAccount annotation listing the token audiences (comma-separated globs) its pods may ask for")
	fs.Var(&p.allowed, "allowed-token-audience", "glob pattern of audiences any pod may ask for at all; repeatable; empty allows every audience with the prefix")
}

func (p *podTokenConfig) enabled() bool { return p.prefix != "" }

// cloud is the broker cloud of pod tokens; the other clouds' exchange
// audiences are reserved, so that no pod gets a token another cloud's
// policy would have refused.
func (p *podTokenConfig) cloud(others []broker.Cloud) broker.Cloud {
	c := broker.Cloud{Name: podtoken.Cloud, TokenPerAudience: true, AudiencePrefix: p.prefix,
		Annotation: p.annotation, AllowedIdentities: p.allowed}
	for _, o := range others {
		c.ReservedAudiences = append(c.ReservedAudiences, o.Audience)
	}
	return c
}
