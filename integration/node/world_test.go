//go:build integration

package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/node/workload/lines"
	"github.com/credbroker/agent/integration/oidcsts"
	"github.com/credbroker/agent/integration/testenv"
)

// The node suite shares one cluster: bringing a node up takes about 15 s,
// and rolling the DaemonSet out another 15.
var (
	worldOnce sync.Once
	theWorld  *world
	worldErr  error
	// worldMissing is set when a prerequisite is missing (skip, or fail
	// under CI); worldErr when starting failed.
	worldMissing string
)

const (
	account       = "123456789012"
	workloadImage = "localhost/credbroker/workload:test"
	agentNS       = "credbroker-system"
	agentDS       = "credbroker-agent"
	credsURL      = "http://169.254.170.23/v1/credentials"
)

type world struct {
	node *Node
	sts  *oidcsts.Server
	root string
	// rolloutReady is how long the first rollout took (apply to Ready).
	rolloutReady time.Duration
	// components are deploy/daemonset components applyOverlay adds
	// (besides the startup taint), e.g. attest-container.
	components []string
}

func roleARN(name string) string { return "arn:aws:iam::" + account + ":role/" + name }

func TestMain(m *testing.M) {
	code := m.Run()
	if theWorld != nil {
		theWorld.node.Stop()
	}
	os.Exit(code)
}

// need returns the shared cluster, starting it on first use.
func need(t *testing.T) *world {
	t.Helper()
	testenv.RequireRoot(t)
	worldOnce.Do(func() { theWorld, worldErr = startWorld() })
	if worldMissing != "" {
		testenv.Unavailable(t, "%s", worldMissing)
	}
	if worldErr != nil {
		t.Fatalf("starting the node: %v", worldErr)
	}
	return theWorld
}

