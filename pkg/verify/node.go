package verify

import (
	"errors"
	"slices"
)

// ErrNode: the token is valid, but was not minted for a pod bound to an
// accepted node (Config.Nodes, Identity.RequireNode).
var ErrNode = errors.New("verify: token not minted for an accepted node")

// RequireNode checks that the token was minted for a pod bound to node
// name (the API server puts the pod's node in the kubernetes.io claim when
// it mints a pod-bound token, KEP-4193) and, when uid is not empty, that
// the node had that UID: a node deleted and registered again under the same
// name gets a new UID. It returns an *Error of kind ErrNode otherwise, for
// example to accept a caller only from the receiver's own node:
//
//	id := verify.FromContext(r.Context())
//	if err := id.RequireNode(os.Getenv("NODE_NAME"), ""); err != nil { ... 403 ... }
func (id *Identity) RequireNode(name, uid string) error {
	switch {
	case id.NodeName == "":
		return newError(ErrNode, "the token carries no node claim (not pod-bound, or minted by an API server before 1.32)", nil)
	case id.NodeName != name:
		return newError(ErrNode, "node "+quote(id.NodeName)+", want "+quote(name), nil)
	case uid != "" && id.NodeUID != uid:
		return newError(ErrNode, "node "+quote(name)+" with UID "+quote(id.NodeUID)+", want "+quote(uid), nil)
	}
	return nil
}

// checkNode applies Config.Nodes.
func (v *Verifier) checkNode(c *claims) error {
	if len(v.s.Nodes) == 0 {
		return nil
	}
	var name string
	if c.K8s != nil && c.K8s.Node != nil {
		name = c.K8s.Node.Name
	}
	if name == "" {
		return newError(ErrNode, "the token carries no node claim", nil)
	}
	if !slices.Contains(v.s.Nodes, name) {
		return newError(ErrNode, "node "+quote(name), nil)
	}
	return nil
}
