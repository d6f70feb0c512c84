package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"

	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

// tokenSource asks the API server for a ServiceAccount token bound to one
// pod. Binding matters: the token dies with the pod, and the API server
// refuses to mint it for a pod UID that no longer exists, so a token can
// never outlive the identity it stands for.
type tokenSource struct {
	client     ServiceAccountClient
	expiration time.Duration
	clock      clock.WithTicker
	metrics    *metrics
}

// graphLagWaits are the pauses before asking again when the node
// authorizer does not yet link the pod to the agent's node. It decides a
// node's TokenRequest from a graph fed by the API server's own watch of
// pods, which can trail the agent's by a moment: a hostNetwork pod starts
// and calls within it (kubelets meet the same refusal, "no relationship
// found between node", in bursts of new pods). Their sum, 750 ms, keeps a
// first request inside the 1 s the AWS CLI and Azure SDK give it.
var graphLagWaits = []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}

// nodeGraphLags reports whether err is the node authorizer's refusal for a
// pod its graph does not (yet) place on the node.
func nodeGraphLags(err error) bool {
	return apierrors.IsForbidden(err) && strings.Contains(err.Error(), "no relationship found between node")
}

// token asks for a token of the pod for audience, living expiration (zero:
// the source's default), and returns it with its expiry.
func (t *tokenSource) token(ctx context.Context, pod podresolve.Pod, audience string, expiration time.Duration) (exchange.Secret, time.Time, error) {
	if expiration == 0 {
		expiration = t.expiration
	}
	seconds := int64(expiration / time.Second)
	req := &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         []string{audience},
			ExpirationSeconds: &seconds,
			BoundObjectRef: &authenticationv1.BoundObjectReference{
				Kind:       "Pod",
				APIVersion: "v1",
				Name:       pod.Name,
				UID:        pod.UID,
			},
		},
	}
	resp, err := t.create(ctx, pod, req)
	switch {
	case err == nil && resp.Status.Token == "":
		return "", time.Time{}, &errKubeAPI{err: fmt.Errorf("TokenRequest for %s/%s returned an empty token", pod.Namespace, pod.ServiceAccount)}
	case err == nil:
		return exchange.Secret(resp.Status.Token), resp.Status.ExpirationTimestamp.Time, nil
	case apierrors.IsNotFound(err) && notFoundKind(err) == "serviceaccounts":
		return "", time.Time{}, fmt.Errorf("TokenRequest for pod %s/%s: ServiceAccount %s: %w", pod.Namespace, pod.Name, pod.ServiceAccount, errServiceAccountMissing)
	case apierrors.IsNotFound(err), apierrors.IsConflict(err):
		// The API server read the pod from storage: it no longer exists
		// under this UID (NotFound), or its name belongs to a new pod
		// (Conflict). This is authoritative, whatever the informer shows.
		return "", time.Time{}, fmt.Errorf("TokenRequest for pod %s/%s: %w", pod.Namespace, pod.Name, errPodGone)
	case nodeGraphLags(err):
		// Past graphLagWaits the graph may still catch up (the API server
		// is slow) or never will (the pod is not this node's); the broker
		// retries a refusal for a while before it is final.
		return "", time.Time{}, fmt.Errorf("TokenRequest for pod %s/%s: %w: %w", pod.Namespace, pod.Name, &Refusal{Code: CodeTokenRequestRefused,
			Message: fmt.Sprintf("the API server does not link this pod to the agent's node yet (its node authorizer trails new pods), so it refused a token for ServiceAccount %s/%s bound to it", pod.Namespace, pod.ServiceAccount)}, err)
	case apierrors.IsForbidden(err):
		// Admission (the agent's own policy, or another one) or RBAC: the
		// same request will be refused again until an operator acts.
		return "", time.Time{}, fmt.Errorf("TokenRequest for pod %s/%s: %w: %w", pod.Namespace, pod.Name, &Refusal{Code: CodeTokenRequestRefused,
			Message: fmt.Sprintf("the API server refused the agent a token for ServiceAccount %s/%s bound to this pod (forbidden by RBAC or an admission policy); the agent's logs have the detail", pod.Namespace, pod.ServiceAccount)}, err)
	case apierrors.IsInvalid(err), apierrors.IsBadRequest(err):
		return "", time.Time{}, fmt.Errorf("TokenRequest for pod %s/%s: %w: %w", pod.Namespace, pod.Name, &Refusal{Code: CodeTokenRequestRefused,
			Message: fmt.Sprintf("the API server rejected the agent's TokenRequest for ServiceAccount %s/%s as invalid (check --audience and --token-expiration against the API server's limits); the agent's logs have the detail", pod.Namespace, pod.ServiceAccount)}, err)
	default:
		return "", time.Time{}, &errKubeAPI{throttled: apierrors.IsTooManyRequests(err),
			err: fmt.Errorf("TokenRequest for ServiceAccount %s/%s: %w", pod.Namespace, pod.ServiceAccount, err)}
	}
}

// create sends the TokenRequest, again after each of graphLagWaits while
// the node authorizer has not caught up with the pod.
func (t *tokenSource) create(ctx context.Context, pod podresolve.Pod, req *authenticationv1.TokenRequest) (*authenticationv1.TokenRequest, error) {
	for attempt := 0; ; attempt++ {
		start := t.clock.Now()
		resp, err := t.client.CreateToken(ctx, pod.Namespace, pod.ServiceAccount, req, metav1.CreateOptions{})
		t.metrics.observeUpstream(upstreamTokenRequest, err, t.clock.Since(start))
		if !nodeGraphLags(err) || attempt == len(graphLagWaits) {
			return resp, err
		}
		timer := t.clock.NewTimer(graphLagWaits[attempt])
		select {
		case <-timer.C():
		case <-ctx.Done():
			timer.Stop()
			return resp, err
		}
	}
}

// notFoundKind returns which resource a NotFound is about: a TokenRequest
// answers NotFound for its ServiceAccount ("serviceaccounts") or for the
// pod it is to be bound to ("pods").
func notFoundKind(err error) string {
	var status apierrors.APIStatus
	if errors.As(err, &status) && status.Status().Details != nil {
		return status.Status().Details.Kind
	}
	return ""
}
