package kube

import (
	"context"
	"net/http"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Every request the agent makes through a Resource is the one client-go's
// generated typed client makes: the same method, path and query, protobuf
// preferred, and objects sent as protobuf.
func TestResourceRequestsAreTheGeneratedClients(t *testing.T) {
	const protobuf = "application/vnd.kubernetes.protobuf"
	ctx := context.Background()
	seconds := int64(30)
	ev := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "p.1", Namespace: "team-a"}, Reason: "CredentialsDenied", Count: 2}
	for _, tc := range []struct {
		name                      string
		call                      func(*Client) error
		method, path, query, body string // body: the Content-Type sent, if any
	}{
		{"get ServiceAccount", func(c *Client) error { _, err := c.GetServiceAccount(ctx, "team-a", "app"); return err },
			http.MethodGet, "/api/v1/namespaces/team-a/serviceaccounts/app", "", ""},
		{"list ServiceAccounts", func(c *Client) error {
			_, err := c.ListServiceAccounts(ctx, metav1.ListOptions{ResourceVersion: "0", TimeoutSeconds: &seconds})
			return err
		}, http.MethodGet, "/api/v1/serviceaccounts", "resourceVersion=0&timeout=30s&timeoutSeconds=30", ""},
		{"get node", func(c *Client) error { _, err := c.Nodes().Get(ctx, "node-1", metav1.GetOptions{}); return err },
			http.MethodGet, "/api/v1/nodes/node-1", "", ""},
		{"patch node", func(c *Client) error {
			_, err := c.Nodes().Patch(ctx, "node-1", types.MergePatchType, []byte(`{}`), metav1.PatchOptions{FieldManager: "m"}, "status")
			return err
		}, http.MethodPatch, "/api/v1/nodes/node-1/status", "fieldManager=m", string(types.MergePatchType)},
		{"create Event", func(c *Client) error { _, err := c.EventSink().Create(ev); return err },
			http.MethodPost, "/api/v1/namespaces/team-a/events", "", protobuf},
		{"update Event", func(c *Client) error { _, err := c.EventSink().Update(ev); return err },
			http.MethodPut, "/api/v1/namespaces/team-a/events/p.1", "", protobuf},
		{"patch Event", func(c *Client) error { _, err := c.EventSink().Patch(ev, []byte(`{"count":3}`)); return err },
			http.MethodPatch, "/api/v1/namespaces/team-a/events/p.1", "", string(types.StrategicMergePatchType)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var a apiServer
			c := a.start(t, &corev1.Event{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Event"}})
			if err := tc.call(c); err != nil {
				t.Fatal(err)
			}
			if a.method != tc.method || a.path != tc.path || a.query != tc.query {
				t.Errorf("request %s %s?%s, want %s %s?%s", a.method, a.path, a.query, tc.method, tc.path, tc.query)
			}
			if a.accept != protobuf+",application/json" {
				t.Errorf("Accept %q, want protobuf preferred", a.accept)
			}
			if tc.body != "" && a.contentType != tc.body {
				t.Errorf("Content-Type %q, want %q", a.contentType, tc.body)
			}
		})
	}
}

// A watch asks for watch=true with the options' timeout, and decodes the
// stream.
func TestResourceWatch(t *testing.T) {
	var a apiServer
	c := a.start(t, map[string]any{"type": "ADDED", "object": &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}, ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "n"},
	}})
	seconds := int64(300)
	w, err := c.Pods().Watch(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=node-1", ResourceVersion: "7", TimeoutSeconds: &seconds})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	select {
	case ev := <-w.ResultChan():
		if p, ok := ev.Object.(*corev1.Pod); !ok || p.Name != "p" {
			t.Errorf("event %s %#v, want the pod", ev.Type, ev.Object)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no watch event")
	}
	if a.path != "/api/v1/pods" || a.query != "fieldSelector=spec.nodeName%3Dnode-1&resourceVersion=7&timeout=5m0s&timeoutSeconds=300&watch=true" {
		t.Errorf("request %s?%s, want the pod watch", a.path, a.query)
	}
}
