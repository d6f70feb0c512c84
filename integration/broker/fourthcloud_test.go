//go:build integration

package broker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/integration/clusterkeys"
	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/testenv"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
)

// The fourth cloud, "acme", lives only in this test package: its profile,
// its exchanger, its token service and its wire surface. DESIGN.md promises
// that a new cloud is one exchanger and one surface and that the broker does
// not change; this test is that promise kept, with nothing of acme in
// pkg/broker or pkg/exchange.
const (
	acme           exchange.Cloud = "acme"
	acmeAudience                  = "token.acme.example"
	acmeAnnotation                = "acme.example/principal"
	acmeScope                     = "acme.storage.read"
)

func acmeProfile(x exchange.Exchanger) exchange.Profile {
	return exchange.Profile{
		Name:              acme,
		Exchanger:         x,
		Audience:          acmeAudience,
		Annotation:        acmeAnnotation,
		AllowedIdentities: []string{"principal/team-*"},
		Prefetch:          []exchange.Prefetch{{Want: exchange.KindAccessToken, Scope: acmeScope}},
		Lifetime:          time.Hour,
		Noun:              "acme principal",
		TrustHint:         "check the principal's trusted issuers at acme",
		AudienceHint:      "the acme profile's audience",
	}
}

// acmeTokenService is acme's token endpoint: it verifies the pod-bound
// ServiceAccount token as a real cloud does (the cluster's signing keys
// through OIDC discovery, issuer, audience, expiry) and trusts only the
// ServiceAccount each principal names.
type acmeTokenService struct {
	issuer string
	keys   *clusterkeys.KeySet
	trust  map[string]string // principal → "system:serviceaccount:ns:name"

	mu     sync.Mutex
	issued map[string]acmeGrant // access token → grant
	calls  map[string]int       // pod UID → exchanges
}

type acmeGrant struct {
	Principal, Subject, PodName, PodUID, Scope string
}

func (s *acmeTokenService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	claims, err := s.keys.Verify(r.Context(), r.PostForm.Get("subject_token"))
	switch {
	case err != nil:
		http.Error(w, "invalid token", http.StatusUnauthorized)
		return
	case claims.Issuer != s.issuer || !claims.Audience.Contains(acmeAudience) || claims.K8s.Pod == nil:
		http.Error(w, "wrong issuer, audience or no pod binding", http.StatusUnauthorized)
		return
	case claims.Expiry == nil || claims.Expiry.Time().Before(time.Now()):
		http.Error(w, "expired", http.StatusUnauthorized)
		return
	}
	principal := r.PostForm.Get("principal")
	if s.trust[principal] != claims.Subject {
		http.Error(w, "principal does not trust this subject", http.StatusForbidden)
		return
	}
	tok := fmt.Sprintf("acme-%s-%d", claims.K8s.Pod.UID, time.Now().UnixNano())
	s.mu.Lock()
	s.issued[tok] = acmeGrant{Principal: principal, Subject: claims.Subject, PodName: claims.K8s.Pod.Name, PodUID: claims.K8s.Pod.UID, Scope: r.PostForm.Get("scope")}
	s.calls[claims.K8s.Pod.UID]++
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "expires_in": 3600})
}

func (s *acmeTokenService) grant(tok string) (acmeGrant, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.issued[tok]
	return g, ok
}

func (s *acmeTokenService) callsFor(uid string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[uid]
}

// acmeExchanger is acme's exchanger: the pod-bound token for an access
// token of the principal the ServiceAccount names.
type acmeExchanger struct {
	url    string
	client *http.Client
}

func (x acmeExchanger) Exchange(ctx context.Context, req exchange.Request) (exchange.Credentials, error) {
	form := url.Values{"subject_token": {req.Token.Reveal()}, "principal": {req.Role}, "scope": {strings.Join(req.Scopes, " ")}}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, x.url, strings.NewReader(form.Encode()))
	if err != nil {
		return exchange.Credentials{}, err
	}
	hr.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := x.client.Do(hr)
	if err != nil {
		return exchange.Credentials{}, fmt.Errorf("acme token service: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return exchange.Credentials{}, fmt.Errorf("acme token service: %s", resp.Status)
	}
	var body struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return exchange.Credentials{}, fmt.Errorf("acme token service answer: %w", err)
	}
	return exchange.Credentials{Kind: exchange.KindAccessToken, AccessToken: exchange.Secret(body.AccessToken), TokenType: "Bearer",
		Expiration: time.Now().Add(time.Duration(body.ExpiresIn) * time.Second)}, nil
}

// acmeSurface is acme's wire surface: GET /acme/token?scope=... answers
// {"token","principal","expires_at"} from the broker, its refusals in its
// own error JSON and status table.
type acmeSurface struct {
	broker interface {
		Serve(ctx context.Context, addr netip.Addr, req broker.Request) (broker.Answer, *broker.Failure)
	}
}

var acmeStatus = map[broker.Class]int{broker.Unavailable: 503, broker.Throttled: 429, broker.Refused: 403, broker.Invalid: 400}

