package webhook

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/gentype"
	"k8s.io/client-go/rest"
)

var (
	scheme         = runtime.NewScheme()
	codecs         = serializer.NewCodecFactory(scheme)
	parameterCodec = runtime.NewParameterCodec(scheme)
)

func init() {
	if err := corev1.AddToScheme(scheme); err != nil {
		panic(err)
	}
}

// Client is the webhook's Kubernetes client: ServiceAccounts (list, watch,
// get) and its own MutatingWebhookConfiguration (get, patch: RBAC names
// that one object). Like pkg/kube it links core/v1 only; the webhook
// configuration is read and patched as JSON.
type Client struct {
	rest rest.Interface
}

// NewClient builds a Client from cfg (copied).
func NewClient(cfg *rest.Config) (*Client, error) {
	c := rest.CopyConfig(cfg)
	gv := corev1.SchemeGroupVersion
	c.GroupVersion = &gv
	c.APIPath = "/api"
	c.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(scheme, codecs).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("building core/v1 REST client: %w", err)
	}
	return &Client{rest: rc}, nil
}

func (c *Client) serviceAccounts(namespace string) *gentype.ClientWithList[*corev1.ServiceAccount, *corev1.ServiceAccountList] {
	return gentype.NewClientWithList("serviceaccounts", c.rest, parameterCodec, namespace,
		func() *corev1.ServiceAccount { return &corev1.ServiceAccount{} },
		func() *corev1.ServiceAccountList { return &corev1.ServiceAccountList{} },
		gentype.PrefersProtobuf[*corev1.ServiceAccount]())
}

// ListServiceAccounts lists the ServiceAccounts of every namespace.
func (c *Client) ListServiceAccounts(ctx context.Context, opts metav1.ListOptions) (*corev1.ServiceAccountList, error) {
	return c.serviceAccounts(metav1.NamespaceAll).List(ctx, opts)
}

// WatchServiceAccounts watches the ServiceAccounts of every namespace.
func (c *Client) WatchServiceAccounts(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return c.serviceAccounts(metav1.NamespaceAll).Watch(ctx, opts)
}

// GetServiceAccount reads one ServiceAccount.
func (c *Client) GetServiceAccount(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error) {
	return c.serviceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
}

const mwcPath = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"

// GetWebhookConfiguration reads a MutatingWebhookConfiguration as JSON.
func (c *Client) GetWebhookConfiguration(ctx context.Context, name string) ([]byte, error) {
	// JSON whatever the client's content types: publish decodes it so.
	return c.rest.Get().AbsPath(mwcPath, name).SetHeader("Accept", "application/json").DoRaw(ctx)
}

// PatchWebhookConfiguration applies a JSON patch to a
// MutatingWebhookConfiguration.
func (c *Client) PatchWebhookConfiguration(ctx context.Context, name string, patch []byte) error {
	_, err := c.rest.Patch(types.JSONPatchType).AbsPath(mwcPath, name).SetHeader("Accept", "application/json").Body(patch).DoRaw(ctx)
	return err
}
