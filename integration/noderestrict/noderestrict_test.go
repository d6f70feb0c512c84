//go:build integration

// Package noderestrict checks, on a real kube-apiserver run as a cluster
// runs it (--authorization-mode=Node,RBAC, NodeRestriction admission, two
// Node objects), that the agent in node-restricted mode can do no more than
// its node's kubelet: the API server, not the agent, refuses it a token for
// a pod on the other node. And that on an API server without constrained
// impersonation, --node-restricted=auto falls back and says so, and
// --node-restricted=required refuses to start.
package noderestrict

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/netns"
	"github.com/credbroker/agent/integration/oidcsts"
	"github.com/credbroker/agent/integration/testenv"
	"github.com/credbroker/agent/pkg/verify"
)

const (
	nodeA, nodeB = "node-a", "node-b"
	agentUser    = "system:serviceaccount:" + harness.AgentNamespace + ":" + harness.AgentServiceAccount
	stsAudience  = "sts.amazonaws.com"
	podSubnet    = "10.244.41.%d" // this suite's /24
)

// cluster is a control plane run like a cluster's, with two nodes and the
// agent's RBAC from the kustomize base.
type cluster struct {
	root string
	dir  string
	cp   *harness.ControlPlane
	uids map[string]string // node name → UID
}

func startCluster(t *testing.T, extraFlags ...string) *cluster {
	return startClusterAdmission(t, true, extraFlags...)
}

// startClusterAdmission starts the cluster with or without the
// NodeRestriction admission plugin.
func startClusterAdmission(t *testing.T, nodeRestriction bool, extraFlags ...string) *cluster {
	t.Helper()
	testenv.RequireCommand(t, "kubectl")
	binDir := testenv.K8sBinDir(t)
	root := testenv.RepoRoot(t)
	c := &cluster{root: root, dir: t.TempDir(), uids: map[string]string{}}
	ctx := context.Background()
	if nodeRestriction {
		extraFlags = append([]string{"--enable-admission-plugins=NodeRestriction"}, extraFlags...)
	}
	var err error
	c.cp, err = harness.StartControlPlane(ctx, harness.ControlPlaneConfig{
		Dir: c.dir, BinDir: binDir, AuthorizationModes: "Node,RBAC", ExtraAPIServerFlags: extraFlags,
	})
	if err != nil {
		t.Fatalf("StartControlPlane: %v", err)
	}
	t.Cleanup(c.cp.Stop)
	for _, n := range []string{nodeA, nodeB} {
		node, err := c.cp.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		c.uids[n] = string(node.UID)
	}
	return c
}

// applyRBAC applies the agent's RBAC files (paths relative to the repo).
func (c *cluster) applyRBAC(t *testing.T, files ...string) {
	t.Helper()
	ctx := context.Background()
	if err := c.cp.EnsureNamespace(ctx, harness.AgentNamespace); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if _, err := c.cp.Kubectl(ctx, "apply", "-f", filepath.Join(c.root, f)); err != nil {
			t.Fatal(err)
		}
	}
}

