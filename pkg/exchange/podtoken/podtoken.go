// Package podtoken describes service-to-service tokens to the broker as
// one more cloud: the credential a pod gets is its own pod-bound
// ServiceAccount token for another service's audience, which that service
// checks with pkg/verify. Which audiences a pod may ask for is this
// package's policy (the ServiceAccount's annotation, the cluster's prefix
// and patterns): never a cloud exchange's audience nor the API server's,
// under any spelling their receivers accept, and no prefix that covers one
// (CheckPrefix).
package podtoken

import (
	"context"
	"errors"
	"time"

	"github.com/credbroker/agent/pkg/exchange"
)

// Cloud is the cloud name of service-to-service tokens.
const Cloud exchange.Cloud = "kubernetes"

// defaultLifetime is what the kubelet projects by default.
const defaultLifetime = time.Hour

// Exchanger hands back the pod-bound token itself: the broker asked the
// API server for it with the request's audience (Profile.TokenAudience).
type Exchanger struct{}

// Exchange returns req.Token as an identity token expiring with it.
func (Exchanger) Exchange(_ context.Context, req exchange.Request) (exchange.Credentials, error) {
	if req.TokenExpiration.IsZero() {
		return exchange.Credentials{}, &exchange.Error{Kind: exchange.Transient, Code: "NoExpiry",
			Err: errors.New("the API server's TokenRequest answer has no expiry")}
	}
	return exchange.Credentials{Kind: exchange.KindIDToken, IDToken: req.Token, Expiration: req.TokenExpiration}, nil
}
