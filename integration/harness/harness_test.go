//go:build integration

package harness_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/netns"
	"github.com/credbroker/agent/integration/peer/peertest"
	"github.com/credbroker/agent/integration/testenv"
)

func startControlPlane(t *testing.T) *harness.ControlPlane {
	t.Helper()
	ctx := context.Background()
	cp := testenv.StartControlPlane(t)
	if err := netns.AddHostAddr(ctx, netns.ServiceAddr4); err != nil {
		t.Fatal(err)
	}
	return cp
}

// TestControlPlaneAgentIdentityAndSTS runs the pieces the agent relies on
// against a real kube-apiserver, without the agent: the agent's RBAC from
// deploy/, pod-bound TokenRequests as the agent would make them, and the
// STS verifying those tokens through the API server's OIDC discovery.
func TestControlPlaneAgentIdentityAndSTS(t *testing.T) {
	cp := startControlPlane(t)
	ctx := context.Background()

	kcPath := filepath.Join(cp.Dir, "agent.kubeconfig")
	if err := cp.AgentKubeconfig(ctx, "", kcPath); err != nil {
		t.Fatalf("AgentKubeconfig: %v", err)
	}
	// The agent's identity can do what it needs and nothing more.
	for _, tc := range []struct {
		verb, resource, sub, want string
	}{
		{"list", "pods", "", "yes"},
		{"watch", "pods", "", "yes"},
		{"list", "serviceaccounts", "", "yes"},
		{"watch", "serviceaccounts", "", "yes"},
		{"create", "serviceaccounts", "token", "yes"},
		{"list", "secrets", "", "no"},
		{"create", "pods", "", "no"},
		{"create", "serviceaccounts", "", "no"},
	} {
		out, _ := cp.Kubectl(ctx, "auth", "can-i", tc.verb, tc.resource, "--subresource="+tc.sub, "--all-namespaces",
			"--as=system:serviceaccount:credbroker-system:credbroker-agent")
		if got := strings.TrimSpace(string(out)); got != tc.want {
			t.Errorf("agent can-i %s %s (subresource %q) = %q, want %q", tc.verb, tc.resource, tc.sub, got, tc.want)
		}
	}

	// A client built from the agent's kubeconfig acts as the agent.
	agentClient, err := harness.KubeconfigClient(kcPath, "")
	if err != nil {
		t.Fatal(err)
	}

	const role = "arn:aws:iam::123456789012:role/app-a"
	if _, err := cp.CreateServiceAccount(ctx, "team", "app-a", role); err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr("10.244.251.1")
	pod, err := cp.CreatePod(ctx, harness.PodSpec{Namespace: "team", Name: "pod-1", ServiceAccount: "app-a", NodeName: "node-1", IP: ip})
	if err != nil {
		t.Fatalf("CreatePod: %v", err)
	}
	if pod.Status.PodIP != ip.String() || pod.Status.Phase != "Running" {
		t.Fatalf("pod status = %+v", pod.Status)
	}
	pods, err := agentClient.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=node-1"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("agent lists pods on node-1: %v, %d pods", err, len(pods.Items))
	}

	stsSrv, err := cp.StartSTS(ctx, harness.STSConfig{Roles: map[string]string{role: "system:serviceaccount:team:app-a"}})
	if err != nil {
		t.Fatalf("StartSTS: %v", err)
	}
	t.Cleanup(func() { stsSrv.Close() })
	client := sts.New(sts.Options{Region: "us-east-1", BaseEndpoint: aws.String(stsSrv.URL()), Retryer: aws.NopRetryer{}})

	tokenFor := func() string {
		t.Helper()
		tr, err := agentClient.CoreV1().ServiceAccounts("team").CreateToken(ctx, "app-a", &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{
				Audiences:      []string{"sts.amazonaws.com"},
				BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("TokenRequest as the agent: %v", err)
		}
		return tr.Status.Token
	}
	assume := func(token string) (*sts.AssumeRoleWithWebIdentityOutput, error) {
		return client.AssumeRoleWithWebIdentity(ctx, &sts.AssumeRoleWithWebIdentityInput{
			RoleArn: aws.String(role), RoleSessionName: aws.String("team.pod-1"), WebIdentityToken: aws.String(token),
		})
	}
	token := tokenFor()
	out, err := assume(token)
	if err != nil {
		t.Fatalf("AssumeRoleWithWebIdentity with a pod-bound token: %v", err)
	}
	if got, want := aws.ToString(out.AssumedRoleUser.Arn), "arn:aws:sts::123456789012:assumed-role/app-a/team.pod-1"; got != want {
		t.Errorf("Arn = %q, want %q", got, want)
	}

	// Another role is not trusted for this subject.
	_, err = client.AssumeRoleWithWebIdentity(ctx, &sts.AssumeRoleWithWebIdentityInput{
		RoleArn: aws.String("arn:aws:iam::123456789012:role/app-b"), RoleSessionName: aws.String("x1"), WebIdentityToken: aws.String(token),
	})
	if peertest.AWSErrorCode(err) != "AccessDenied" {
		t.Errorf("other role: %v, want AccessDenied", err)
	}

	// Once the pod is gone its tokens are worthless, at the API server and
	// at the STS alike.
	if err := cp.DeletePod(ctx, "team", "pod-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := assume(token); peertest.AWSErrorCode(err) != "InvalidIdentityToken" {
		t.Errorf("token of a deleted pod: %v, want InvalidIdentityToken", err)
	}
	trs, err := cp.TokenRequests()
	if err != nil {
		t.Fatal(err)
	}
	var bound int
	for _, tr := range trs {
		if tr.BoundUID == string(pod.UID) {
			bound++
			if tr.User != "system:serviceaccount:credbroker-system:credbroker-agent" || tr.Code != 201 || tr.BoundKind != "Pod" {
				t.Errorf("audited TokenRequest %+v", tr)
			}
		}
	}
	if bound != 1 {
		t.Errorf("audit log has %d TokenRequests bound to the pod, want 1 (all: %+v)", bound, trs)
	}
	if c := stsSrv.Counts(); c.Issued != 1 {
		t.Errorf("Issued = %d, want 1", c.Issued)
	}

	// Restart keeps the data and the signing keys.
	if err := cp.RestartAPIServer(ctx); err != nil {
		t.Fatalf("RestartAPIServer: %v", err)
	}
	if _, err := cp.Client.CoreV1().ServiceAccounts("team").Get(ctx, "app-a", metav1.GetOptions{}); err != nil {
		t.Errorf("ServiceAccount after restart: %v", err)
	}
}