// agentKubeconfig runs an agent pod on node (as the DaemonSet would) and
// writes a kubeconfig with a token bound to it, as the pod's projected
// ServiceAccount token is: it carries the node's name and UID.
func (c *cluster) agentKubeconfig(t *testing.T, node string) string {
	t.Helper()
	ctx := context.Background()
	pod, err := c.cp.CreatePod(ctx, harness.PodSpec{Namespace: harness.AgentNamespace, Name: "credbroker-agent-" + node,
		ServiceAccount: harness.AgentServiceAccount, NodeName: node, HostNetwork: true})
	if err != nil {
		t.Fatal(err)
	}
	secs := int64(3600)
	tr, err := c.cp.Client.CoreV1().ServiceAccounts(harness.AgentNamespace).CreateToken(ctx, harness.AgentServiceAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &secs,
			BoundObjectRef: &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(c.dir, "agent-"+node+".kubeconfig")
	if err := c.cp.WriteKubeconfig(kc, harness.AgentServiceAccount, tr.Status.Token); err != nil {
		t.Fatal(err)
	}
	return kc
}

// agentClient is a client with the agent's credentials, acting as
// impersonate ("" for itself).
func agentClient(t *testing.T, kc, impersonate string) kubernetes.Interface {
	t.Helper()
	client, err := harness.KubeconfigClient(kc, impersonate)
	if err != nil {
		t.Fatal(err)
	}
	return client
}

func (c *cluster) startAgent(t *testing.T, kc, node, mode string, sts string) (*harness.Agent, error) {
	t.Helper()
	bin := testenv.AgentBinary(t)
	if sts == "" {
		sts = "http://127.0.0.1:1" // never reached: no pod asks
	}
	a, err := harness.StartAgent(context.Background(), harness.AgentConfig{
		Binary: bin, Dir: c.dir, Name: "agent-" + mode, Kubeconfig: kc, NodeName: node,
		Listen:      net.JoinHostPort(netns.ServiceAddr4.String(), "0"),
		STSEndpoint: sts, ExtraArgs: []string{"--node-restricted=" + mode},
		ReadyTimeout: 30 * time.Second,
	})
	if a != nil {
		t.Cleanup(a.Stop)
	}
	return a, err
}

func readyz(t *testing.T, a *harness.Agent) string {
	t.Helper()
	code, body, err := harness.HostGet(context.Background(), a.ProbeURL+"/readyz")
	if err != nil || code != 200 {
		t.Fatalf("/readyz: %d %v", code, err)
	}
	return string(body)
}

func gauge(t *testing.T, a *harness.Agent) float64 {
	t.Helper()
	text, err := a.Metrics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return harness.MetricSum(text, "credbroker_node_restricted", nil)
}

// TestNodeRestricted is the proof on the real API server.
func TestNodeRestricted(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip")
	ctx := context.Background()
	c := startCluster(t)
	c.applyRBAC(t, "deploy/daemonset/rbac.yaml")
	kc := c.agentKubeconfig(t, nodeA)

	if err := netns.AddHostAddr(ctx, netns.ServiceAddr4); err != nil {
		t.Fatal(err)
	}
	sts, err := c.cp.StartSTS(ctx, harness.STSConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sts.Close() })
	role := "arn:aws:iam::" + oidcsts.DefaultAccountID + ":role/app"
	sts.TrustRole(role, "system:serviceaccount:team:app")
	if _, err := c.cp.CreateServiceAccount(ctx, "team", "app", role); err != nil {
		t.Fatal(err)
	}

	agent, err := c.startAgent(t, kc, nodeA, "required", sts.URL())
	if err != nil {
		t.Fatalf("the agent did not start node-restricted: %v", err)
	}
	if got := readyz(t, agent); !strings.Contains(got, "node-restricted: on (TokenRequests, pod reads and Events as system:node:node-a)") {
		t.Errorf("/readyz = %q, want the node-restricted mode", got)
	}
	if g := gauge(t, agent); g != 1 {
		t.Errorf("credbroker_node_restricted = %v, want 1", g)
	}

	// The agent serves a pod on its node.
	pods, err := harness.NewPods(ctx, c.cp, nodeA, "cbnr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pods.Close(context.Background()) })
	web, err := pods.Start(ctx, harness.PodSpec{Namespace: "team", Name: "web-a", ServiceAccount: "app", IP: netip.MustParseAddr(fmt.Sprintf(podSubnet, 10))})
	if err != nil {
		t.Fatal(err)
	}
	fctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	code, body, err := web.Get(fctx, agent.URL)
	if err != nil || code != 200 {
		t.Fatalf("pod on %s: %d %s %v\nagent log:\n%s", nodeA, code, body, err, agent.LogTail(30))
	}
	var creds struct{ AccessKeyId, Token string }
	if err := json.Unmarshal(body, &creds); err != nil || creds.AccessKeyId == "" {
		t.Fatalf("credentials %q: %v", body, err)
	}
	// Made as the node, per the API server's audit log.
	trs, err := c.cp.TokenRequests()
	if err != nil {
		t.Fatal(err)
	}
	var asNode int
	for _, tr := range trs {
		if tr.BoundName == "web-a" && tr.Code == 201 {
			if tr.User != agentUser || tr.ImpersonatedUser != "system:node:"+nodeA {
				t.Errorf("TokenRequest for web-a made by %q as %q, want %s as system:node:%s", tr.User, tr.ImpersonatedUser, agentUser, nodeA)
			}
			asNode++
		}
	}
	if asNode == 0 {
		t.Errorf("no TokenRequest for web-a in the audit log: %+v", trs)
	}

	// A pod on the other node, with the same ServiceAccount (so that the
	// Node authorizer's graph links node-a to it, and the refusal is the
	// NodeRestriction admission plugin's own).
	other, err := c.cp.CreatePod(ctx, harness.PodSpec{Namespace: "team", Name: "web-b", ServiceAccount: "app", NodeName: nodeB,
		IP: netip.MustParseAddr(fmt.Sprintf(podSubnet, 20))})
	if err != nil {
		t.Fatal(err)
	}
	secs := int64(600)
	reqFor := func(p *corev1.Pod) *authenticationv1.TokenRequest {
		return &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			Audiences: []string{stsAudience}, ExpirationSeconds: &secs,
			BoundObjectRef: &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: p.Name, UID: p.UID}}}
	}
	asA := agentClient(t, kc, "system:node:"+nodeA)
	// First the agent's own pod's token is accepted as node-a for web-a: the
	// refusals below are about the other node, not about the client.
	own, err := asA.CoreV1().ServiceAccounts("team").CreateToken(ctx, "app", reqFor(web.Pod), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest as node-a for its own pod: %v", err)
	}
	// The token names its node (KEP-4193), and a receiver can require it.
	v, err := verify.New(verify.Config{Kubernetes: c.cp.Config, Audiences: []string{stsAudience},
		Subjects: []string{"system:serviceaccount:team:app"}, Nodes: []string{nodeA}})
	if err != nil {
		t.Fatal(err)
	}
	id, err := v.Verify(ctx, own.Status.Token)
	if err != nil {
		t.Fatalf("verifying the node-a token: %v", err)
	}
	if id.NodeName != nodeA || id.NodeUID != c.uids[nodeA] || id.PodName != "web-a" {
		t.Errorf("token claims node %q/%q pod %q, want %s/%s web-a", id.NodeName, id.NodeUID, id.PodName, nodeA, c.uids[nodeA])
	}
	if err := id.RequireNode(nodeB, ""); !errors.Is(err, verify.ErrNode) {
		t.Errorf("RequireNode(node-b) = %v, want ErrNode", err)
	}
	for name, tc := range map[string]struct {
		client kubernetes.Interface
	}{
		"as node-a, for the pod on node-b":              {asA},
		"as the agent itself, for the pod on node-b":    {agentClient(t, kc, "")},
		"as node-b (not the token's node), for its pod": {agentClient(t, kc, "system:node:"+nodeB)},
	} {
		_, err := tc.client.CoreV1().ServiceAccounts("team").CreateToken(ctx, "app", reqFor(other), metav1.CreateOptions{})
		var status *apierrors.StatusError
		if !apierrors.IsForbidden(err) || !asStatus(err, &status) || status.ErrStatus.Code != 403 {
			t.Errorf("%s: %v, want 403 from the API server", name, err)
			continue
		}
		t.Logf("%s: 403 %s", name, status.ErrStatus.Message)
	}
	if _, err := asA.CoreV1().ServiceAccounts("team").CreateToken(ctx, "app", reqFor(other), metav1.CreateOptions{}); err == nil ||
		!strings.Contains(err.Error(), "node requested token bound to a pod scheduled on a different node") {
		t.Errorf("as node-a for node-b's pod: %v, want NodeRestriction's refusal", err)
	}

	// A ServiceAccount no pod on node-a runs as is outside the Node
	// authorizer's graph for node-a: what the agent meets for a pod the
	// graph has not caught up with. The agent (broker.nodeGraphLags) and the
	// node suite's audit check match this text and annotation.
	if _, err := c.cp.CreateServiceAccount(ctx, "team", "unplaced", ""); err != nil {
		t.Fatal(err)
	}
	const graphRefusal = "no relationship found between node"
	if _, err := asA.CoreV1().ServiceAccounts("team").CreateToken(ctx, "unplaced", reqFor(web.Pod), metav1.CreateOptions{}); !apierrors.IsForbidden(err) ||
		!strings.Contains(err.Error(), graphRefusal) {
		t.Errorf("as node-a for a ServiceAccount none of its pods runs as: %v, want the Node authorizer's %q", err, graphRefusal)
	}
	trs, err = c.cp.TokenRequests()
	if err != nil {
		t.Fatal(err)
	}
	if last := trs[len(trs)-1]; last.ServiceAccount != "unplaced" || last.Code != 403 || !strings.Contains(last.AuthzReason, graphRefusal) {
		t.Errorf("the audit log's last TokenRequest: %+v, want unplaced's 403 with the authorizer's reason", last)
	}

	// ServiceAccountNodeAudienceRestriction: as a node, only the audiences
	// the pod mounts or RBAC grants to nodes (credbroker-node-token-audiences
	// grants sts.amazonaws.com).
	other1 := reqFor(web.Pod)
	other1.Spec.Audiences = []string{"not-granted.example"}
	if _, err := asA.CoreV1().ServiceAccounts("team").CreateToken(ctx, "app", other1, metav1.CreateOptions{}); !apierrors.IsForbidden(err) ||
		!strings.Contains(err.Error(), `is not authorized to request tokens for audience "not-granted.example"`) {
		t.Errorf("as node-a for its pod, an audience not granted: %v, want 403", err)
	}

	// The chart grants GCP's and Azure's audiences the same way: RBAC takes
	// resource names with "/" and ":" as they are.
	gcpAud := "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/k8s"
	grant := `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: test-cloud-audiences}
rules:
- apiGroups: [""]
  resources: ["api://AzureADTokenExchange", "` + gcpAud + `"]
  verbs: ["request-serviceaccounts-token-audience"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: test-cloud-audiences}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: test-cloud-audiences}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:nodes"}
`
	grantPath := filepath.Join(c.dir, "cloud-audiences.yaml")
	if err := os.WriteFile(grantPath, []byte(grant), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.cp.Kubectl(ctx, "apply", "-f", grantPath); err != nil {
		t.Fatal(err)
	}
	for _, aud := range []string{"api://AzureADTokenExchange", gcpAud} {
		r := reqFor(web.Pod)
		r.Spec.Audiences = []string{aud}
		var err error
		// RBAC's cache sees the new binding within moments.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if _, err = asA.CoreV1().ServiceAccounts("team").CreateToken(ctx, "app", r, metav1.CreateOptions{}); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Errorf("as node-a for its pod, granted audience %s: %v", aud, err)
		}
	}

	// As node-a the agent sees node-a's pods only, and no list without the
	// node's field selector.
	list, err := asA.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeA})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Items {
		if p.Spec.NodeName != nodeA {
			t.Errorf("listed pod %s/%s of %s", p.Namespace, p.Name, p.Spec.NodeName)
		}
	}
	if _, err := asA.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + nodeB}); !apierrors.IsForbidden(err) {
		t.Errorf("listing node-b's pods as node-a: %v, want 403", err)
	}
	if _, err := agentClient(t, kc, "").CoreV1().Pods("").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("listing pods as the agent itself: %v, want 403", err)
	}

	// What the agent's ServiceAccount may do, as RBAC lists it: no
	// cluster-wide token grant, no pod read of its own.
	out, err := c.cp.Kubectl(ctx, "auth", "can-i", "--list", "-n", "team", "--as="+agentUser, "--no-headers")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		verbs := line[strings.LastIndex(line, "["):]
		switch f[0] {
		case "serviceaccounts/token", "serviceaccounts/*", "*.*", "*":
			if strings.Contains(verbs, "[create") || strings.Contains(verbs, " create") || strings.Contains(verbs, "*") {
				t.Errorf("the agent's ServiceAccount may create tokens itself: %q", line)
			}
		case "pods":
			for _, v := range []string{"get", "list", "watch"} {
				if strings.Contains(verbs, "["+v) || strings.Contains(verbs, " "+v) {
					t.Errorf("the agent's ServiceAccount may %s pods itself: %q", v, line)
				}
			}
		}
	}
	t.Logf("kubectl auth can-i --list as the agent:\n%s", out)
	for _, q := range [][]string{
		{"create", "serviceaccounts", "--subresource=token"},
		{"list", "pods"},
		{"impersonate", "users"},
	} {
		out, _ := c.cp.Kubectl(ctx, append([]string{"auth", "can-i", "-n", "team", "--as=" + agentUser}, q...)...)
		if got := lastLine(out); got != "no" {
			t.Errorf("can-i %v as the agent = %q, want no", q, got)
		}
	}

	// Events: a refused pod (the default ServiceAccount) gets a Warning
	// Event, written as the node (the agent's ServiceAccount may not).
	def, err := pods.Start(ctx, harness.PodSpec{Namespace: "team", Name: "default-sa", IP: netip.MustParseAddr(fmt.Sprintf(podSubnet, 11))})
	if err != nil {
		t.Fatal(err)
	}
	if code, _, _ := def.Get(fctx, agent.URL); code != 403 {
		t.Errorf("pod with the default ServiceAccount: %d, want 403", code)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs, err := c.cp.Client.CoreV1().Events("team").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=default-sa"})
		if err != nil {
			t.Fatal(err)
		}
		if len(evs.Items) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("no Event for the refused pod; agent log:\n%s", agent.LogTail(20))
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func asStatus(err error, out **apierrors.StatusError) bool {
	s, ok := err.(*apierrors.StatusError)
	*out = s
	return ok
}

func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// TestFallback: the same cluster with ConstrainedImpersonation off, the
// base RBAC and the opt-in broad component.
func TestFallback(t *testing.T) {
	c := startCluster(t, "--feature-gates=ConstrainedImpersonation=false")
	c.applyRBAC(t, "deploy/daemonset/rbac.yaml", "deploy/daemonset/broad-rbac/rbac.yaml")
	kc := c.agentKubeconfig(t, nodeA)
	if err := netns.AddHostAddr(context.Background(), netns.ServiceAddr4); err != nil {
		t.Fatal(err)
	}

	t.Run("required refuses to start", func(t *testing.T) {
		a, err := c.startAgent(t, kc, nodeA, "required", "")
		if err == nil {
			t.Fatalf("the agent started; /readyz %q", readyz(t, a))
		}
		log, _ := os.ReadFile(filepath.Join(c.dir, "logs", "agent-required.log"))
		for _, want := range []string{"--node-restricted=required", "does not restrict the agent to its node", "cannot impersonate"} {
			if !strings.Contains(string(log), want) {
				t.Errorf("the agent's log lacks %q:\n%s", want, log)
			}
		}
	})
	t.Run("auto falls back and says so", func(t *testing.T) {
		a, err := c.startAgent(t, kc, nodeA, "auto", "")
		if err != nil {
			t.Fatal(err)
		}
		if got := readyz(t, a); !strings.Contains(got, "node-restricted: off (") {
			t.Errorf("/readyz = %q, want the fallback said", got)
		}
		if g := gauge(t, a); g != 0 {
			t.Errorf("credbroker_node_restricted = %v, want 0", g)
		}
		if log := a.LogTail(50); !strings.Contains(log, "falling back to the agent's own RBAC") {
			t.Errorf("the log does not say it falls back:\n%s", log)
		}
	})
}

// TestFallbackWithoutNodeRestriction: constrained impersonation works, but
// without the NodeRestriction admission plugin a node could mint tokens for
// pods of other nodes (the Node authorizer alone checks only the
// ServiceAccount): the probe sees it, and the agent does not act as its node.
func TestFallbackWithoutNodeRestriction(t *testing.T) {
	c := startClusterAdmission(t, false)
	c.applyRBAC(t, "deploy/daemonset/rbac.yaml", "deploy/daemonset/broad-rbac/rbac.yaml")
	kc := c.agentKubeconfig(t, nodeA)
	if err := netns.AddHostAddr(context.Background(), netns.ServiceAddr4); err != nil {
		t.Fatal(err)
	}
	if _, err := c.startAgent(t, kc, nodeA, "required", ""); err == nil {
		t.Fatal("the agent started node-restricted without NodeRestriction")
	}
	log, _ := os.ReadFile(filepath.Join(c.dir, "logs", "agent-required.log"))
	if !strings.Contains(string(log), "does not run the NodeRestriction admission plugin") {
		t.Errorf("the agent's log does not name NodeRestriction:\n%s", log)
	}
	a, err := c.startAgent(t, kc, nodeA, "auto", "")
	if err != nil {
		t.Fatal(err)
	}
	if got := readyz(t, a); !strings.Contains(got, "node-restricted: off (the API server does not run the NodeRestriction admission plugin") {
		t.Errorf("/readyz = %q", got)
	}
}
