package kube

import (
	"context"
	"errors"
	"fmt"

	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/rest"
)

// Node restriction (KEP-5284, constrained impersonation). A ServiceAccount
// whose token is bound to a pod carries the pod's node in its user extra
// (authentication.kubernetes.io/node-name, KEP-4193). With the verb
// impersonate:associated-node on nodes in authentication.k8s.io, and
// impersonate-on:associated-node:<verb> on each resource acted on, it may
// send Impersonate-User: system:node:<that node> and nothing else (no
// groups, UID or extra); the API server then authorizes the request as
// that node (group system:nodes): the Node authorizer and the
// NodeRestriction admission plugin decide, exactly as for the node's own
// kubelet. A TokenRequest made that way is refused unless it is bound to a
// pod scheduled on that node.
const (
	// NodeNameExtra and NodeUIDExtra are the user extra keys the API server
	// sets from a pod-bound token's node claims.
	NodeNameExtra  = "authentication.kubernetes.io/node-name"
	NodeUIDExtra   = "authentication.kubernetes.io/node-uid"
	nodeUserPrefix = "system:node:"
)

// NodeUser is the user name of a node's own identity.
func NodeUser(nodeName string) string { return nodeUserPrefix + nodeName }

// NewNodeRestricted builds a Client whose pod reads, TokenRequests and
// Events are made as the node nodeName through constrained impersonation,
// while its ServiceAccount list/watch (which no node may do) and node
// patches (NodeRestriction forbids a node to change its own taints) stay
// the agent's own. cfg must authenticate with a token bound to a pod on
// nodeName; Probe checks that the API server accepts it.
func NewNodeRestricted(cfg *rest.Config, nodeName string) (*Client, error) {
	if nodeName == "" {
		return nil, errors.New("kube: node-restricted client needs a node name")
	}
	own, err := NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	ncfg := rest.CopyConfig(cfg)
	ncfg.Impersonate = rest.ImpersonationConfig{UserName: NodeUser(nodeName)}
	node, err := NewForConfig(ncfg)
	if err != nil {
		return nil, fmt.Errorf("building the node-impersonating client: %w", err)
	}
	own.node = node.rest
	own.nodeName = nodeName
	return own, nil
}

// NodeName is the node the client acts as, empty when it acts as itself.
func (c *Client) NodeName() string { return c.nodeName }

// asNode is the REST client for requests the node may make.
func (c *Client) asNode() rest.Interface {
	if c.node != nil {
		return c.node
	}
	return c.rest
}

// Identity is who the API server says the client's credentials are.
type Identity struct {
	// User is the authenticated user name, e.g.
	// system:serviceaccount:credbroker-system:credbroker-agent.
	User string
	// NodeName and NodeUID are the node the credentials are bound to
	// (from a pod-bound token), empty when they are not.
	NodeName, NodeUID string
}

// ServiceAccount splits User into a ServiceAccount's namespace and name.
func (id Identity) ServiceAccount() (namespace, name string, ok bool) {
	const prefix = "system:serviceaccount:"
	if len(id.User) <= len(prefix) || id.User[:len(prefix)] != prefix {
		return "", "", false
	}
	rest := id.User[len(prefix):]
	for i := 0; i < len(rest); i++ {
		if rest[i] == ':' {
			if i == 0 || i == len(rest)-1 {
				return "", "", false
			}
			return rest[:i], rest[i+1:], true
		}
	}
	return "", "", false
}

// WhoAmI asks the API server who the client's own credentials are (a
// SelfSubjectReview, which every authenticated user may make).
func (c *Client) WhoAmI(ctx context.Context) (Identity, error) {
	result := &authenticationv1.SelfSubjectReview{}
	err := c.authn.Post().Resource("selfsubjectreviews").Body(&authenticationv1.SelfSubjectReview{}).Do(ctx).Into(result)
	if err != nil {
		return Identity{}, fmt.Errorf("asking the API server who the agent is (SelfSubjectReview): %w", err)
	}
	ui := result.Status.UserInfo
	id := Identity{User: ui.Username}
	if v := ui.Extra[NodeNameExtra]; len(v) == 1 {
		id.NodeName = v[0]
	}
	if v := ui.Extra[NodeUIDExtra]; len(v) == 1 {
		id.NodeUID = v[0]
	}
	return id, nil
}

// Unavailable says why node-restricted requests cannot be made; Err is the
// API server's answer where there was one.
type Unavailable struct {
	Reason string
	Err    error
}

