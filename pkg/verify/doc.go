// Package verify checks Kubernetes ServiceAccount tokens for a service that
// receives them from other workloads: pod A sends a token minted for B's
// audience, and B, with this package, learns who A is (namespace,
// ServiceAccount, pod, node) or refuses it with a reason.
//
//	v, err := verify.New(verify.Config{
//		Kubernetes: restConfig, // rest.InClusterConfig() in a pod
//		Audiences:  []string{"orders.shop.svc"},
//		Subjects:   []string{"system:serviceaccount:shop:frontend"},
//	})
//	http.Handle("/", v.Middleware(handler)) // verify.FromContext(r.Context()) in handler
//
// # Guarantees
//
//   - Keys come from OIDC discovery: from the issuer URL (https, the
//     document must name that issuer) or, in a cluster, from the API server
//     itself with the pod's credentials (/.well-known/openid-configuration
//     and /openid/v1/jwks; the credentials are never sent anywhere else).
//   - The key set is cached; an unknown key ID refreshes it, a set older
//     than MaxKeyAge is refreshed on next use, and no two fetches are closer
//     than RefreshInterval, failed ones included: a flood of tokens with
//     random key IDs costs the issuer one fetch per interval. Concurrent
//     refreshes share one fetch.
//   - Algorithms are pinned to RS256 and ES256 (or a subset), whatever the
//     token, the discovery document or the key set say. "none" and HMAC are
//     refused before any key is looked up; a key is only used with the
//     algorithm of its own type; symmetric keys in a key set are ignored.
//   - iss, aud (one of Audiences), exp (required), nbf and iat are checked
//     with Leeway (30 s by default); sub must match the kubernetes.io claim
//     and one of the Subjects patterns.
//   - With Config.Nodes (or Identity.RequireNode per request), only tokens
//     minted for a pod bound to an accepted node pass: the API server puts
//     the pod's node name and UID in pod-bound tokens (KEP-4193).
//   - With TokenReview, the API server must still authenticate the token,
//     which rejects tokens of deleted pods and ServiceAccounts.
//   - Every refusal is an *Error with a Kind (ErrExpired, ErrAudience, ...)
//     for errors.Is; no error text contains the token.
//
// # Why go-jose, not go-oidc
//
// The package is built on github.com/go-jose/go-jose/v4 (JWS parsing with an
// allow-list of algorithms, JWK decoding, claim validation with a leeway),
// the library under github.com/coreos/go-oidc/v3, rather than on go-oidc's
// IDTokenVerifier and RemoteKeySet (read at v3.21.0), because for this job
// go-oidc would have to be worked around at every point that matters:
// its RemoteKeySet fetches the key set again for every token whose key ID
// is unknown, or whose signature fails with a known key, with no rate limit
// (it only merges concurrent fetches), and reads the answer without a size
// bound; its verifier checks exp with no leeway and nbf with a fixed five
// minutes, ignores iat, accepts one audience (ClientID), and returns
// mostly formatted strings rather than errors to branch on; and its
// discovery sends no credentials unless the caller builds the client, then
// follows jwks_uri wherever it points. What is left of go-oidc after
// replacing those (the discovery document's two fields) is less than the
// code to replace them. kube-apiserver itself signs and checks these tokens
// with go-jose.
//
// TokenReview is a plain net/http POST of k8s.io/api/authentication/v1 JSON
// over an http.Client made by k8s.io/client-go/rest (bearer token, rotating
// token file, CA): the generated clientset, which links every API group, is
// not imported (TestDependencies guards it).
package verify
