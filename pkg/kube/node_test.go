package kube

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// impersonationRecorder answers every request with a minimal object of the
// right kind and records, per "METHOD path", the Impersonate-User header.
type impersonationRecorder struct {
	mu  sync.Mutex
	got map[string]string
}

func (r *impersonationRecorder) start(t *testing.T) *Client {
	t.Helper()
	r.got = map[string]string{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.got[req.Method+" "+req.URL.Path] = req.Header.Get("Impersonate-User")
		r.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		var answer any
		switch {
		case strings.HasSuffix(req.URL.Path, "/token"):
			answer = &authenticationv1.TokenRequest{TypeMeta: metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1", Kind: "TokenRequest"}}
		case strings.HasSuffix(req.URL.Path, "/pods"):
			answer = &corev1.PodList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "PodList"}}
		case strings.HasSuffix(req.URL.Path, "/serviceaccounts"):
			answer = &corev1.ServiceAccountList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccountList"}}
		case strings.Contains(req.URL.Path, "/events"):
			answer = &corev1.Event{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Event"}}
		default:
			answer = &corev1.Node{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"}}
		}
		_ = json.NewEncoder(w).Encode(answer)
	}))
	t.Cleanup(srv.Close)
	c, err := NewNodeRestricted(&rest.Config{Host: srv.URL}, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The node may list its pods, ask for its pods' tokens and write Events;
// it may not list ServiceAccounts, and NodeRestriction forbids it to change
// its own taints: those stay the agent's own requests.
func TestNodeRestrictedClientImpersonatesOnlyWhereTheNodeMay(t *testing.T) {
	var r impersonationRecorder
	c := r.start(t)
	ctx := context.Background()
	if _, err := c.Pods().List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=node-a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ServiceAccounts().CreateToken(ctx, "team", "app", &authenticationv1.TokenRequest{}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.EventSink().Create(&corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "e"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ServiceAccounts().List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Nodes().Get(ctx, "node-a", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"GET /api/v1/pods": "system:node:node-a",
		"POST /api/v1/namespaces/team/serviceaccounts/app/token": "system:node:node-a",
		"POST /api/v1/namespaces/team/events":                    "system:node:node-a",
		"GET /api/v1/serviceaccounts":                            "",
		"GET /api/v1/nodes/node-a":                               "",
	}
	for req, user := range want {
		got, ok := r.got[req]
		if !ok {
			t.Errorf("%s not sent", req)
			continue
		}
		if got != user {
			t.Errorf("%s: Impersonate-User %q, want %q", req, got, user)
		}
	}
	if c.NodeName() != "node-a" {
		t.Errorf("NodeName %q", c.NodeName())
	}
}

func TestPlainClientNeverImpersonates(t *testing.T) {
	var seen []string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		mu.Lock()
		seen = append(seen, req.Header.Get("Impersonate-User"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(&authenticationv1.TokenRequest{TypeMeta: metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1", Kind: "TokenRequest"}})
	}))
	defer srv.Close()
	c, err := NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ServiceAccounts().CreateToken(context.Background(), "team", "app", &authenticationv1.TokenRequest{}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 1 || seen[0] != "" {
		t.Errorf("Impersonate-User headers %q, want one empty", seen)
	}
}

// probeServer plays the API server's answers to the three probe requests.
type probeServer struct {
	user, nodeName string
	listStatus     int // 0: 200
	tokenStatus    int
	tokenReason    metav1.StatusReason
}

func (p probeServer) start(t *testing.T) *Client {
	t.Helper()
	status := func(w http.ResponseWriter, code int, reason metav1.StatusReason) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(&metav1.Status{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Status"},
			Status: metav1.StatusFailure, Code: int32(code), Reason: reason, Message: "refused"})
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch {
		case req.URL.Path == "/apis/authentication.k8s.io/v1/selfsubjectreviews":
			ssr := &authenticationv1.SelfSubjectReview{TypeMeta: metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1", Kind: "SelfSubjectReview"}}
			ssr.Status.UserInfo.Username = p.user
			if p.nodeName != "" {
				ssr.Status.UserInfo.Extra = map[string]authenticationv1.ExtraValue{NodeNameExtra: {p.nodeName}, NodeUIDExtra: {"uid-a"}}
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(ssr)
		case req.URL.Path == "/api/v1/pods":
			if req.Header.Get("Impersonate-User") != "system:node:node-a" {
				t.Errorf("probe listed pods as %q", req.Header.Get("Impersonate-User"))
			}
			if p.listStatus != 0 {
				status(w, p.listStatus, metav1.StatusReasonForbidden)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(&corev1.PodList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "PodList"}})
		case req.URL.Path == "/api/v1/namespaces/credbroker-system/serviceaccounts/credbroker-agent/token":
			if req.Header.Get("Impersonate-User") != "system:node:node-a" {
				t.Errorf("probe asked for a token as %q", req.Header.Get("Impersonate-User"))
			}
			if p.tokenStatus == http.StatusCreated {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusCreated)
				_ = json.NewEncoder(w).Encode(&authenticationv1.TokenRequest{TypeMeta: metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1", Kind: "TokenRequest"}})
				return
			}
			status(w, p.tokenStatus, p.tokenReason)
		default:
			t.Errorf("unexpected probe request %s %s", req.Method, req.URL.Path)
			http.NotFound(w, req)
		}
	}))
	t.Cleanup(srv.Close)
	c, err := NewNodeRestricted(&rest.Config{Host: srv.URL}, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestProbe(t *testing.T) {
	const agent = "system:serviceaccount:credbroker-system:credbroker-agent"
	tests := []struct {
		name      string
		srv       probeServer
		available bool
	}{
		{"restricted: NodeRestriction looked the probe pod up", probeServer{user: agent, nodeName: "node-a", tokenStatus: 404, tokenReason: metav1.StatusReasonNotFound}, true},
		{"not a ServiceAccount", probeServer{user: "admin", nodeName: "node-a", tokenStatus: 404, tokenReason: metav1.StatusReasonNotFound}, false},
		{"token not bound to a node", probeServer{user: agent, tokenStatus: 404, tokenReason: metav1.StatusReasonNotFound}, false},
		{"token bound to another node", probeServer{user: agent, nodeName: "node-b", tokenStatus: 404, tokenReason: metav1.StatusReasonNotFound}, false},
		{"impersonation refused", probeServer{user: agent, nodeName: "node-a", listStatus: 403}, false},
		{"no NodeRestriction: validation reached", probeServer{user: agent, nodeName: "node-a", tokenStatus: 422, tokenReason: metav1.StatusReasonInvalid}, false},
		{"no NodeRestriction: minted", probeServer{user: agent, nodeName: "node-a", tokenStatus: 201}, false},
		{"token create not granted", probeServer{user: agent, nodeName: "node-a", tokenStatus: 403, tokenReason: metav1.StatusReasonForbidden}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.srv.start(t)
			id, err := c.Probe(context.Background())
			if tt.available {
				if err != nil {
					t.Fatalf("Probe: %v, want available", err)
				}
				if id.NodeName != "node-a" || id.NodeUID != "uid-a" || id.User != agent {
					t.Errorf("identity %+v", id)
				}
				return
			}
			var un *Unavailable
			if !errors.As(err, &un) {
				t.Fatalf("Probe: %v, want *Unavailable", err)
			}
			if un.Reason == "" {
				t.Error("no reason given")
			}
		})
	}
}

// An API server that does not answer is not a reason to fall back: the
// caller must see a plain error and retry.
func TestProbeUnreachableIsNotUnavailable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	c, err := NewNodeRestricted(&rest.Config{Host: url}, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Probe(context.Background())
	var un *Unavailable
	if err == nil || errors.As(err, &un) {
		t.Fatalf("Probe: %v, want a transport error", err)
	}
}

func TestIdentityServiceAccount(t *testing.T) {
	for user, want := range map[string]string{
		"system:serviceaccount:ns:name": "ns/name",
		"system:serviceaccount:ns:":     "",
		"system:serviceaccount::name":   "",
		"system:serviceaccount:ns":      "",
		"system:node:a":                 "",
		"admin":                         "",
	} {
		ns, name, ok := Identity{User: user}.ServiceAccount()
		got := ""
		if ok {
			got = ns + "/" + name
		}
		if got != want {
			t.Errorf("%q: %q, want %q", user, got, want)
		}
	}
}
