// Package kube is the agent's Kubernetes client: exactly the resources the
// agent reads and writes, and nothing more.
//
// client-go's generated clientset (k8s.io/client-go/kubernetes) registers
// every API group in its scheme, and the linker then keeps every group's
// generated code: on a node that is about 10 MiB of resident memory for
// types the agent never sees. This package makes the same requests as the
// generated typed clients (see Resource) over a scheme with only core/v1
// and authentication/v1.
package kube

import (
	"context"
	"fmt"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

var codecs = NewCodecs(corev1.AddToScheme, authenticationv1.AddToScheme)

// Codecs is a scheme of exactly the API groups a client reads, with what
// typed clients need over it. A client for more groups (the audit's)
// builds its own, so that the serving agent links only its two.
type Codecs struct {
	Scheme     *runtime.Scheme
	Factory    serializer.CodecFactory
	Parameters runtime.ParameterCodec
}

// NewCodecs registers the groups add adds; it panics if one fails, as
// registering generated types only does on a programming error.
func NewCodecs(add ...func(*runtime.Scheme) error) Codecs {
	s := runtime.NewScheme()
	for _, a := range add {
		utilruntime.Must(a(s))
	}
	return Codecs{Scheme: s, Factory: serializer.NewCodecFactory(s), Parameters: runtime.NewParameterCodec(s)}
}

// Client reaches the core/v1 resources the agent uses. Its methods return
// typed clients with the same List, Watch, Get and Patch as the generated
// clientset's.
type Client struct {
	rest  rest.Interface // core/v1, as the agent itself
	authn rest.Interface // authentication.k8s.io/v1, as the agent itself
	// node, when set (NewNodeRestricted), is core/v1 as the agent's node:
	// pod reads, TokenRequests and Events go through it.
	node     rest.Interface
	nodeName string
}

// NewForConfig builds a Client. cfg is copied; its content type settings
// (protobuf or JSON) are honoured.
func NewForConfig(cfg *rest.Config) (*Client, error) {
	c := rest.CopyConfig(cfg)
	gv := corev1.SchemeGroupVersion
	c.GroupVersion = &gv
	c.APIPath = "/api"
	c.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(codecs.Scheme, codecs.Factory).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("building core/v1 REST client: %w", err)
	}
	a := rest.CopyConfig(c)
	agv := authenticationv1.SchemeGroupVersion
	a.GroupVersion = &agv
	a.APIPath = "/apis"
	ac, err := rest.RESTClientFor(a)
	if err != nil {
		return nil, fmt.Errorf("building authentication/v1 REST client: %w", err)
	}
	return &Client{rest: rc, authn: ac}, nil
}

// Pods lists and watches the pods of every namespace; as the node, only
// with the field selector spec.nodeName=<node>.
func (c *Client) Pods() *Resource[*corev1.Pod, *corev1.PodList] {
	return NewResource(c.asNode(), codecs.Parameters, "pods", metav1.NamespaceAll,
		func() *corev1.Pod { return &corev1.Pod{} },
		func() *corev1.PodList { return &corev1.PodList{} })
}

// Nodes reads and patches nodes.
func (c *Client) Nodes() *Resource[*corev1.Node, *corev1.NodeList] {
	return NewResource(c.rest, codecs.Parameters, "nodes", "",
		func() *corev1.Node { return &corev1.Node{} },
		func() *corev1.NodeList { return &corev1.NodeList{} })
}

// ServiceAccounts lists and watches the ServiceAccounts of every namespace
// and asks for their tokens (as the node, when node-restricted).
func (c *Client) ServiceAccounts() *ServiceAccounts {
	return &ServiceAccounts{Resource: c.serviceAccounts(metav1.NamespaceAll), rest: c.asNode()}
}

func (c *Client) serviceAccounts(namespace string) *Resource[*corev1.ServiceAccount, *corev1.ServiceAccountList] {
	return NewResource(c.rest, codecs.Parameters, "serviceaccounts", namespace,
		func() *corev1.ServiceAccount { return &corev1.ServiceAccount{} },
		func() *corev1.ServiceAccountList { return &corev1.ServiceAccountList{} })
}

