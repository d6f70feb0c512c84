package webhook

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// ServiceAccountClient lists, watches and reads ServiceAccounts; pkg/kube's Client
// is one.
type ServiceAccountClient interface {
	ListServiceAccounts(ctx context.Context, opts metav1.ListOptions) (*corev1.ServiceAccountList, error)
	WatchServiceAccounts(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	GetServiceAccount(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error)
}

// ServiceAccounts answers lookups from a watch of every ServiceAccount,
// kept down to name, namespace and the clouds' annotations, and falls back
// to a live GET on a miss: GitOps tools apply a ServiceAccount and its
// Deployment together, and the pod may reach the webhook before the watch
// event does.
type ServiceAccounts struct {
	client      ServiceAccountClient
	informer    cache.SharedIndexInformer
	annotations []string
	metrics     *Metrics
}

// NewServiceAccounts builds the lookup; annotations are the ones kept (the
// clouds' identity annotations). Run starts the watch.
func NewServiceAccounts(client ServiceAccountClient, annotations []string, m *Metrics) (*ServiceAccounts, error) {
	if m == nil {
		m = NewMetrics(nil)
	}
	s := &ServiceAccounts{client: client, annotations: annotations, metrics: m}
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return client.ListServiceAccounts(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return client.WatchServiceAccounts(ctx, o)
		},
	}
	// The wrapper tells the reflector whether client can stream the
	// initial list (an API server can; a test's fake says it cannot).
	s.informer = cache.NewSharedIndexInformerWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, client), &corev1.ServiceAccount{}, cache.SharedIndexInformerOptions{})
	if err := s.informer.SetTransform(s.strip); err != nil {
		return nil, fmt.Errorf("setting the ServiceAccount transform: %w", err)
	}
	return s, nil
}

// strip keeps what a lookup reads: secrets, image pull secrets and every
// other annotation would only cost memory.
func (s *ServiceAccounts) strip(obj any) (any, error) {
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok {
		return obj, nil
	}
	out := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name: sa.Name, Namespace: sa.Namespace, UID: sa.UID, ResourceVersion: sa.ResourceVersion,
	}}
	for _, a := range s.annotations {
		if v, ok := sa.Annotations[a]; ok {
			if out.Annotations == nil {
				out.Annotations = make(map[string]string, len(s.annotations))
			}
			out.Annotations[a] = v
		}
	}
	return out, nil
}

// Run watches until ctx ends.
func (s *ServiceAccounts) Run(ctx context.Context) error {
	s.informer.RunWithContext(ctx)
	return nil
}

// HasSynced reports whether the first list is in.
func (s *ServiceAccounts) HasSynced() bool { return s.informer.HasSynced() }

// WaitForSync waits for the first list, or until ctx ends or timeout.
func (s *ServiceAccounts) WaitForSync(ctx context.Context, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return cache.WaitForCacheSync(ctx.Done(), s.informer.HasSynced)
}

// Annotations returns the kept annotations of namespace/name: from the
// watch, else from one GET bounded by ctx (ErrNoServiceAccount when the
// API server has none either).
func (s *ServiceAccounts) Annotations(ctx context.Context, namespace, name string) (map[string]string, error) {
	obj, ok, err := s.informer.GetStore().GetByKey(namespace + "/" + name)
	if err == nil && ok {
		s.metrics.lookup("cache")
		return obj.(*corev1.ServiceAccount).Annotations, nil
	}
	sa, err := s.client.GetServiceAccount(ctx, namespace, name)
	switch {
	case apierrors.IsNotFound(err):
		s.metrics.lookup("not_found")
		return nil, ErrNoServiceAccount
	case err != nil:
		s.metrics.lookup("error")
		return nil, fmt.Errorf("reading ServiceAccount %s/%s: %w", namespace, name, err)
	}
	s.metrics.lookup("api")
	kept, _ := s.strip(sa)
	return kept.(*corev1.ServiceAccount).Annotations, nil
}
