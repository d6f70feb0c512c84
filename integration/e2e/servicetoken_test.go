//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/credbroker/agent/integration/netns"
	"github.com/credbroker/agent/pkg/verify"
)

// tokenAudiencePrefix is what the suite's agent serves pod tokens for
// (--token-audience-prefix).
const tokenAudiencePrefix = "https://svc.e2e/"

// The service-to-service pattern end to end: pod A asks the agent for a
// token with service B's audience and calls B with it; B, a server with
// pkg/verify's middleware reading the API server's discovery, learns that
// the caller is pod A of its ServiceAccount. What A may not ask for is
// refused by the agent.
func (w *world) testServiceToService(t *testing.T) {
	ctx := context.Background()
	const ns, audience = "shop", tokenAudiencePrefix + "orders"
	w.serviceAccount(t, ns, "frontend", "")
	if out, err := w.cp.Kubectl(ctx, "-n", ns, "annotate", "serviceaccount", "frontend",
		"credbroker.io/token-audiences="+tokenAudiencePrefix+"orders, "+tokenAudiencePrefix+"billing-*"); err != nil {
		t.Fatalf("annotating: %v: %s", err, out)
	}
	a := w.pod(t, ns, "frontend-1", "frontend")

	// Service B on the host side of the pods' network, where the agent is.
	v, err := verify.New(verify.Config{
		Kubernetes: &rest.Config{Host: w.cp.URL, BearerToken: w.cp.AdminToken, TLSClientConfig: rest.TLSClientConfig{CAData: w.cp.CACert}},
		Audiences:  []string{audience},
		Subjects:   []string{"system:serviceaccount:shop:frontend"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(netns.ServiceAddr4.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	b := &http.Server{Handler: v.Middleware(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		id, _ := verify.FromContext(r.Context())
		_ = json.NewEncoder(rw).Encode(id)
	})), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := b.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("service B: %v", err)
		}
	}()
	t.Cleanup(func() { _ = b.Close() })

	tokenURL := func(aud string) string {
		return "http://" + w.agent.Listen + "/v1/token?audience=" + url.QueryEscape(aud)
	}
	r := w.fetchURL(t, a, tokenURL(audience))
	if r.status != http.StatusOK {
		t.Fatalf("token from the agent: %d %s", r.status, r.body)
	}
	var tok struct{ Token, Expiration string }
	if err := json.Unmarshal([]byte(r.body), &tok); err != nil || tok.Token == "" {
		t.Fatalf("token answer %s: %v", r.body, err)
	}
	if exp, err := time.Parse(time.RFC3339, tok.Expiration); err != nil || time.Until(exp) < 50*time.Minute {
		t.Errorf("expiration %q, want about the session's hour", tok.Expiration)
	}

	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ln.Addr().String()+"/orders", nil)
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	resp, err := a.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("pod A calling B: %v", err)
	}
	var id verify.Identity
	err = json.NewDecoder(resp.Body).Decode(&id)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || err != nil {
		t.Fatalf("B answered %d (%v)", resp.StatusCode, err)
	}
	if id.Namespace != ns || id.ServiceAccount != "frontend" || id.PodName != a.Pod.Name || id.PodUID != string(a.Pod.UID) {
		t.Errorf("B saw %+v, want pod %s/%s (%s)", id, ns, a.Pod.Name, a.Pod.UID)
	}

	// A token for another audience is refused by B, and audiences the
	// ServiceAccount does not list, or a cloud's, by the agent.
	other := w.fetchURL(t, a, tokenURL(tokenAudiencePrefix+"billing-eu"))
	if other.status != http.StatusOK {
		t.Fatalf("an audience matching the glob: %d %s", other.status, other.body)
	}
	if err := json.Unmarshal([]byte(other.body), &tok); err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	if resp, err := a.HTTPClient().Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("B accepted a token for another audience: %v %v", resp.StatusCode, err)
	} else {
		resp.Body.Close()
	}
	for _, aud := range []string{tokenAudiencePrefix + "inventory", "sts.amazonaws.com", "https://elsewhere/orders"} {
		if r := w.fetchURL(t, a, tokenURL(aud)); r.status != http.StatusForbidden {
			t.Errorf("audience %q: %d %s, want 403", aud, r.status, r.body)
		}
	}
}