func TestPodsAndMoto(t *testing.T) {
	cp := startControlPlane(t)
	testenv.RequireCommand(t, "moto_server")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	ps, err := harness.NewPods(ctx, cp, "node-1", "cbht")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ps.Close(context.Background()) })
	p, err := ps.Start(ctx, harness.PodSpec{Namespace: "team", Name: "web", IP: netip.MustParseAddr("10.244.251.2")})
	if err != nil {
		t.Fatalf("Pods.Start: %v", err)
	}

	m, err := harness.StartMoto(ctx, harness.MotoConfig{Dir: cp.Dir, Host: netns.ServiceAddr4.String()})
	if err != nil {
		t.Fatalf("StartMoto: %v", err)
	}
	t.Cleanup(m.Stop)
	if _, err := m.CreateRole(ctx, "app-s3"); err != nil {
		t.Fatalf("CreateRole: %v", err)
	}
	// The pod reaches moto through its gateway; moto answers the pod.
	code, _, err := p.Get(ctx, m.URL+"/moto-api/data.json")
	if err != nil || code != 200 {
		t.Fatalf("GET moto from the pod: %d, %v", code, err)
	}
	// A process inside gets exactly the environment given.
	home := t.TempDir()
	out, err := p.Exec(ctx, harness.PodEnv(home, "", nil), "env").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "AWS_CONTAINER_CREDENTIALS_FULL_URI=http://169.254.170.23/v1/credentials") ||
		strings.Contains(string(out), "AWS_ACCESS_KEY_ID") {
		t.Errorf("pod environment:\n%s", out)
	}
	if err := p.Delete(ctx); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := os.Stat(p.NS.Path()); err == nil {
		t.Errorf("namespace %s still exists after Delete", p.NS.Path())
	}
}