func startWorld() (*world, error) {
	for _, c := range []string{"nsenter", "containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "kubectl", "ip"} {
		if _, err := exec.LookPath(c); err != nil {
			worldMissing = fmt.Sprintf("command %s not found (.ci/run installs containerd, runc, iptables and containernetworking-plugins)", c)
			return nil, nil
		}
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		worldMissing = "CNI plugins not found in /usr/lib/cni (Debian package containernetworking-plugins)"
		return nil, nil
	}
	root, err := harness.RepoRoot()
	if err != nil {
		return nil, err
	}
	var images []string
	for _, img := range []string{"agent-image.tar", "pause-image.tar", "workload-image.tar"} {
		p := filepath.Join(root, "bin", img)
		if _, err := os.Stat(p); err != nil {
			worldMissing = fmt.Sprintf("%s not built; run `make node-images`", p)
			return nil, nil
		}
		images = append(images, p)
	}
	bin, err := harness.K8sBinDir()
	if err == nil {
		for _, b := range []string{"kubelet", "kube-controller-manager", "kube-scheduler"} {
			if _, err2 := os.Stat(filepath.Join(bin, b)); err2 != nil {
				err = err2
			}
		}
	}
	if err != nil {
		worldMissing = fmt.Sprintf("Kubernetes binaries: %v; run `make k8sbin`", err)
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var taints []string
	if withStartupTaint {
		taints = []string{StartupTaint + ":NoSchedule"}
	}
	n, err := Start(ctx, Config{BinDir: bin, Images: images, RegisterWithTaints: taints})
	if err != nil {
		return nil, err
	}
	w := &world{node: n, root: root}
	w.sts, err = n.CP.StartSTS(ctx, harness.STSConfig{Addr: HostAddr.String() + ":0"})
	if err != nil {
		n.Stop()
		return nil, err
	}
	start := time.Now()
	if err := w.applyOverlay(ctx); err != nil {
		n.Stop()
		return nil, err
	}
	if err := w.waitRollout(ctx, 2*time.Minute); err != nil {
		n.Stop()
		return nil, err
	}
	w.rolloutReady = time.Since(start)
	return w, nil
}

// StartupTaint is the taint the node registers with and the agent removes
// (the key deploy/daemonset/startup-taint passes to --remove-startup-taint).
const StartupTaint = "credbroker.io/agent-not-ready"

// withStartupTaint registers the node with StartupTaint and has the agent
// remove it.
const withStartupTaint = true

// applyOverlay writes the overlay a cluster operator would (image tag,
// region, STS endpoint, the startup taint) over deploy/daemonset and applies
// it with kubectl apply -k.
func (w *world) applyOverlay(ctx context.Context) error {
	dir := filepath.Join(w.node.Dir, "overlay")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// kustomize takes only relative paths to other kustomizations.
	base, err := filepath.Rel(dir, filepath.Join(w.root, "deploy/daemonset"))
	if err != nil {
		return err
	}
	var comps []string
	if withStartupTaint {
		comps = append(comps, "startup-taint")
	}
	comps = append(comps, w.components...)
	components := ""
	if len(comps) > 0 {
		components = "components:\n"
		for _, c := range comps {
			components += "  - " + filepath.Join(base, c) + "\n"
		}
	}
	k := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - %s
%simages:
  - name: ghcr.io/credbroker/agent
    newTag: v0.1.0
patches:
  - target: {kind: DaemonSet, name: credbroker-agent}
    patch: |-
      - op: replace
        path: /spec/template/spec/containers/0/env/1
        value: {name: AWS_REGION, value: eu-west-1}
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --sts-endpoint=%s
`, base, components, w.sts.URL())
	if m := os.Getenv("CREDBROKER_NODE_ATTEST"); m != "" {
		// The last --attest wins over the base's.
		k += fmt.Sprintf(`      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --attest=%s
`, m)
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		return err
	}
	if _, err := w.node.CP.Kubectl(ctx, "apply", "-k", dir); err != nil {
		return err
	}
	return nil
}

// attestMode is the agent's --attest: the base's netns, unless
// CREDBROKER_NODE_ATTEST overrides it (off shows what the attest tests
// catch).
func (w *world) attestMode() string {
	if m := os.Getenv("CREDBROKER_NODE_ATTEST"); m != "" {
		return m
	}
	return "netns"
}

// waitRollout waits until the DaemonSet's rollout is complete: every pod
// updated and available.
func (w *world) waitRollout(ctx context.Context, timeout time.Duration) error {
	c := w.node.CP.Client
	return poll(ctx, timeout, "the DaemonSet rollout", func() (bool, error) {
		ds, err := c.AppsV1().DaemonSets(agentNS).Get(ctx, agentDS, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		s := ds.Status
		return s.ObservedGeneration >= ds.Generation && s.DesiredNumberScheduled == 1 &&
			s.UpdatedNumberScheduled == 1 && s.NumberAvailable == 1 && s.NumberUnavailable == 0 &&
			s.CurrentNumberScheduled == 1 && s.NumberReady == 1 && podCount(ctx, w) == 1, nil
	})
}

func podCount(ctx context.Context, w *world) int {
	l, err := w.node.CP.Client.CoreV1().Pods(agentNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=credbroker-agent"})
	if err != nil {
		return -1
	}
	return len(l.Items)
}

// agentPod returns the agent's running pod.
func (w *world) agentPod(ctx context.Context, t *testing.T) *corev1.Pod {
	t.Helper()
	l, err := w.node.CP.Client.CoreV1().Pods(agentNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=credbroker-agent"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range l.Items {
		if l.Items[i].DeletionTimestamp == nil && l.Items[i].Status.Phase == corev1.PodRunning {
			return &l.Items[i]
		}
	}
	t.Fatalf("no running agent pod among %d", len(l.Items))
	return nil
}

// containerPID returns the host PID of a container's init process.
func (w *world) containerPID(ctx context.Context, t *testing.T, containerID string) int {
	t.Helper()
	id := strings.TrimPrefix(containerID, "containerd://")
	out, err := w.node.CtrOutput(ctx, "tasks", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == id {
			pid, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return pid
		}
	}
	t.Fatalf("no task for container %s in:\n%s", id, out)
	return 0
}

// containerStatus returns the host PID of a container's init process and
// the fields of its /proc/PID/status (Uid, CapEff, NoNewPrivs, ...).
func (w *world) containerStatus(ctx context.Context, t *testing.T, containerID string) (int, map[string]string) {
	t.Helper()
	pid := w.containerPID(ctx, t, containerID)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, l := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	return pid, fields
}

// workloadSpec is a pod running the workload client with only the agent's
// URL (plus region and the test STS endpoint), no mounted token.
type workloadSpec struct {
	ns, name, sa string
	args         []string
	hostNetwork  bool
	restart      corev1.RestartPolicy
	grace        int64 // terminationGracePeriodSeconds
	// hostDir, when set, is a host directory mounted at /out (for the
	// workload's -out file).
	hostDir string
}

func (w *world) createWorkload(ctx context.Context, t *testing.T, s workloadSpec) *corev1.Pod {
	t.Helper()
	if s.restart == "" {
		s.restart = corev1.RestartPolicyNever
	}
	no := false
	grace := s.grace
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.ns, Name: s.name, Labels: map[string]string{"app": "workload"}},
		Spec: corev1.PodSpec{
			ServiceAccountName:            s.sa,
			AutomountServiceAccountToken:  &no,
			RestartPolicy:                 s.restart,
			HostNetwork:                   s.hostNetwork,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name:  "client",
				Image: workloadImage,
				Args:  s.args,
				Env: []corev1.EnvVar{
					{Name: "AWS_CONTAINER_CREDENTIALS_FULL_URI", Value: credsURL},
					{Name: "AWS_REGION", Value: "eu-west-1"},
					{Name: "AWS_ENDPOINT_URL_STS", Value: w.sts.URL()},
				},
			}},
		},
	}
	if s.hostDir != "" {
		pod.Spec.Volumes = []corev1.Volume{{Name: "out", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: s.hostDir}}}}
		pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "out", MountPath: "/out"}}
	}
	p, err := w.node.CP.Client.CoreV1().Pods(s.ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s/%s: %v", s.ns, s.name, err)
	}
	return p
}

// setupApp creates a namespace and a ServiceAccount for a role the STS
// trusts, and returns the role ARN.
func (w *world) setupApp(ctx context.Context, t *testing.T, ns, sa string) string {
	t.Helper()
	cp := w.node.CP
	if err := cp.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	role := roleARN(ns + "-" + sa)
	if _, err := cp.Client.CoreV1().ServiceAccounts(ns).Get(ctx, sa, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		if _, err := cp.CreateServiceAccount(ctx, ns, sa, role); err != nil {
			t.Fatal(err)
		}
	}
	w.sts.TrustRole(role, "system:serviceaccount:"+ns+":"+sa)
	// The default ServiceAccount comes from the controller manager; pods
	// in this namespace wait for it otherwise.
	if err := poll(ctx, 30*time.Second, "the default ServiceAccount in "+ns, func() (bool, error) {
		_, err := cp.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	return role
}

// waitPhase waits until the pod reaches one of phases and returns it.
func (w *world) waitPhase(ctx context.Context, t *testing.T, ns, name string, timeout time.Duration, phases ...corev1.PodPhase) *corev1.Pod {
	t.Helper()
	var last *corev1.Pod
	err := poll(ctx, timeout, fmt.Sprintf("pod %s/%s to be %v", ns, name, phases), func() (bool, error) {
		p, err := w.node.CP.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = p
		for _, ph := range phases {
			if p.Status.Phase == ph {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		if last != nil {
			t.Fatalf("%v; last status: %s %+v", err, last.Status.Phase, last.Status.ContainerStatuses)
		}
		t.Fatal(err)
	}
	return last
}

// result is the workload client's output.
type result struct {
	rounds  []lines.Round
	summary lines.Summary
}

// firstSDKError describes the SDK errors the client printed, for the test
// log: the first, the last, and how many rounds failed.
func (r result) firstSDKError() string {
	var first, last string
	var n int
	for _, rl := range r.rounds {
		if rl.SDKError != "" {
			n++
			if first == "" {
				first = fmt.Sprintf("round %d at %s: %s", rl.N, rl.Time, rl.SDKError)
			}
			last = fmt.Sprintf("round %d at %s: %s", rl.N, rl.Time, rl.SDKError)
		}
	}
	if n == 0 {
		return "none"
	}
	return fmt.Sprintf("%d rounds; first %s; last %s", n, first, last)
}

// logs reads a container's log through the API server (which asks the
// kubelet); previous selects the last terminated instance.
func (w *world) logs(ctx context.Context, t *testing.T, ns, name string, previous bool) result {
	t.Helper()
	r, err := w.tryLogs(ctx, ns, name, previous)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// tryLogs is logs returning an error, also for a log with no output yet.
func (w *world) tryLogs(ctx context.Context, ns, name string, previous bool) (result, error) {
	var r result
	rc, err := w.node.CP.Client.CoreV1().Pods(ns).GetLogs(name, &corev1.PodLogOptions{Previous: previous}).Stream(ctx)
	if err != nil {
		return r, fmt.Errorf("logs of %s/%s: %w", ns, name, err)
	}
	defer rc.Close()
	raw, _ := io.ReadAll(rc)
	r = parseResult(raw)
	if !r.summary.Summary && len(r.rounds) == 0 {
		return r, fmt.Errorf("no output from %s/%s:\n%s", ns, name, raw)
	}
	return r, nil
}

// parseResult reads the workload client's JSON lines.
func parseResult(raw []byte) result {
	var r result
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := sc.Bytes()
		if bytes.Contains(line, []byte(`"summary":true`)) {
			_ = json.Unmarshal(line, &r.summary)
			continue
		}
		var rl lines.Round
		if json.Unmarshal(line, &rl) == nil && rl.N > 0 {
			r.rounds = append(r.rounds, rl)
		}
	}
	return r
}

// probe GETs a URL from inside the node's network namespace (as the
// kubelet's probes do).
func (w *world) probe(ctx context.Context, url string) (int, error) {
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: w.node.NS.DialContext, DisableKeepAlives: true}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

var _ = appsv1.DaemonSet{}