func (s acmeSurface) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil || r.URL.Path != "/acme/token" {
		http.Error(w, `{"error":"BadRequest"}`, http.StatusBadRequest)
		return
	}
	ans, f := s.broker.Serve(r.Context(), peer.Addr().Unmap(), broker.Request{Cloud: acme, Want: exchange.KindAccessToken, Scope: r.URL.Query().Get("scope")})
	w.Header().Set("Content-Type", "application/json")
	if f != nil {
		if f.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(f.RetryAfter.Seconds())+1))
		}
		w.WriteHeader(acmeStatus[f.Class])
		_ = json.NewEncoder(w).Encode(map[string]string{"error": f.Code, "message": f.Message})
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]string{"token": ans.Credentials.AccessToken.Reveal(), "principal": ans.Identity,
		"expires_at": ans.Credentials.Expiration.UTC().Format(time.RFC3339)})
}

// TestFourthCloud serves a cloud defined only in this test package end to
// end: the real kube-apiserver mints pod-bound tokens, the real pod resolver
// finds the caller, the real broker applies acme's profile (annotation,
// allowed principals, prefetch, lifetime) beside AWS's, and acme's token
// service verifies every token it gets.
func TestFourthCloud(t *testing.T) {
	const node, ns = "node-acme", "acme"
	cp := testenv.StartControlPlane(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	svc := &acmeTokenService{issuer: cp.Issuer, keys: clusterkeys.NewKeySet(cp.Issuer, cp.AdminHTTPClient()),
		trust: map[string]string{
			"principal/team-a": "system:serviceaccount:" + ns + ":team-a",
			// Trusted by acme, but outside the agent's allowed principals:
			// only the agent's policy stands between pod ops-1 and it.
			"principal/ops": "system:serviceaccount:" + ns + ":ops",
		},
		issued: map[string]acmeGrant{}, calls: map[string]int{}}
	tokenService := httptest.NewServer(svc)
	t.Cleanup(tokenService.Close)

	if err := cp.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	for name, principal := range map[string]string{"team-a": "principal/team-a", "ops": "principal/ops", "plain": ""} {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
		if principal != "" {
			sa.Annotations = map[string]string{acmeAnnotation: principal}
		}
		if _, err := cp.Client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	addrs := map[string]netip.Addr{"team-a": netip.MustParseAddr("10.244.19.10"), "ops": netip.MustParseAddr("10.244.19.11"), "plain": netip.MustParseAddr("10.244.19.12")}
	uids := map[string]string{}
	for sa, ip := range addrs {
		pod, err := cp.CreatePod(ctx, harness.PodSpec{Namespace: ns, Name: sa + "-1", ServiceAccount: sa, NodeName: node, IP: ip})
		if err != nil {
			t.Fatal(err)
		}
		uids[sa] = string(pod.UID)
	}

	b := startBroker(t, cp, node, acmeProfile(acmeExchanger{url: tokenService.URL, client: tokenService.Client()}))

	surface := acmeSurface{broker: b}
	get := func(sa string) (int, map[string]string) {
		req := httptest.NewRequest(http.MethodGet, "/acme/token?scope="+acmeScope, nil)
		req.RemoteAddr = netip.AddrPortFrom(addrs[sa], 40000).String()
		rec := httptest.NewRecorder()
		surface.ServeHTTP(rec, req)
		var body map[string]string
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("%s: answer %d %q is not acme's JSON: %v", sa, rec.Code, rec.Body, err)
		}
		return rec.Code, body
	}

	// Prefetched from acme's profile: the pod's first request is served
	// from the cache, and acme saw one exchange for it.
	waitFor(t, "the prefetch of pod team-a-1", func() bool { return svc.callsFor(uids["team-a"]) == 1 })
	for i := range 3 {
		code, body := get("team-a")
		if code != http.StatusOK {
			t.Fatalf("request %d of pod team-a-1: %d %v", i, code, body)
		}
		g, ok := svc.grant(body["token"])
		if !ok || g.PodUID != uids["team-a"] || g.PodName != "team-a-1" || g.Principal != "principal/team-a" || g.Scope != acmeScope || body["principal"] != "principal/team-a" {
			t.Fatalf("pod team-a-1 was served %v; acme minted it for %+v (known %v)", body, g, ok)
		}
		if exp, err := time.Parse(time.RFC3339, body["expires_at"]); err != nil || time.Until(exp) < broker.FreshnessFloor {
			t.Errorf("expires_at %q (%v): want at least %v left", body["expires_at"], err, broker.FreshnessFloor)
		}
	}
	if n := svc.callsFor(uids["team-a"]); n != 1 {
		t.Errorf("acme exchanged %d times for pod team-a-1, want 1 (prefetch, then cache hits)", n)
	}

	// acme's policy, applied by the broker: a principal outside the allowed
	// ones and a ServiceAccount naming none are refused in acme's format,
	// before acme is asked.
	for _, sa := range []string{"ops", "plain"} {
		code, body := get(sa)
		if code != http.StatusForbidden || body["error"] == "" || sa == "ops" && !strings.Contains(body["message"], "acme principal") {
			t.Errorf("pod %s-1: %d %v, want 403 naming the acme principal", sa, code, body)
		}
		if n := svc.callsFor(uids[sa]); n != 0 {
			t.Errorf("acme was asked %d times for pod %s-1, want never", n, sa)
		}
	}

	// A caller that is no pod on the node gets a retryable error, never a guess.
	req := httptest.NewRequest(http.MethodGet, "/acme/token?scope="+acmeScope, nil)
	req.RemoteAddr = "10.244.19.99:40000"
	rec := httptest.NewRecorder()
	surface.ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("an address no pod holds: %d %s, want 503", rec.Code, rec.Body)
	}
}
