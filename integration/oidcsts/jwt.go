package oidcsts

import "github.com/credbroker/agent/integration/clusterkeys"

// The token checks are the cluster's (integration/clusterkeys): the
// issuer's keys through OIDC discovery, as AWS STS fetches them for an
// OIDC identity provider, RS256 only. STS answers a token that fails them
// with InvalidIdentityToken.
type (
	claims = clusterkeys.Claims
	keySet = clusterkeys.KeySet
)

var errBadToken = clusterkeys.ErrBadToken
