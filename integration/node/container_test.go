//go:build integration

package node

// Container-level attestation on the real node (issue 20): the agent, rolled
// out with the deploy/daemonset/attest-container component (--attest=container,
// SYS_PTRACE added), names the container whose process holds each connection.
// A hostNetwork pod gets its own role; a container whose image its
// ServiceAccount does not list gets 403 ImageNotAllowed and an Event; an
// ephemeral container added through the API server's ephemeralcontainers
// subresource (as kubectl debug does) is refused unless its ServiceAccount
// allows ephemeral containers, and served when it does.

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Annotations the agent reads in container mode (pkg/broker).
const (
	allowedImagesAnnotation  = "credbroker.io/allowed-images"
	allowEphemeralAnnotation = "credbroker.io/allow-ephemeral-containers"
)

// useContainerMode rolls the agent out with --attest=container for the rest
// of the test, and back to the base's mode afterwards.
func (w *world) useContainerMode(ctx context.Context, t *testing.T) {
	t.Helper()
	if m := os.Getenv("CREDBROKER_NODE_ATTEST"); m != "" {
		t.Skipf("CREDBROKER_NODE_ATTEST=%s overrides the component's --attest", m)
	}
	w.components = []string{"attest-container"}
	t.Cleanup(func() {
		w.components = nil
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := w.applyOverlay(ctx); err != nil {
			t.Errorf("restoring the base's DaemonSet: %v", err)
			return
		}
		if err := w.waitRollout(ctx, 2*time.Minute); err != nil {
			t.Errorf("rolling the base back out: %v", err)
		}
	})
	if err := w.applyOverlay(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.waitRollout(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	pod := w.agentPod(ctx, t)
	args := pod.Spec.Containers[0].Args
	if !strings.Contains(strings.Join(args, " "), "--attest=container") {
		t.Fatalf("the agent runs with %q, want --attest=container", args)
	}
	// Exactly one capability more than netns mode (TestAttestPrivileges):
	// CAP_SYS_PTRACE (bit 19) besides CAP_NET_BIND_SERVICE (bit 10),
	// effective through the binary's permitted-only file capabilities.
	pid := w.containerPID(ctx, t, pod.Status.ContainerStatuses[0].ContainerID)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(l, ":")
		v = strings.TrimSpace(v)
		switch k {
		case "CapEff", "CapPrm", "CapBnd":
			if v != "0000000000080400" {
				t.Errorf("agent %s = %s, want 0000000000080400 (NET_BIND_SERVICE, SYS_PTRACE)", k, v)
			}
		case "Uid":
			if f := strings.Fields(v); len(f) == 0 || f[0] != "64023" {
				t.Errorf("agent Uid %s, want 64023", v)
			}
		}
	}
}

// annotate sets annotations on a ServiceAccount.
func (w *world) annotate(ctx context.Context, t *testing.T, ns, name string, kv map[string]string) {
	t.Helper()
	c := w.node.CP.Client.CoreV1().ServiceAccounts(ns)
	sa, err := c.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sa.Annotations == nil {
		sa.Annotations = map[string]string{}
	}
	for k, v := range kv {
		sa.Annotations[k] = v
	}
	if _, err := c.Update(ctx, sa, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// runOnce runs one workload round in a pod and returns its output once the
// pod has ended.
func (w *world) runOnce(ctx context.Context, t *testing.T, s workloadSpec) result {
	t.Helper()
	s.args = []string{"-rounds", "1"}
	w.createWorkload(ctx, t, s)
	w.waitPhase(ctx, t, s.ns, s.name, 2*time.Minute, corev1.PodSucceeded, corev1.PodFailed)
	return w.logs(ctx, t, s.ns, s.name, false)
}

// events returns the reasons and messages of the Events on a pod.
func (w *world) events(ctx context.Context, ns, pod string) ([]string, error) {
	l, err := w.node.CP.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range l.Items {
		out = append(out, e.Reason+": "+e.Message)
	}
	return out, nil
}

// agentLog returns the running agent's log.
func (w *world) agentLog(ctx context.Context, t *testing.T) string {
	t.Helper()
	p := w.agentPod(ctx, t)
	rc, err := w.node.CP.Client.CoreV1().Pods(agentNS).GetLogs(p.Name, &corev1.PodLogOptions{Container: "agent"}).Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return string(b)
}

func TestContainerAttestation(t *testing.T) {
	w := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	w.useContainerMode(ctx, t)

	t.Run("a hostNetwork pod gets its own role", func(t *testing.T) {
		ns, sa := "ctr-host", "exporter"
		role := w.setupApp(ctx, t, ns, sa)
		r := w.runOnce(ctx, t, workloadSpec{ns: ns, name: "host-client", sa: sa, hostNetwork: true})
		if !servedRole(r, role) {
			t.Fatalf("hostNetwork pod: %+v; SDK errors: %s", r.summary, r.firstSDKError())
		}
		log := w.agentLog(ctx, t)
		if !strings.Contains(log, `"pod":"host-client"`) || !strings.Contains(log, `"container":"client"`) {
			t.Errorf("the agent's grant trace does not name the hostNetwork pod's container")
		}
	})

	t.Run("an image the ServiceAccount does not list is refused", func(t *testing.T) {
		ns := "ctr-images"
		w.setupApp(ctx, t, ns, "strict")
		w.annotate(ctx, t, ns, "strict", map[string]string{allowedImagesAnnotation: "registry.example/team/*, sha256:0000000000000000000000000000000000000000000000000000000000000000"})
		role := w.setupApp(ctx, t, ns, "local")
		w.annotate(ctx, t, ns, "local", map[string]string{allowedImagesAnnotation: "registry.example/team/*, localhost/credbroker/*"})
		// The agent's ServiceAccount watch sees the annotations long before
		// the pods below start; were it late, the strict pod would be
		// served and the test fail, never pass wrongly.
		r := w.runOnce(ctx, t, workloadSpec{ns: ns, name: "strict-client", sa: "strict"})
		if r.summary.SDKOK != 0 || !strings.Contains(r.firstSDKError(), "ImageNotAllowed") || r.summary.RawFailed["403"] != 1 {
			t.Fatalf("disallowed image: %+v; SDK errors: %s", r.summary, r.firstSDKError())
		}
		if err := poll(ctx, 30*time.Second, "an ImageNotAllowed Event on the pod", func() (bool, error) {
			evs, err := w.events(ctx, ns, "strict-client")
			for _, e := range evs {
				if strings.HasPrefix(e, "ImageNotAllowed: ") && strings.Contains(e, "container client") && strings.Contains(e, allowedImagesAnnotation) {
					return true, nil
				}
			}
			return false, err
		}); err != nil {
			evs, _ := w.events(ctx, ns, "strict-client")
			t.Fatalf("%v; Events: %q", err, evs)
		}
		r = w.runOnce(ctx, t, workloadSpec{ns: ns, name: "local-client", sa: "local"})
		if !servedRole(r, role) {
			t.Fatalf("listed image: %+v; SDK errors: %s", r.summary, r.firstSDKError())
		}
	})

	t.Run("ephemeral containers", func(t *testing.T) {
		ns := "ctr-debug"
		w.setupApp(ctx, t, ns, "plain")
		role := w.setupApp(ctx, t, ns, "debuggable")
		w.annotate(ctx, t, ns, "debuggable", map[string]string{allowEphemeralAnnotation: "true"})
		for _, c := range []struct {
			sa, pod string
			served  bool
		}{
			{"plain", "debugged", false},
			{"debuggable", "debugged-ok", true},
		} {
			t.Run(c.pod, func(t *testing.T) {
				w.createWorkload(ctx, t, workloadSpec{ns: ns, name: c.pod, sa: c.sa, args: []string{"-duration", "10m", "-interval", "5s"}})
				w.waitPhase(ctx, t, ns, c.pod, 2*time.Minute, corev1.PodRunning)
				r := w.debug(ctx, t, ns, c.pod)
				switch {
				case c.served && !servedRole(r, role):
					t.Fatalf("ephemeral container allowed by %s: %+v; SDK errors: %s", allowEphemeralAnnotation, r.summary, r.firstSDKError())
				case !c.served && (r.summary.SDKOK != 0 || !strings.Contains(r.firstSDKError(), "EphemeralContainerNotAllowed") || r.summary.RawFailed["403"] != 1):
					t.Fatalf("ephemeral container: %+v; SDK errors: %s", r.summary, r.firstSDKError())
				}
				// The pod's own container is served throughout.
				main, err := w.tryLogs(ctx, ns, c.pod, false)
				if err != nil || len(main.rounds) == 0 || main.rounds[len(main.rounds)-1].Arn == "" {
					t.Errorf("the pod's own container: %v, %+v", err, main.rounds)
				}
			})
		}
	})
}

// debug adds an ephemeral container running one workload round to a pod
// through the ephemeralcontainers subresource, as kubectl debug does, and
// returns its output once it has ended.
func (w *world) debug(ctx context.Context, t *testing.T, ns, pod string) result {
	t.Helper()
	c := w.node.CP.Client.CoreV1().Pods(ns)
	p, err := c.Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Spec.EphemeralContainers = append(p.Spec.EphemeralContainers, corev1.EphemeralContainer{
		EphemeralContainerCommon: corev1.EphemeralContainerCommon{
			Name:  "debugger",
			Image: workloadImage,
			Args:  []string{"-rounds", "1"},
			Env:   p.Spec.Containers[0].Env,
		},
	})
	if _, err := c.UpdateEphemeralContainers(ctx, pod, p, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("adding an ephemeral container: %v", err)
	}
	if err := poll(ctx, 2*time.Minute, "the ephemeral container to finish", func() (bool, error) {
		p, err := c.Get(ctx, pod, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, s := range p.Status.EphemeralContainerStatuses {
			if s.Name == "debugger" && s.State.Terminated != nil {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Fatal(err)
	}
	rc, err := c.GetLogs(pod, &corev1.PodLogOptions{Container: "debugger"}).Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	raw, _ := io.ReadAll(rc)
	r := parseResult(raw)
	if !r.summary.Summary {
		t.Fatalf("no summary from the ephemeral container:\n%s", raw)
	}
	return r
}

// servedRole reports whether a one-round workload got role's credentials.
func servedRole(r result, role string) bool {
	return r.summary.SDKOK == 1 && len(r.rounds) == 1 && roleOf(r.rounds[0].Arn) == roleName(role) && r.rounds[0].RawStatus == 200
}
