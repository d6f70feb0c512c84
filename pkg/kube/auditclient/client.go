// Package auditclient is `agent audit`'s Kubernetes client: it lists what
// the audit reads (ServiceAccounts, pods, RBAC, DaemonSets, owners'
// metadata) a page at a time. It is apart from pkg/kube because it links
// rbac/v1 and apps/v1, which the serving agent never needs.
package auditclient

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"

	"github.com/credbroker/agent/pkg/kube"
)

// The audit's own scheme: exactly the groups whose objects it reads whole.
// Jobs and ReplicaSets are only read for their owners, as metadata (the
// metadata client needs no API types; batch/v1 would also link
// scheduling/v1alpha3). The generated
// clientset (k8s.io/client-go/kubernetes) would register every API group,
// and the linker would keep all of their code in the agent binary, which
// every node runs (see pkg/kube for the same reasoning).
//
// It is built on first use: the serving agent, which links this package
// for `agent audit`, never needs it.
var codecs = sync.OnceValue(func() kube.Codecs {
	return kube.NewCodecs(corev1.AddToScheme, rbacv1.AddToScheme, appsv1.AddToScheme)
})

// DefaultPageSize is the number of objects asked for per list request.
const DefaultPageSize = 500

// Client lists what the audit reads, a page at a time (limit/continue), so
// that at most one page of each kind is in memory at once. It implements
// audit.Lister.
type Client struct {
	core, rbac, apps rest.Interface
	meta             metadata.Interface
	// PageSize is the limit of each list request; 0 means DefaultPageSize.
	PageSize int64
}

// NewClient builds a Client from cfg (copied, not changed).
func NewClient(cfg *rest.Config) (*Client, error) {
	c := &Client{}
	var err error
	if c.core, err = restClient(cfg, corev1.SchemeGroupVersion, "/api"); err != nil {
		return nil, err
	}
	if c.rbac, err = restClient(cfg, rbacv1.SchemeGroupVersion, "/apis"); err != nil {
		return nil, err
	}
	if c.apps, err = restClient(cfg, appsv1.SchemeGroupVersion, "/apis"); err != nil {
		return nil, err
	}
	mc := rest.CopyConfig(cfg)
	if mc.UserAgent == "" {
		mc.UserAgent = rest.DefaultKubernetesUserAgent() + " audit"
	}
	if c.meta, err = metadata.NewForConfig(mc); err != nil {
		return nil, fmt.Errorf("building metadata client: %w", err)
	}
	return c, nil
}

func restClient(cfg *rest.Config, gv schema.GroupVersion, apiPath string) (rest.Interface, error) {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &gv
	c.APIPath = apiPath
	c.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(codecs().Scheme, codecs().Factory).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent() + " audit"
	}
	// Protobuf pages are smaller to read and cheaper to decode than JSON.
	if c.ContentType == "" {
		c.ContentType = "application/vnd.kubernetes.protobuf"
		c.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("building %s REST client: %w", gv, err)
	}
	return rc, nil
}

// lister is what list clients offer; pages walks any of them.
type lister[L any] interface {
	List(ctx context.Context, opts metav1.ListOptions) (L, error)
}

// continuer is every list type (their embedded ListMeta).
type continuer interface{ GetContinue() string }

// pages calls fn on each page of l. A continue token that expires
// mid-walk (410 Gone on a large, busy cluster) is an error rather than the
// full unpaged list client-go's pager would fall back to: that fallback is
// exactly the unbounded memory paging exists to avoid.
func pages[L continuer](ctx context.Context, l lister[L], what string, limit int64, opts metav1.ListOptions, fn func(L) error) error {
	if limit <= 0 {
		limit = DefaultPageSize
	}
	opts.Limit = limit
	for {
		page, err := l.List(ctx, opts)
		if err != nil {
			return fmt.Errorf("listing %s: %w", what, err)
		}
		if err := fn(page); err != nil {
			return err
		}
		next := page.GetContinue()
		if next == "" {
			return nil
		}
		opts.Continue = next
	}
}

// listEach pages through resource in namespace ("" for all, and for a
// cluster-scoped resource) and calls each with every item, in order, until
// one fails. items reads a page's items: the list types share no method
// for it.
func listEach[E any, PE interface {
	*E
	kube.Object
}, L interface {
	runtime.Object
	continuer
}](ctx context.Context, c *Client, rc rest.Interface, resource, namespace string, opts metav1.ListOptions,
	newList func() L, items func(L) []E, each func(*E) error) error {
	l := kube.NewResource(rc, codecs().Parameters, resource, namespace, func() PE { return PE(new(E)) }, newList)
	return pages(ctx, l, resource, c.PageSize, opts, func(p L) error { return eachItem(items(p), each) })
}