// ServiceAccounts is the ServiceAccount client of every namespace, with
// the token subresource.
type ServiceAccounts struct {
	*Resource[*corev1.ServiceAccount, *corev1.ServiceAccountList]
	rest rest.Interface // for TokenRequests
}

// CreateToken posts a TokenRequest for the ServiceAccount namespace/name,
// as the generated clientset's CreateToken does.
func (s *ServiceAccounts) CreateToken(ctx context.Context, namespace, name string, req *authenticationv1.TokenRequest, opts metav1.CreateOptions) (*authenticationv1.TokenRequest, error) {
	result := &authenticationv1.TokenRequest{}
	err := s.rest.Post().
		UseProtobufAsDefault().
		Namespace(namespace).
		Resource("serviceaccounts").
		Name(name).
		SubResource("token").
		VersionedParams(&opts, codecs.Parameters).
		Body(req).
		Do(ctx).
		Into(result)
	return result, err
}

// Scheme is the scheme the client decodes with (core/v1 and
// authentication/v1), for client-go's event recorder.
func Scheme() *runtime.Scheme { return codecs.Scheme }

// EventSink writes Events for client-go's event broadcaster
// (k8s.io/client-go/tools/record), in the namespace of each Event (as the
// node, when node-restricted: the Node authorizer lets nodes write Events).
func (c *Client) EventSink() *EventSink { return &EventSink{rest: c.asNode()} }

// EventSink is a record.EventSink over the core/v1 events API.
type EventSink struct{ rest rest.Interface }

func (s *EventSink) events(namespace string) *Resource[*corev1.Event, *corev1.EventList] {
	return NewResource(s.rest, codecs.Parameters, "events", namespace,
		func() *corev1.Event { return &corev1.Event{} }, func() *corev1.EventList { return &corev1.EventList{} })
}

// Create creates ev.
func (s *EventSink) Create(ev *corev1.Event) (*corev1.Event, error) {
	return s.events(ev.Namespace).Create(context.Background(), ev, metav1.CreateOptions{})
}

// Update replaces ev.
func (s *EventSink) Update(ev *corev1.Event) (*corev1.Event, error) {
	return s.events(ev.Namespace).Update(context.Background(), ev, metav1.UpdateOptions{})
}

// Patch applies the broadcaster's strategic merge patch (a count bump) to
// ev.
func (s *EventSink) Patch(ev *corev1.Event, data []byte) (*corev1.Event, error) {
	return s.events(ev.Namespace).Patch(context.Background(), ev.Name, types.StrategicMergePatchType, data, metav1.PatchOptions{})
}

// ListServiceAccounts, WatchServiceAccounts and GetServiceAccount serve the
// admission webhook's ServiceAccount cache (its read on a cache miss
// included), always as the caller itself.
func (c *Client) ListServiceAccounts(ctx context.Context, opts metav1.ListOptions) (*corev1.ServiceAccountList, error) {
	return c.ServiceAccounts().List(ctx, opts)
}

// WatchServiceAccounts watches the ServiceAccounts of every namespace.
func (c *Client) WatchServiceAccounts(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return c.ServiceAccounts().Watch(ctx, opts)
}

// GetServiceAccount reads one ServiceAccount.
func (c *Client) GetServiceAccount(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error) {
	return c.serviceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
}

// mutatingWebhookConfigurations is read and patched as JSON: linking the
// admissionregistration API group for one object would grow the binary
// for nothing (the dependency guard in cmd/agent keeps it out).
const mutatingWebhookConfigurations = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"

// GetWebhookConfiguration reads a MutatingWebhookConfiguration as JSON.
func (c *Client) GetWebhookConfiguration(ctx context.Context, name string) ([]byte, error) {
	return c.rest.Get().AbsPath(mutatingWebhookConfigurations, name).SetHeader("Accept", "application/json").DoRaw(ctx)
}

// PatchWebhookConfiguration applies a JSON patch to a
// MutatingWebhookConfiguration.
func (c *Client) PatchWebhookConfiguration(ctx context.Context, name string, patch []byte) error {
	_, err := c.rest.Patch(types.JSONPatchType).AbsPath(mutatingWebhookConfigurations, name).SetHeader("Accept", "application/json").Body(patch).DoRaw(ctx)
	return err
}
