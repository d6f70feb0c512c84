package entra

import (
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/credbroker/agent/integration/clusterkeys"
)

// The token checks are the cluster's (integration/clusterkeys), shared
// with the other peers.
type (
	claims = clusterkeys.Claims
	keySet = clusterkeys.KeySet
)

var errBadToken = clusterkeys.ErrBadToken

func containsAny(a jwt.Audience, want []string) bool { return clusterkeys.ContainsAny(a, want) }

func unverifiedClaims(token string) (*claims, error) { return clusterkeys.UnverifiedClaims(token) }
