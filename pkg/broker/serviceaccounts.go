package broker

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// serviceAccounts answers "which role does this ServiceAccount name?" from
// a watch of every ServiceAccount's identity annotation.
//
// A watch rather than a GET per account (docs/upstream-cost.md has the
// figures): a GET per account and TTL is thousands of requests per second
// across a large cluster, and an API-server outage longer than the TTL
// would refuse every cached credential. The watch costs one LIST at start
// and a trickle of events (ServiceAccounts rarely change), sees an
// annotation change at once, and keeps the last known state through an
// outage, which is what invariant 6 asks for: while the API server is
// unreachable nobody can change the annotation through it, and what is
// served is bounded by the lifetime of credentials already issued.
//
// The transform keeps only what the broker reads, so a node holds a few
// hundred bytes per ServiceAccount of the cluster.
type serviceAccounts struct {
	informer   cache.SharedIndexInformer
	reg        cache.ResourceEventHandlerRegistration
	annotation string
	started    atomic.Bool

	mu sync.RWMutex
	// roles is keyed by a struct, not the store's "namespace/name" string,
	// so that a lookup on the cache-hit path allocates nothing. Guarded by mu.
	roles map[saKey]string
}

type saKey struct{ namespace, name string }

func newServiceAccounts(client kubernetes.Interface, annotation string) (*serviceAccounts, error) {
	s := &serviceAccounts{annotation: annotation, roles: make(map[saKey]string)}
	s.informer = coreinformers.NewServiceAccountInformer(client, metav1.NamespaceAll, 0, cache.Indexers{})
	if err := s.informer.SetTransform(s.strip); err != nil {
		return nil, fmt.Errorf("setting ServiceAccount transform: %w", err)
	}
	reg, err := s.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    s.set,
		UpdateFunc: func(_, obj any) { s.set(obj) },
		DeleteFunc: s.remove,
	})
	if err != nil {
		return nil, fmt.Errorf("registering ServiceAccount event handler: %w", err)
	}
	s.reg = reg
	return s, nil
}

// run runs the informer until ctx is done. Only the first call runs it.
func (s *serviceAccounts) run(ctx context.Context) {
	if s.started.CompareAndSwap(false, true) {
		s.informer.RunWithContext(ctx)
	}
}

// hasSynced reports whether the first list has been applied.
func (s *serviceAccounts) hasSynced() bool { return s.reg.HasSynced() }

// strip keeps the identity of a ServiceAccount and its identity
// annotation; everything else (managed fields, labels, secrets) is dropped
// before it reaches the store.
func (s *serviceAccounts) strip(obj any) (any, error) {
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok {
		return obj, nil // a tombstone: its key is what counts
	}
	out := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Namespace: sa.Namespace, Name: sa.Name, UID: sa.UID, ResourceVersion: sa.ResourceVersion,
	}}
	if v, ok := sa.Annotations[s.annotation]; ok {
		out.Annotations = map[string]string{s.annotation: v}
	}
	return out, nil
}

func (s *serviceAccounts) set(obj any) {
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok {
		return
	}
	role := strings.TrimSpace(sa.Annotations[s.annotation])
	s.mu.Lock()
	s.roles[saKey{sa.Namespace, sa.Name}] = role
	s.mu.Unlock()
}

func (s *serviceAccounts) remove(obj any) {
	var key saKey
	switch o := obj.(type) {
	case *corev1.ServiceAccount:
		key = saKey{o.Namespace, o.Name}
	case cache.DeletedFinalStateUnknown:
		ns, name, err := cache.SplitMetaNamespaceKey(o.Key)
		if err != nil {
			return
		}
		key = saKey{ns, name}
	default:
		return
	}
	s.mu.Lock()
	delete(s.roles, key)
	s.mu.Unlock()
}

// Role returns the role the ServiceAccount names. A ServiceAccount that has
// no annotation is refused; one that does not exist (yet) is a retryable
// failure, not a refusal: a pod cannot be created without its
// ServiceAccount, so a missing one is being replaced (a GitOps apply) or
// deleted, and SDKs treat a 403 as final.
func (s *serviceAccounts) Role(namespace, name string) (string, error) {
	s.mu.RLock()
	role, ok := s.roles[saKey{namespace, name}]
	s.mu.RUnlock()
	switch {
	case ok && role != "":
		return role, nil
	case ok:
		return "", &Refusal{Code: CodeNoRole,
			Message: fmt.Sprintf("ServiceAccount %s/%s has no %s annotation naming the role to assume", namespace, name, s.annotation)}
	case !s.hasSynced():
		return "", errServiceAccountsNotSynced
	default:
		return "", fmt.Errorf("ServiceAccount %s/%s: %w", namespace, name, errServiceAccountMissing)
	}
}

// Len returns the number of ServiceAccounts known.
func (s *serviceAccounts) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.roles)
}
