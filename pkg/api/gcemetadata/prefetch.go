package gcemetadata

import (
	"strings"

	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
)

// TokenRequest is the broker request this surface makes for an access
// token of scopes, canonicalised as a caller's would be: what the agent
// prefetches must be the very cache entry the surface later reads.
func TokenRequest(scopes []string) (broker.Request, error) {
	canon, _, err := canonicalScopes(strings.Join(scopes, ","))
	if err != nil {
		return broker.Request{}, err
	}
	return broker.Request{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Scope: canon}, nil
}
