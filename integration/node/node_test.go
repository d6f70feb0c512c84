//go:build integration

package node

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/integration/harness"
)

// TestDaemonSetReady: `kubectl apply -k` of an operator's overlay over
// deploy/daemonset rolls out on a real kubelet: the init container put the
// addresses on the node, the agent runs as UID 64023 with only
// NET_BIND_SERVICE effective, its probes pass (it is Ready).
func TestDaemonSetReady(t *testing.T) {
	w := need(t)
	ctx := context.Background()
	t.Logf("DaemonSet applied to Ready in %v", w.rolloutReady.Round(100*time.Millisecond))
	pod := w.agentPod(ctx, t)
	if len(pod.Status.InitContainerStatuses) != 1 || pod.Status.InitContainerStatuses[0].State.Terminated == nil ||
		pod.Status.InitContainerStatuses[0].State.Terminated.ExitCode != 0 {
		t.Errorf("init container: %+v", pod.Status.InitContainerStatuses)
	}
	var ready bool
	for _, c := range pod.Status.Conditions {
		ready = ready || (c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue)
	}
	if !ready {
		t.Errorf("agent pod not Ready: %+v", pod.Status.Conditions)
	}
	// The addresses, in the node's network namespace (the node's "host").
	out, err := w.node.NSCommand(ctx, "ip", "-o", "addr", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "169.254.170.23/32") {
		t.Errorf("169.254.170.23 not on the node:\n%s", out)
	}
	// The agent process: non-root, NET_BIND_SERVICE (bit 10) only.
	_, fields := w.containerStatus(ctx, t, pod.Status.ContainerStatuses[0].ContainerID)
	if u := strings.Fields(fields["Uid"]); len(u) < 2 || u[0] != "64023" || u[1] != "64023" {
		t.Errorf("agent Uid %q, want 64023", fields["Uid"])
	}
	if fields["CapEff"] != "0000000000000400" || fields["CapPrm"] != "0000000000000400" {
		t.Errorf("agent CapEff %s CapPrm %s, want only NET_BIND_SERVICE (0x400)", fields["CapEff"], fields["CapPrm"])
	}
	if fields["NoNewPrivs"] != "1" {
		t.Errorf("NoNewPrivs %q (allowPrivilegeEscalation: false)", fields["NoNewPrivs"])
	}
	// Probes, as the kubelet makes them.
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, err := w.probe(ctx, "http://127.0.0.1:2703"+p); err != nil || code != 200 {
			t.Errorf("probe %s: %d %v", p, code, err)
		}
	}
}

// TestWorkloads: real containers with only AWS_CONTAINER_CREDENTIALS_FULL_URI
// and no mounted token get their own role, checked at the verifying STS;
// the default ServiceAccount and a hostNetwork pod get 403. The admission
// policy admitted the agent's TokenRequests.
func TestWorkloads(t *testing.T) {
	w := need(t)
	ctx := context.Background()
	roleA := w.setupApp(ctx, t, "team-a", "app")
	roleB := w.setupApp(ctx, t, "team-b", "app")
	before := w.sts.Counts()
	for _, c := range []struct {
		ns, name, sa string
		hostNet      bool
		wantRole     string // empty: refused with 403
	}{
		{"team-a", "client", "app", false, roleA},
		{"team-b", "client", "app", false, roleB},
		{"team-a", "default-sa", "default", false, ""},
		{"team-a", "host-net", "app", true, ""},
	} {
		t.Run(c.ns+"/"+c.name, func(t *testing.T) {
			w.createWorkload(ctx, t, workloadSpec{ns: c.ns, name: c.name, sa: c.sa, hostNetwork: c.hostNet, args: []string{"-rounds", "1"}})
			t.Cleanup(func() { _ = w.node.CP.Client.CoreV1().Pods(c.ns).Delete(ctx, c.name, metav1.DeleteOptions{}) })
			p := w.waitPhase(ctx, t, c.ns, c.name, 90*time.Second, corev1.PodSucceeded, corev1.PodFailed)
			r := w.logs(ctx, t, c.ns, c.name, false)
			if len(r.rounds) != 1 {
				t.Fatalf("rounds: %+v", r.rounds)
			}
			got := r.rounds[0]
			if c.wantRole == "" {
				if p.Status.Phase != corev1.PodFailed || got.RawStatus != 403 || got.Arn != "" {
					t.Errorf("want 403 and no identity, got phase %s %+v", p.Status.Phase, got)
				}
				return
			}
			roleName := c.wantRole[strings.LastIndex(c.wantRole, "/")+1:]
			if p.Status.Phase != corev1.PodSucceeded || got.RawStatus != 200 ||
				!strings.HasPrefix(got.Arn, "arn:aws:sts::"+account+":assumed-role/"+roleName+"/") {
				t.Errorf("want role %s, got phase %s %+v", roleName, p.Status.Phase, got)
			}
			if n := w.sts.PodCalls(string(p.UID)); n < 1 {
				t.Errorf("STS saw %d AssumeRoleWithWebIdentity calls with a token bound to this pod", n)
			}
		})
	}
	after := w.sts.Counts()
	t.Logf("STS: %d AssumeRoleWithWebIdentity (%d issued, %d denied), %d GetCallerIdentity",
		after.AssumeRole-before.AssumeRole, after.Issued-before.Issued, after.Denied-before.Denied, after.GetCallerIdentity-before.GetCallerIdentity)
	trs, err := w.node.CP.TokenRequests()
	if err != nil {
		t.Fatal(err)
	}
	// The base's RBAC is node-restricted: every TokenRequest the agent
	// makes goes as its node. Its start-up probe asks for a pod that does
	// not exist and must be answered 404 by NodeRestriction; it mints
	// nothing and is not a refusal of a real pod.
	// A refusal because the node authorizer's graph did not yet hold a new
	// pod is the API server catching up, not a refused pod, when the same
	// ServiceAccount's token was admitted after it.
	var agentOK, agentRefused, probes int
	asNode := "system:node:" + w.node.Name
	for i, tr := range trs {
		if !strings.HasSuffix(tr.User, ":credbroker-agent") {
			continue
		}
		switch {
		case tr.BoundName == "credbroker-node-restriction-probe.invalid" && tr.Code == 404:
			probes++
		case tr.Code == 201 && tr.BoundKind == "Pod" && tr.ImpersonatedUser == asNode:
			agentOK++
		case tr.Code == 403 && strings.Contains(tr.AuthzReason, "no relationship found between node") && admittedLater(trs[i+1:], tr):
			t.Logf("agent TokenRequest for %s/%s met the node authorizer before its graph held the pod; admitted on a later try", tr.Namespace, tr.ServiceAccount)
		default:
			agentRefused++
			t.Logf("agent TokenRequest not as %s or refused: %+v", asNode, tr)
		}
	}
	if agentOK < 2 || agentRefused != 0 || probes < 1 {
		t.Errorf("agent TokenRequests as %s: %d admitted, %d refused or made otherwise, %d start-up probes", asNode, agentOK, agentRefused, probes)
	}
}

// admittedLater reports whether a TokenRequest for refused's ServiceAccount
// was admitted among later.
func admittedLater(later []harness.TokenRequest, refused harness.TokenRequest) bool {
	for _, tr := range later {
		if tr.Code == 201 && tr.Namespace == refused.Namespace && tr.ServiceAccount == refused.ServiceAccount && tr.ImpersonatedUser == refused.ImpersonatedUser {
			return true
		}
	}
	return false
}
