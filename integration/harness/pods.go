package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/integration/netns"
)

// RoleAnnotation is the ServiceAccount annotation the agent reads by default.
const RoleAnnotation = "eks.amazonaws.com/role-arn"

// CreateServiceAccount creates (or updates) a ServiceAccount; a non-empty
// roleARN is set as its RoleAnnotation.
func (cp *ControlPlane) CreateServiceAccount(ctx context.Context, namespace, name, roleARN string) (*corev1.ServiceAccount, error) {
	if err := cp.EnsureNamespace(ctx, namespace); err != nil {
		return nil, err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	if roleARN != "" {
		sa.Annotations = map[string]string{RoleAnnotation: roleARN}
	}
	saClient := cp.Client.CoreV1().ServiceAccounts(namespace)
	created, err := saClient.Create(ctx, sa, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		cur, gerr := saClient.Get(ctx, name, metav1.GetOptions{})
		if gerr != nil {
			return nil, fmt.Errorf("getting ServiceAccount %s/%s: %w", namespace, name, gerr)
		}
		cur.Annotations = sa.Annotations
		created, err = saClient.Update(ctx, cur, metav1.UpdateOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("creating ServiceAccount %s/%s: %w", namespace, name, err)
	}
	return created, nil
}

// PodSpec describes a pod the harness creates as if a scheduler had bound
// it and a kubelet had started it.
type PodSpec struct {
	Namespace      string
	Name           string
	ServiceAccount string // default "default"
	NodeName       string // required
	IP             netip.Addr
	IPv6           netip.Addr // optional second address (status.podIPs)
	HostNetwork    bool
	// Phase defaults to Running.
	Phase corev1.PodPhase
}

// CreatePod creates the pod with spec.nodeName set and then, through the
// status subresource, sets the phase, podIP and podIPs, as a kubelet would.
func (cp *ControlPlane) CreatePod(ctx context.Context, s PodSpec) (*corev1.Pod, error) {
	if s.NodeName == "" {
		return nil, errors.New("harness: PodSpec.NodeName is required")
	}
	if s.ServiceAccount == "" {
		s.ServiceAccount = "default"
	}
	if s.Phase == "" {
		s.Phase = corev1.PodRunning
	}
	if err := cp.EnsureNamespace(ctx, s.Namespace); err != nil {
		return nil, err
	}
	automount := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name, Labels: map[string]string{"app": s.Name}},
		Spec: corev1.PodSpec{
			NodeName:                     s.NodeName,
			ServiceAccountName:           s.ServiceAccount,
			AutomountServiceAccountToken: &automount,
			HostNetwork:                  s.HostNetwork,
			Containers: []corev1.Container{{
				Name:  "app",
				Image: "registry.invalid/app:1",
				Env: []corev1.EnvVar{{
					Name: "AWS_CONTAINER_CREDENTIALS_FULL_URI", Value: "http://169.254.170.23/v1/credentials",
				}},
			}},
		},
	}
	pods := cp.Client.CoreV1().Pods(s.Namespace)
	created, err := pods.Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating pod %s/%s: %w", s.Namespace, s.Name, err)
	}
	created.Status.Phase = s.Phase
	if s.IP.IsValid() {
		created.Status.PodIP = s.IP.String()
		created.Status.PodIPs = []corev1.PodIP{{IP: s.IP.String()}}
		if s.IPv6.IsValid() {
			created.Status.PodIPs = append(created.Status.PodIPs, corev1.PodIP{IP: s.IPv6.String()})
		}
	}
	now := metav1.Now()
	created.Status.StartTime = &now
	created.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}
	updated, err := pods.UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("setting status of pod %s/%s: %w", s.Namespace, s.Name, err)
	}
	return updated, nil
}

// DeletePod deletes a pod at once (grace period 0: no kubelet would confirm
// a graceful termination). A pod that is already gone is not an error.
func (cp *ControlPlane) DeletePod(ctx context.Context, namespace, name string) error {
	zero := int64(0)
	err := cp.Client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting pod %s/%s: %w", namespace, name, err)
	}
	return nil
}

// Pods pairs API pods with network namespaces. Its namespaces are named
// Prefix-<n>; Close (or a later NewPods with the same prefix) removes them.
type Pods struct {
	CP       *ControlPlane
	NodeName string
	Prefix   string
	// Attestable gives every pod started from now on a process in its
	// network namespace and in a cgroup named after its UID (see
	// PodCgroupParent), so an agent with --attest=netns can attest it.
	Attestable bool

	mu   sync.Mutex
	next int
	live map[*Pod]struct{}
}

// NewPods removes leftovers of an earlier run with the same prefix and
// returns a Pods that creates pods on nodeName. prefix must be a short
// lowercase name (at most 8 characters keeps the interface names valid).
func NewPods(ctx context.Context, cp *ControlPlane, nodeName, prefix string) (*Pods, error) {
	if err := netns.Cleanup(ctx, prefix); err != nil {
		return nil, fmt.Errorf("removing leftover namespaces %s*: %w", prefix, err)
	}
	return &Pods{CP: cp, NodeName: nodeName, Prefix: prefix, live: make(map[*Pod]struct{})}, nil
}

