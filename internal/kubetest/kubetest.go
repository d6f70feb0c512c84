// Package kubetest adapts client-go's clientsets (the fake one in unit
// tests, a real one in integration tests) to the narrow clients the
// agent's packages consume. Only tests import it: the agent itself uses
// pkg/kube, which does not link every API group.
package kubetest

import (
	"context"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/watchlist"
)

// Pods is the pod client of every namespace of c.
func Pods(c kubernetes.Interface) PodClient { return PodClient{c} }

// ServiceAccounts is the ServiceAccount client of every namespace of c.
func ServiceAccounts(c kubernetes.Interface) ServiceAccountClient { return ServiceAccountClient{c} }

// Nodes is the node client of c.
func Nodes(c kubernetes.Interface) NodeClient { return NodeClient{c} }

// PodClient lists and watches pods.
type PodClient struct{ c kubernetes.Interface }

func (p PodClient) List(ctx context.Context, o metav1.ListOptions) (*corev1.PodList, error) {
	return p.c.CoreV1().Pods(metav1.NamespaceAll).List(ctx, o)
}

func (p PodClient) Watch(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
	return p.c.CoreV1().Pods(metav1.NamespaceAll).Watch(ctx, o)
}

// IsWatchListSemanticsUnSupported passes on the fake clientset's answer,
// which tells reflectors to list instead of streaming.
func (p PodClient) IsWatchListSemanticsUnSupported() bool {
	return watchlist.DoesClientNotSupportWatchListSemantics(p.c)
}

// ServiceAccountClient lists and watches ServiceAccounts and asks for
// their tokens.
type ServiceAccountClient struct{ c kubernetes.Interface }

func (s ServiceAccountClient) List(ctx context.Context, o metav1.ListOptions) (*corev1.ServiceAccountList, error) {
	return s.c.CoreV1().ServiceAccounts(metav1.NamespaceAll).List(ctx, o)
}

func (s ServiceAccountClient) Watch(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
	return s.c.CoreV1().ServiceAccounts(metav1.NamespaceAll).Watch(ctx, o)
}

func (s ServiceAccountClient) CreateToken(ctx context.Context, namespace, name string, req *authenticationv1.TokenRequest, o metav1.CreateOptions) (*authenticationv1.TokenRequest, error) {
	return s.c.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, req, o)
}

// IsWatchListSemanticsUnSupported: see PodClient's.
func (s ServiceAccountClient) IsWatchListSemanticsUnSupported() bool {
	return watchlist.DoesClientNotSupportWatchListSemantics(s.c)
}

// NodeClient reads and patches nodes.
type NodeClient struct{ c kubernetes.Interface }

func (n NodeClient) Get(ctx context.Context, name string, o metav1.GetOptions) (*corev1.Node, error) {
	return n.c.CoreV1().Nodes().Get(ctx, name, o)
}

func (n NodeClient) Patch(ctx context.Context, name string, pt types.PatchType, data []byte, o metav1.PatchOptions, subresources ...string) (*corev1.Node, error) {
	return n.c.CoreV1().Nodes().Patch(ctx, name, pt, data, o, subresources...)
}

// Clientset is the clientset s wraps, for tests that build a second
// client (a resolver) over the same fake.
func (s ServiceAccountClient) Clientset() kubernetes.Interface { return s.c }
