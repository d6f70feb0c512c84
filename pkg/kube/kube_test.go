package kube

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
)

// apiServer records one request and answers it with body as JSON.
type apiServer struct {
	method, path, query, contentType, accept string
	body                                     []byte
}

func (a *apiServer) start(t *testing.T, answer any) *Client {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.method, a.path, a.query = r.Method, r.URL.Path, r.URL.RawQuery
		a.contentType, a.accept = r.Header.Get("Content-Type"), r.Header.Get("Accept")
		a.body, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(answer)
	}))
	t.Cleanup(srv.Close)
	c, err := NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCreateTokenPostsToTheTokenSubresource(t *testing.T) {
	var a apiServer
	c := a.start(t, &authenticationv1.TokenRequest{
		TypeMeta: metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1", Kind: "TokenRequest"},
		Status:   authenticationv1.TokenRequestStatus{Token: "minted"},
	})
	seconds := int64(600)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: []string{"sts.amazonaws.com"}, ExpirationSeconds: &seconds,
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: "p", UID: "uid-1"},
	}}
	got, err := c.ServiceAccounts().CreateToken(context.Background(), "team-a", "app", req, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Status.Token != "minted" {
		t.Errorf("token %q, want the server's", got.Status.Token)
	}
	if a.method != http.MethodPost || a.path != "/api/v1/namespaces/team-a/serviceaccounts/app/token" {
		t.Errorf("request %s %s, want POST to the token subresource", a.method, a.path)
	}
	// Protobuf, as the generated clientset sends it.
	if a.contentType != "application/vnd.kubernetes.protobuf" {
		t.Errorf("Content-Type %q, want protobuf", a.contentType)
	}
	obj, gvk, err := codecs.Factory.UniversalDeserializer().Decode(a.body, nil, nil)
	if err != nil {
		t.Fatalf("decoding the body: %v", err)
	}
	if gvk.GroupVersion() != authenticationv1.SchemeGroupVersion || gvk.Kind != "TokenRequest" {
		t.Errorf("body typed %s, want authentication.k8s.io/v1 TokenRequest", gvk)
	}
	sent := obj.(*authenticationv1.TokenRequest)
	if sent.Spec.BoundObjectRef == nil || sent.Spec.BoundObjectRef.UID != "uid-1" || sent.Spec.Audiences[0] != "sts.amazonaws.com" {
		t.Errorf("body spec %+v lost the binding or audience", sent.Spec)
	}
}

func TestListPodsAcrossNamespacesWithSelector(t *testing.T) {
	var a apiServer
	c := a.start(t, &corev1.PodList{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "PodList"},
		Items:    []corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "n"}}},
	})
	list, err := c.Pods().List(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=node-1", Limit: 500})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 || list.Items[0].Name != "p" {
		t.Errorf("items %+v", list.Items)
	}
	if a.path != "/api/v1/pods" || a.query != "fieldSelector=spec.nodeName%3Dnode-1&limit=500" {
		t.Errorf("request %s?%s, want the cluster-wide pod list with the selector", a.path, a.query)
	}
}

func TestNodePatchSendsTheGivenPatchType(t *testing.T) {
	var a apiServer
	c := a.start(t, &corev1.Node{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"}, ObjectMeta: metav1.ObjectMeta{Name: "node-1"}})
	patch := []byte(`[{"op":"remove","path":"/spec/taints/0"}]`)
	if _, err := c.Nodes().Patch(context.Background(), "node-1", types.JSONPatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if a.method != http.MethodPatch || a.path != "/api/v1/nodes/node-1" || a.contentType != string(types.JSONPatchType) || string(a.body) != string(patch) {
		t.Errorf("request %s %s (%s) %q", a.method, a.path, a.contentType, a.body)
	}
}

// The agent asks for protobuf (half the bytes of the pod watch); the
// scheme must be able to decode it.
func TestProtobufIsNegotiated(t *testing.T) {
	var a apiServer
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.accept = r.Header.Get("Accept")
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(&corev1.ServiceAccountList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccountList"}})
	}))
	defer srv.Close()
	c, err := NewForConfig(&rest.Config{Host: srv.URL, ContentConfig: rest.ContentConfig{
		ContentType: "application/vnd.kubernetes.protobuf", AcceptContentTypes: "application/vnd.kubernetes.protobuf,application/json",
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ServiceAccounts().List(context.Background(), metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if a.accept != "application/vnd.kubernetes.protobuf,application/json" {
		t.Errorf("Accept %q, want protobuf first", a.accept)
	}
}