// Pod is a simulated pod: the API object and the network namespace whose
// traffic carries the pod's IP.
type Pod struct {
	Pod     *corev1.Pod
	NS      *netns.Namespace
	p       *Pods
	sandbox *sandbox // with Pods.Attestable
}

// Start creates the network namespace for s.IP (and s.IPv6) and then the
// pod in the API, bound to the Pods' node. s.NodeName is ignored.
func (ps *Pods) Start(ctx context.Context, s PodSpec) (*Pod, error) {
	ps.mu.Lock()
	ps.next++
	name := fmt.Sprintf("%s-%d", ps.Prefix, ps.next)
	ps.mu.Unlock()
	ns, err := netns.Create(ctx, netns.Spec{Name: name, IP: s.IP, IPv6: s.IPv6})
	if err != nil {
		return nil, err
	}
	s.NodeName = ps.NodeName
	pod, err := ps.CP.CreatePod(ctx, s)
	if err != nil {
		ns.Close()
		return nil, err
	}
	p := &Pod{Pod: pod, NS: ns, p: ps}
	if ps.Attestable {
		if p.sandbox, err = startSandbox(ns, pod.UID); err != nil {
			_ = ps.CP.DeletePod(ctx, pod.Namespace, pod.Name)
			ns.Close()
			return nil, err
		}
	}
	ps.mu.Lock()
	ps.live[p] = struct{}{}
	ps.mu.Unlock()
	return p, nil
}

// Delete deletes the pod from the API (grace 0) and removes its namespace.
func (p *Pod) Delete(ctx context.Context) error {
	err := p.p.CP.DeletePod(ctx, p.Pod.Namespace, p.Pod.Name)
	p.p.mu.Lock()
	delete(p.p.live, p)
	p.p.mu.Unlock()
	return errors.Join(err, p.sandbox.stop(), p.NS.Close())
}

// Exec returns a command that runs inside the pod's network namespace with
// exactly env as its environment (nothing inherited).
func (p *Pod) Exec(ctx context.Context, env []string, args ...string) *exec.Cmd {
	cmd := p.NS.Exec(ctx, args...)
	cmd.Env = env
	if cmd.Env == nil {
		cmd.Env = []string{}
	}
	return cmd
}

// Close deletes every pod still live and removes all namespaces with the
// prefix.
func (ps *Pods) Close(ctx context.Context) error {
	ps.mu.Lock()
	live := make([]*Pod, 0, len(ps.live))
	for p := range ps.live {
		live = append(live, p)
	}
	ps.mu.Unlock()
	var errs []error
	for _, p := range live {
		errs = append(errs, p.Delete(ctx))
	}
	errs = append(errs, netns.Cleanup(ctx, ps.Prefix))
	return errors.Join(errs...)
}

// DefaultCredentialsURL is what pods set AWS_CONTAINER_CREDENTIALS_FULL_URI to.
const DefaultCredentialsURL = "http://169.254.170.23/v1/credentials"

// PodEnv is the environment a pod's SDK client gets: the container
// credentials URI (DefaultCredentialsURL when credentialsURL is empty; the
// SDKs accept any port on 169.254.170.23), region, endpoints and an empty
// HOME, so that nothing but the agent can supply credentials.
func PodEnv(home, credentialsURL string, endpoints map[string]string, extra ...string) []string {
	if credentialsURL == "" {
		credentialsURL = DefaultCredentialsURL
	}
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + home,
		"AWS_CONTAINER_CREDENTIALS_FULL_URI=" + credentialsURL,
		"AWS_REGION=us-east-1",
		"AWS_DEFAULT_REGION=us-east-1",
		"AWS_CONFIG_FILE=" + home + "/.aws/config",
		"AWS_SHARED_CREDENTIALS_FILE=" + home + "/.aws/credentials",
		"AWS_EC2_METADATA_DISABLED=true",
		"LANG=C.UTF-8",
	}
	// pyenv's shims (aws, python3 on some machines) find their
	// interpreter through these, not through HOME.
	for _, k := range []string{"PYENV_ROOT", "PYENV_VERSION"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	for k, v := range endpoints {
		env = append(env, k+"="+v)
	}
	return append(env, extra...)
}

// HTTPClient returns a client whose connections start inside the pod's
// network namespace, so servers on the host see the pod's IP as the source.
// Keep-alives are off: every request is a new connection from the pod, as
// it is for the SDKs' credential fetches.
func (p *Pod) HTTPClient() *http.Client {
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{DialContext: p.NS.DialContext, DisableKeepAlives: true},
	}
}

// Get fetches url from inside the pod and returns the status and the body.
func (p *Pod) Get(ctx context.Context, url string) (int, []byte, error) {
	return Get(ctx, p.HTTPClient(), url)
}

// HostGet fetches url from the host's own network namespace: the caller is
// what a hostNetwork pod would be.
func HostGet(ctx context.Context, url string) (int, []byte, error) {
	return Get(ctx, &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}, url)
}

// Get sends one GET with c and returns the status and up to 1 MiB of body.
func Get(ctx context.Context, c *http.Client, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}
