package kube

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// Resource is one resource's typed client (of one namespace, or of all
// with ""), with the methods of client-go's generated clients that the
// agent calls, making the same requests (protobuf preferred).
//
// It is not client-go's gentype: gentype's package also holds the fake
// clients, which link k8s.io/client-go/testing and through it managed
// fields, structured-merge-diff and kube-openapi, about 0.75 MiB of
// resident memory on every node for code the agent never runs.
type Resource[T Object, L runtime.Object] struct {
	rest      rest.Interface
	params    runtime.ParameterCodec
	resource  string
	namespace string
	newObject func() T
	newList   func() L
}

// Object is an API object: the objects a Resource reads and writes.
type Object interface {
	runtime.Object
	metav1.Object
}

// NewResource builds a Resource of resource in namespace ("" for every
// namespace, and for a cluster-scoped resource) over rc, encoding options
// with params.
func NewResource[T Object, L runtime.Object](rc rest.Interface, params runtime.ParameterCodec, resource, namespace string, newObject func() T, newList func() L) *Resource[T, L] {
	return &Resource[T, L]{rest: rc, params: params, resource: resource, namespace: namespace, newObject: newObject, newList: newList}
}

func (r *Resource[T, L]) request(req *rest.Request) *rest.Request {
	return req.UseProtobufAsDefault().NamespaceIfScoped(r.namespace, r.namespace != "").Resource(r.resource)
}

// timeout is the request's client-side timeout for list and watch
// options, as the generated clients set it.
func timeout(opts metav1.ListOptions) time.Duration {
	if opts.TimeoutSeconds == nil {
		return 0
	}
	return time.Duration(*opts.TimeoutSeconds) * time.Second
}

// Get reads the object called name.
func (r *Resource[T, L]) Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error) {
	result := r.newObject()
	err := r.request(r.rest.Get()).Name(name).VersionedParams(&opts, r.params).Do(ctx).Into(result)
	return result, err
}

// List lists the objects opts selects.
func (r *Resource[T, L]) List(ctx context.Context, opts metav1.ListOptions) (L, error) {
	result := r.newList()
	err := r.request(r.rest.Get()).VersionedParams(&opts, r.params).Timeout(timeout(opts)).Do(ctx).Into(result)
	return result, err
}

// Watch watches the objects opts selects.
func (r *Resource[T, L]) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return r.request(r.rest.Get()).VersionedParams(&opts, r.params).Timeout(timeout(opts)).Watch(ctx)
}

// Create creates obj.
func (r *Resource[T, L]) Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error) {
	result := r.newObject()
	err := r.request(r.rest.Post()).VersionedParams(&opts, r.params).Body(obj).Do(ctx).Into(result)
	return result, err
}

// Update replaces obj.
func (r *Resource[T, L]) Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error) {
	result := r.newObject()
	err := r.request(r.rest.Put()).Name(obj.GetName()).VersionedParams(&opts, r.params).Body(obj).Do(ctx).Into(result)
	return result, err
}

// Patch applies data, of type pt, to the object called name (or to its
// subresource).
func (r *Resource[T, L]) Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (T, error) {
	result := r.newObject()
	err := r.request(r.rest.Patch(pt)).Name(name).SubResource(subresources...).VersionedParams(&opts, r.params).Body(data).Do(ctx).Into(result)
	return result, err
}