func (u *Unavailable) Error() string {
	if u.Err == nil {
		return "node restriction unavailable: " + u.Reason
	}
	return "node restriction unavailable: " + u.Reason + ": " + u.Err.Error()
}

func (u *Unavailable) Unwrap() error { return u.Err }

// probePod names a pod no one creates (a name with a dot and this prefix is
// the agent's), bound by a UID no pod has.
const (
	probePod    = "credbroker-node-restriction-probe.invalid"
	probePodUID = "00000000-0000-0000-0000-000000000000"
)

// Probe checks, with requests that read one pod at most and mint nothing,
// that c (from NewNodeRestricted) really acts as its node and that the API
// server restricts the node as it does a kubelet:
//
//  1. the agent's credentials are bound to a pod on c's node (a
//     SelfSubjectReview shows the node-name extra);
//  2. the API server accepts the impersonation and the Node authorizer
//     lets the node list its own pods (ConstrainedImpersonation on, the
//     agent's RBAC grants impersonate:associated-node and
//     impersonate-on:associated-node:list on pods, --authorization-mode
//     includes Node);
//  3. NodeRestriction admission inspects the node's TokenRequests: one for
//     the agent's own ServiceAccount, bound to a pod that does not exist
//     and with an invalid lifetime, must be answered NotFound (the
//     admission plugin looked the pod up) and never reach validation
//     (Invalid: no NodeRestriction) or be refused by authorization
//     (Forbidden: RBAC lacks impersonate-on:associated-node:create on
//     serviceaccounts/token, or no pod of the agent's ServiceAccount runs on
//     the node).
//
// It returns the agent's identity, and an *Unavailable error when node
// restriction cannot be used; other errors (the API server unreachable)
// are returned as they are.
func (c *Client) Probe(ctx context.Context) (Identity, error) {
	if c.node == nil {
		return Identity{}, errors.New("kube: Probe needs a client from NewNodeRestricted")
	}
	id, err := c.WhoAmI(ctx)
	if err != nil {
		return id, classify(err, "the API server did not answer a SelfSubjectReview")
	}
	ns, sa, ok := id.ServiceAccount()
	switch {
	case !ok:
		return id, &Unavailable{Reason: fmt.Sprintf("the agent authenticates as %q, not as a ServiceAccount", id.User)}
	case id.NodeName == "":
		return id, &Unavailable{Reason: "the agent's token is not bound to a pod on a node (use the pod's projected ServiceAccount token, as in-cluster config does)"}
	case id.NodeName != c.nodeName:
		return id, &Unavailable{Reason: fmt.Sprintf("the agent's token is bound to node %q, not to --node-name %q", id.NodeName, c.nodeName)}
	}

	_, err = c.Pods().List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", c.nodeName).String(), Limit: 1,
	})
	if err != nil {
		return id, classify(err, fmt.Sprintf("listing the node's pods as %s was refused (the API server needs ConstrainedImpersonation and the Node authorizer; the agent's RBAC needs impersonate:associated-node and impersonate-on:associated-node:list/watch on pods)", NodeUser(c.nodeName)))
	}

	one := int64(1)
	_, err = c.ServiceAccounts().CreateToken(ctx, ns, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         []string{"credbroker-node-restriction-probe.invalid"},
			ExpirationSeconds: &one,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: probePod, UID: probePodUID},
		},
	}, metav1.CreateOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return id, nil
	case err == nil, apierrors.IsInvalid(err), apierrors.IsBadRequest(err):
		return id, &Unavailable{Reason: "the API server does not run the NodeRestriction admission plugin: as the node, the agent could mint tokens for pods on other nodes", Err: err}
	case apierrors.IsForbidden(err):
		return id, &Unavailable{Reason: fmt.Sprintf("a TokenRequest as %s was refused by authorization (the agent's RBAC needs impersonate-on:associated-node:create on serviceaccounts/token, and a pod of %s/%s must run on the node)", NodeUser(c.nodeName), ns, sa), Err: err}
	default:
		return id, fmt.Errorf("probing TokenRequests as %s: %w", NodeUser(c.nodeName), err)
	}
}

// classify turns an API refusal into *Unavailable; transport errors stay
// as they are (the caller retries or fails, it does not fall back).
func classify(err error, reason string) error {
	if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) || apierrors.IsNotFound(err) || apierrors.IsBadRequest(err) || apierrors.IsMethodNotSupported(err) {
		return &Unavailable{Reason: reason, Err: err}
	}
	return err
}
