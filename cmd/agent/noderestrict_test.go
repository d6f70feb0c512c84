package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// unrestrictedAPIServer answers the probe as an API server without
// constrained impersonation: the agent's identity is node-bound, but
// impersonating the node is refused.
func unrestrictedAPIServer(t *testing.T, probes *atomic.Int32) *rest.Config {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		probes.Add(1)
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/apis/authentication.k8s.io/v1/selfsubjectreviews" {
			ssr := &authenticationv1.SelfSubjectReview{TypeMeta: metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1", Kind: "SelfSubjectReview"}}
			ssr.Status.UserInfo.Username = "system:serviceaccount:credbroker-system:credbroker-agent"
			ssr.Status.UserInfo.Extra = map[string]authenticationv1.ExtraValue{"authentication.kubernetes.io/node-name": {"node-a"}}
			_ = json.NewEncoder(w).Encode(ssr)
			return
		}
		w.WriteHeader(http.StatusForbidden)
		_ = json.NewEncoder(w).Encode(&metav1.Status{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Status"},
			Status: metav1.StatusFailure, Code: 403, Reason: metav1.StatusReasonForbidden,
			Message: `users "system:node:node-a" is forbidden: User "system:serviceaccount:credbroker-system:credbroker-agent" cannot impersonate resource "users" in API group "" at the cluster scope`})
	}))
	t.Cleanup(srv.Close)
	return &rest.Config{Host: srv.URL}
}

func TestConnectKubeModes(t *testing.T) {
	for _, mode := range []nodeRestrictMode{nodeRestrictAuto, nodeRestrictRequired, nodeRestrictOff} {
		t.Run(string(mode), func(t *testing.T) {
			var probes atomic.Int32
			rc := unrestrictedAPIServer(t, &probes)
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			cfg := serveConfig{nodeName: "node-a", nodeRestricted: mode}
			c, nr, err := connectKube(context.Background(), cfg, rc, log)
			switch mode {
			case nodeRestrictAuto:
				if err != nil || c == nil || nr.on {
					t.Fatalf("auto: client %v, %+v, %v; want a fallback", c, nr, err)
				}
				if c.NodeName() != "" {
					t.Error("the fallback client still impersonates the node")
				}
				if !strings.Contains(logs.String(), "falling back") || !strings.Contains(nr.detail("node-a"), "node-restricted: off") {
					t.Errorf("the fallback is not said: log %q, detail %q", logs.String(), nr.detail("node-a"))
				}
			case nodeRestrictRequired:
				if !errors.Is(err, errNodeRestrictionRequired) {
					t.Fatalf("required: %v, want errNodeRestrictionRequired", err)
				}
				if !strings.Contains(err.Error(), "cannot impersonate") {
					t.Errorf("the error %q does not carry the API server's reason", err)
				}
			case nodeRestrictOff:
				if err != nil || nr.on || probes.Load() != 0 {
					t.Fatalf("off: %+v, %v, %d requests; want no probe", nr, err, probes.Load())
				}
			}
		})
	}
}

// An API server that does not answer is waited for: the agent never falls
// back to its broad RBAC because of an outage.
func TestConnectKubeWaitsForAnUnreachableAPIServer(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	old := probeRetry
	probeRetry.first, probeRetry.max = time.Millisecond, time.Millisecond
	t.Cleanup(func() { probeRetry = old })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	var logs bytes.Buffer
	c, nr, err := connectKube(ctx, serveConfig{nodeName: "node-a", nodeRestricted: nodeRestrictAuto}, &rest.Config{Host: url}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err == nil || c != nil || nr.on {
		t.Fatalf("connectKube: %v, %+v, %v; want an error once ctx ends", c, nr, err)
	}
	if strings.Contains(logs.String(), "falling back") {
		t.Error("fell back because the API server did not answer")
	}
	if n := strings.Count(logs.String(), "retrying"); n < 2 {
		t.Errorf("%d retries logged, want several", n)
	}
}

func TestNodeRestrictedFlag(t *testing.T) {
	var m nodeRestrictMode
	for _, ok := range []string{"auto", "required", "off"} {
		if err := m.Set(ok); err != nil || m.String() != ok {
			t.Errorf("Set(%q): %v", ok, err)
		}
	}
	if err := m.Set("yes"); err == nil {
		t.Error("Set(yes) accepted")
	}
}