// eachItem calls each with every item of a page, in place (an item is a
// large struct), until one fails.
func eachItem[E any](items []E, each func(*E) error) error {
	for i := range items {
		if err := each(&items[i]); err != nil {
			return err
		}
	}
	return nil
}

// ServiceAccounts implements audit.Lister.
func (c *Client) ServiceAccounts(ctx context.Context, namespace string, each func(*corev1.ServiceAccount) error) error {
	return listEach(ctx, c, c.core, "serviceaccounts", namespace, metav1.ListOptions{},
		func() *corev1.ServiceAccountList { return &corev1.ServiceAccountList{} }, func(l *corev1.ServiceAccountList) []corev1.ServiceAccount { return l.Items }, each)
}

// Pods implements audit.Lister.
func (c *Client) Pods(ctx context.Context, namespace string, each func(*corev1.Pod) error) error {
	return listEach(ctx, c, c.core, "pods", namespace, metav1.ListOptions{},
		func() *corev1.PodList { return &corev1.PodList{} }, func(l *corev1.PodList) []corev1.Pod { return l.Items }, each)
}

// DaemonSets implements audit.Lister: the DaemonSets of namespace called name
// (a field selector, so that the ClusterRole needs list and not get).
func (c *Client) DaemonSets(ctx context.Context, namespace, name string, each func(*appsv1.DaemonSet) error) error {
	return listEach(ctx, c, c.apps, "daemonsets", namespace, metav1.ListOptions{FieldSelector: "metadata.name=" + name},
		func() *appsv1.DaemonSetList { return &appsv1.DaemonSetList{} }, func(l *appsv1.DaemonSetList) []appsv1.DaemonSet { return l.Items }, each)
}

// Roles implements audit.Lister.
func (c *Client) Roles(ctx context.Context, namespace string, each func(*rbacv1.Role) error) error {
	return listEach(ctx, c, c.rbac, "roles", namespace, metav1.ListOptions{},
		func() *rbacv1.RoleList { return &rbacv1.RoleList{} }, func(l *rbacv1.RoleList) []rbacv1.Role { return l.Items }, each)
}

// RoleBindings implements audit.Lister.
func (c *Client) RoleBindings(ctx context.Context, namespace string, each func(*rbacv1.RoleBinding) error) error {
	return listEach(ctx, c, c.rbac, "rolebindings", namespace, metav1.ListOptions{},
		func() *rbacv1.RoleBindingList { return &rbacv1.RoleBindingList{} }, func(l *rbacv1.RoleBindingList) []rbacv1.RoleBinding { return l.Items }, each)
}

// ClusterRoles implements audit.Lister.
func (c *Client) ClusterRoles(ctx context.Context, each func(*rbacv1.ClusterRole) error) error {
	return listEach(ctx, c, c.rbac, "clusterroles", "", metav1.ListOptions{},
		func() *rbacv1.ClusterRoleList { return &rbacv1.ClusterRoleList{} }, func(l *rbacv1.ClusterRoleList) []rbacv1.ClusterRole { return l.Items }, each)
}

// ClusterRoleBindings implements audit.Lister.
func (c *Client) ClusterRoleBindings(ctx context.Context, each func(*rbacv1.ClusterRoleBinding) error) error {
	return listEach(ctx, c, c.rbac, "clusterrolebindings", "", metav1.ListOptions{},
		func() *rbacv1.ClusterRoleBindingList { return &rbacv1.ClusterRoleBindingList{} }, func(l *rbacv1.ClusterRoleBindingList) []rbacv1.ClusterRoleBinding { return l.Items }, each)
}

// Metadata implements audit.Lister: the metadata of each object of resource.
func (c *Client) Metadata(ctx context.Context, resource schema.GroupVersionResource, namespace string, each func(*metav1.PartialObjectMetadata) error) error {
	var l lister[*metav1.PartialObjectMetadataList] = c.meta.Resource(resource)
	if namespace != "" {
		l = c.meta.Resource(resource).Namespace(namespace)
	}
	return pages(ctx, l, resource.Resource, c.PageSize, metav1.ListOptions{}, func(p *metav1.PartialObjectMetadataList) error {
		return eachItem(p.Items, each)
	})
}

// ServerVersion returns the API server's gitVersion ("v1.37.2"), which
// every identity may read (system:public-info-viewer).
func (c *Client) ServerVersion(ctx context.Context) (string, error) {
	var v struct {
		GitVersion string `json:"gitVersion"`
	}
	body, err := c.core.Get().AbsPath("/version").Do(ctx).Raw()
	if err != nil {
		return "", fmt.Errorf("reading the API server's version: %w", err)
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return "", fmt.Errorf("decoding the API server's version: %w", err)
	}
	return v.GitVersion, nil
}
