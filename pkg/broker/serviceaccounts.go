package broker

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
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
// client-go's Reflector does the list, watch, relist and backoff; its store
// is this type, which keeps only (namespace, name) -> identities. An informer
// would keep a copy of every object besides, about 700 bytes per
// ServiceAccount of the cluster even stripped; this keeps about a quarter
// of that.
type serviceAccounts struct {
	reflector *cache.Reflector
	// annotations name each cloud's identity, in the order of
	// Config.Clouds.
	annotations []string
	started     atomic.Bool
	synced      atomic.Bool

	mu sync.RWMutex
	// roles holds each account's annotation values, one field per entry of
	// annotations, each on its own: the API server accepts any string as
	// a value, NUL included, so no separator can keep one cloud's value
	// from spilling into another's field. nil for an account with none of
	// the annotations. Keyed by a struct, not a "namespace/name" string,
	// so that a lookup on the cache-hit path allocates nothing. Guarded by
	// mu; a stored slice is never modified.
	roles map[saKey][]string
	// namespaces interns namespace names: thousands of accounts share a
	// few hundred. Guarded by mu.
	namespaces map[string]string
}

type saKey struct{ namespace, name string }

// ServiceAccountClient watches the ServiceAccounts of every namespace and
// asks for pod-bound tokens. pkg/kube's Client.ServiceAccounts() is one.
type ServiceAccountClient interface {
	List(ctx context.Context, opts metav1.ListOptions) (*corev1.ServiceAccountList, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	CreateToken(ctx context.Context, namespace, name string, req *authenticationv1.TokenRequest, opts metav1.CreateOptions) (*authenticationv1.TokenRequest, error)
}

func newServiceAccounts(sas ServiceAccountClient, annotations []string) (*serviceAccounts, error) {
	s := &serviceAccounts{annotations: annotations, roles: make(map[saKey][]string), namespaces: make(map[string]string)}
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return sas.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return sas.Watch(ctx, o)
		},
	}
	// The wrapper tells the reflector whether the client can stream the
	// initial list (a real API server can; client-go's fake cannot, and
	// the reflector then lists instead), as informers do.
	s.reflector = cache.NewReflectorWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, sas),
		&corev1.ServiceAccount{}, s, cache.ReflectorOptions{Name: "credbroker-serviceaccounts"})
	return s, nil
}

// run runs the reflector until ctx is done. Only the first call runs it.
func (s *serviceAccounts) run(ctx context.Context) {
	if s.started.CompareAndSwap(false, true) {
		s.reflector.RunWithContext(ctx)
	}
}

// hasSynced reports whether the first list has been applied.
func (s *serviceAccounts) hasSynced() bool { return s.synced.Load() }

// The methods below make serviceAccounts the reflector's store
// (cache.ReflectorStore). They run on the reflector's goroutine.

func (s *serviceAccounts) Add(obj any) error { return s.Update(obj) }
func (s *serviceAccounts) Resync() error     { return nil }
func (s *serviceAccounts) Update(obj any) error {
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok {
		return fmt.Errorf("ServiceAccount watch delivered a %T", obj)
	}
	s.mu.Lock()
	s.roles[s.keyLocked(sa)] = s.roleOf(sa)
	s.mu.Unlock()
	return nil
}

func (s *serviceAccounts) Delete(obj any) error {
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok {
		return fmt.Errorf("ServiceAccount watch delivered a %T", obj)
	}
	s.mu.Lock()
	delete(s.roles, saKey{sa.Namespace, sa.Name})
	s.mu.Unlock()
	return nil
}

// Replace installs a complete list (the first one, or a relist after the
// watch could not resume): accounts deleted meanwhile disappear with it.
func (s *serviceAccounts) Replace(list []any, _ string) error {
	roles := make(map[saKey][]string, len(list))
	s.mu.Lock()
	defer s.mu.Unlock()
	s.namespaces = make(map[string]string)
	for _, obj := range list {
		sa, ok := obj.(*corev1.ServiceAccount)
		if !ok {
			return fmt.Errorf("ServiceAccount list delivered a %T", obj)
		}
		roles[s.keyLocked(sa)] = s.roleOf(sa)
	}
	s.roles = roles
	s.synced.Store(true)
	return nil
}

// roleOf returns the values of the account's annotations, one per entry of
// s.annotations, trimmed, or nil when it has none of them.
func (s *serviceAccounts) roleOf(sa *corev1.ServiceAccount) []string {
	var fields []string
	for i, a := range s.annotations {
		v := strings.TrimSpace(sa.Annotations[a])
		if v == "" {
			continue
		}
		if fields == nil {
			fields = make([]string, len(s.annotations))
		}
		// A copy, so that the decoded object (managed fields, labels, the
		// last-applied configuration) is not kept alive by a substring.
		fields[i] = strings.Clone(v)
	}
	return fields
}

// keyLocked returns the key for sa with an interned namespace. s.mu must
// be held.
func (s *serviceAccounts) keyLocked(sa *corev1.ServiceAccount) saKey {
	ns, ok := s.namespaces[sa.Namespace]
	if !ok {
		ns = strings.Clone(sa.Namespace)
		s.namespaces[ns] = ns
	}
	return saKey{ns, strings.Clone(sa.Name)}
}

// Identity returns the identity the ServiceAccount names for the cloud at
// index i of the annotations ("" when it has no such annotation). One that
// does not exist (yet) is a retryable failure, not a refusal: a pod cannot
// be created without its ServiceAccount, so a missing one is being
// replaced (a GitOps apply) or deleted, and SDKs treat a 403 as final.
func (s *serviceAccounts) Identity(namespace, name string, i int) (string, error) {
	fields, err := s.fields(namespace, name)
	if err != nil || i >= len(fields) {
		return "", err
	}
	return fields[i], nil
}

// fields returns the account's annotation values (see roles), read at
// once, so that an identity and its tenant come from one version of the
// account. The caller must not modify them.
func (s *serviceAccounts) fields(namespace, name string) ([]string, error) {
	s.mu.RLock()
	fields, ok := s.roles[saKey{namespace, name}]
	s.mu.RUnlock()
	switch {
	case ok:
		return fields, nil
	case !s.hasSynced():
		return nil, errServiceAccountsNotSynced
	default:
		return nil, fmt.Errorf("ServiceAccount %s/%s: %w", namespace, name, errServiceAccountMissing)
	}
}

// Len returns the number of ServiceAccounts known.
func (s *serviceAccounts) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.roles)
}
