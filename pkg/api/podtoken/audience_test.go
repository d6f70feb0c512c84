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
	"k8s.io/client-go/kubernetes/fake"

	"github.com/credbroker/agent/internal/kubetest"
	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/broker"
	xpodtoken "github.com/credbroker/agent/pkg/exchange/podtoken"
	"github.com/credbroker/agent/pkg/podresolve"
)

const (
	gcpAudience = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/prov"
	apiAudience = "https://kubernetes.default.svc.cluster.local"
)

var reserved = []xpodtoken.Reserved{
	{Audience: "sts.amazonaws.com", Owner: "the aws exchange's"},
	{Audience: gcpAudience, Owner: "the gcp exchange's"},
	{Audience: "api://AzureADTokenExchange", Owner: "the azure exchange's"},
	{Audience: apiAudience, Owner: "the Kubernetes API server's"},
}

// Over the real broker: a pod whose ServiceAccount lists every https
// audience (and a cluster prefix of https://, which CheckPrefix refuses at
// start, so that only the request-time rule stands here) asks for the GCP
// provider's audience in its https spelling. Google STS accepts that
// spelling, so a token for it would let the pod skip the GCP policy.
func TestReservedAudienceUnderAnotherSpelling(t *testing.T) {
	client := fake.NewClientset()
	kubetest.IssueTokens(client, time.Hour, func(tr *authenticationv1.TokenRequest) string {
		return "SATOKEN-" + strings.Join(tr.Spec.Audiences, ",")
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
				Clouds:   []broker.Cloud{mustProfile(t, xpodtoken.Config{Prefix: prefix, Annotation: annotation, Reserved: reserved})}})
			if err != nil {
				t.Fatal(err)
			}
			kubetest.RunSynced(t, b)
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

func mustProfile(t *testing.T, cfg xpodtoken.Config) broker.Cloud {
	t.Helper()
	p, err := xpodtoken.Profile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
