package podtoken

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/credbroker/agent/internal/kubetest"
	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/podresolve"
)

const (
	gcpAudience = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/prov"
	apiAudience = "https://kubernetes.default.svc.cluster.local"
)

var reserved = []Reserved{
	{Audience: "sts.amazonaws.com", Owner: "the aws exchange's"},
	{Audience: gcpAudience, Owner: "the gcp exchange's"},
	{Audience: "api://AzureADTokenExchange", Owner: "the azure exchange's"},
	{Audience: apiAudience, Owner: "the Kubernetes API server's"},
}

func TestSameAudience(t *testing.T) {
	gcpPath := strings.TrimPrefix(gcpAudience, "//iam.googleapis.com")
	for _, c := range []struct {
		a, b string
		same bool
	}{
		// Google STS takes the provider's name with or without https:.
		{gcpAudience, "https://iam.googleapis.com" + gcpPath, true},
		{gcpAudience, "HTTPS://IAM.GoogleAPIs.com" + gcpPath + "/", true},
		{gcpAudience, "http://iam.googleapis.com" + gcpPath + "//", true},
		{gcpAudience, "https://iam.googleapis.com:443" + gcpPath, true},
		{gcpAudience, "//iam.googleapis.com." + gcpPath, true},
		{gcpAudience, "iam.googleapis.com" + gcpPath, true},
		{gcpAudience, "https://iam.googleapis.com" + strings.ToUpper(gcpPath), false}, // a path is case-sensitive
		{gcpAudience, "https://iam.googleapis.com/projects/124/locations/global/workloadIdentityPools/pool/providers/prov", false},
		{gcpAudience, "https://iam.googleapis.com:8443" + gcpPath, false},
		{"sts.amazonaws.com", "https://sts.amazonaws.com/", true},
		{"sts.amazonaws.com", "STS.amazonaws.com", true},
		{"sts.amazonaws.com", "sts.amazonaws.com.evil", false},
		{"api://AzureADTokenExchange", "API://azureadtokenexchange/", true},
		{"api://AzureADTokenExchange", "https://AzureADTokenExchange", false},
		{apiAudience, apiAudience + "/", true},
		{apiAudience, apiAudience + "/api", false},
	} {
		if got := SameAudience(c.a, c.b); got != c.same {
			t.Errorf("SameAudience(%q, %q) = %v, want %v", c.a, c.b, got, c.same)
		}
	}
}

// A prefix under which a cloud or the API server would accept a token is
// refused, under whatever spelling it covers the audience.
func TestCheckPrefix(t *testing.T) {
	for _, p := range []string{
		"https://", "HTTPS://", "//", "http://", "h", "s", "sts.", "https://sts",
		"https://iam.googleapis.com/", "https://IAM.googleapis.com/projects/123/", "//iam.googleapis.com/projects/",
		"https://iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/prov/",
		"api://", "API://azure",
		"https://kubernetes.default.svc", "https://kubernetes.default.svc.cluster.local/",
	} {
		err := CheckPrefix(p, reserved)
		if err == nil {
			t.Errorf("prefix %q accepted", p)
			continue
		}
		if !strings.Contains(err.Error(), "--token-audience-prefix") || !strings.Contains(err.Error(), "covers") {
			t.Errorf("prefix %q: %v, want an error naming the flag and what it covers", p, err)
		}
	}
	for _, p := range []string{
		"", "https://svc.example.com/", "svc-", "https://iam.googleapis.com/projects/124/",
		"https://kubernetes.default.svc.cluster.local/services/", "spiffe://",
	} {
		if err := CheckPrefix(p, reserved); err != nil {
			t.Errorf("prefix %q: %v", p, err)
		}
	}
	err := CheckPrefix("https://kubernetes", reserved)
	if err == nil || !strings.Contains(err.Error(), apiAudience) || !strings.Contains(err.Error(), "API server") {
		t.Errorf("the API server's audience: %v", err)
	}
}

// Over the real broker: a pod whose ServiceAccount lists every https
// audience (and a cluster prefix of https://, which CheckPrefix refuses at
// start, so that only the request-time rule stands here) asks for the GCP
// provider's audience in its https spelling. Google STS accepts that
// spelling, so a token for it would let the pod skip the GCP policy.
func TestReservedAudienceUnderAnotherSpelling(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "token" {
			return false, nil, nil
		}
		out := a.(k8stesting.CreateAction).GetObject().(*authenticationv1.TokenRequest).DeepCopy()
		out.Status.Token = "SATOKEN-" + strings.Join(out.Spec.Audiences, ",")
		out.Status.ExpirationTimestamp = metav1.NewTime(time.Now().Add(time.Hour))
		return true, out, nil
	})
	const annotation = "credbroker.io/token-audiences"
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "app",
		Annotations: map[string]string{annotation: "https://*, //*, api://*, sts.*"}}}
	if _, err := client.CoreV1().ServiceAccounts("ns").Create(context.Background(), sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{"https://", "//", "api://", "sts."} {
		t.Run(prefix, func(t *testing.T) {
			b, err := broker.New(broker.Config{ServiceAccounts: kubetest.ServiceAccounts(client),
				Resolver: testfake.OnePod{Pod: podresolve.Pod{Namespace: "ns", Name: "app-0", UID: "uid-app", ServiceAccount: "app"}},
				Clouds:   []broker.Cloud{BrokerCloud(CloudConfig{Prefix: prefix, Annotation: annotation, Reserved: reserved})}})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = b.Run(ctx) }()
			t.Cleanup(func() { cancel(); <-done })
			for deadline := time.Now().Add(10 * time.Second); !b.HasSynced(); time.Sleep(5 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the broker's ServiceAccount watch did not list")
				}
			}
			h, err := New(b, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, aud := range []string{
				gcpAudience, "https://iam.googleapis.com" + strings.TrimPrefix(gcpAudience, "//iam.googleapis.com"),
				"https://IAM.googleapis.com" + strings.TrimPrefix(gcpAudience, "//iam.googleapis.com") + "/",
				"sts.amazonaws.com", "https://sts.amazonaws.com", "api://AzureADTokenExchange", "api://azureadtokenexchange/",
				apiAudience, apiAudience + "/",
			} {
				if !strings.HasPrefix(aud, prefix) {
					continue
				}
				rec := get(h, Path+"?audience="+aud, "")
				var e map[string]string
				if rec.Code != http.StatusForbidden || json.Unmarshal(rec.Body.Bytes(), &e) != nil || e["code"] != broker.CodeAudienceNotAllowed ||
					!strings.Contains(e["message"], "never handed out") {
					t.Errorf("%q: %d %s, want 403 %s", aud, rec.Code, rec.Body, broker.CodeAudienceNotAllowed)
				}
			}
			// An audience of the prefix that no cloud takes is served.
			if rec := get(h, Path+"?audience="+prefix+"svc.example.com", ""); rec.Code != http.StatusOK {
				t.Errorf("a service audience: %d %s", rec.Code, rec.Body)
			}
		})
	}
}
