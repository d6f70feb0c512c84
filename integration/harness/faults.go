package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// Faults on the control plane, for tests of what the agent does while the
// API server is unreachable or a pod's sandbox changes under it.

// FreezeAPIServer stops kube-apiserver with SIGSTOP: the kernel still
// accepts TCP connections on its port (up to the listen backlog), but
// nothing reads or answers them, as with a hung or overloaded API server.
// ThawAPIServer (SIGCONT) resumes it; KillAPIServer kills it even while
// frozen. A frozen API server ignores the SIGTERM of Stop until thawed or
// killed, so register ThawAPIServer with t.Cleanup.
func (cp *ControlPlane) FreezeAPIServer() error {
	return cp.signalAPIServer(syscall.SIGSTOP)
}

// ThawAPIServer resumes a frozen kube-apiserver. Thawing one that is not
// frozen, or not running, does nothing.
func (cp *ControlPlane) ThawAPIServer() error {
	err := cp.signalAPIServer(syscall.SIGCONT)
	if errors.Is(err, errAPIServerNotRunning) {
		return nil
	}
	return err
}

// KillAPIServer kills kube-apiserver with SIGKILL (frozen or not) and waits
// for it to exit: open connections are reset and new ones refused until
// StartAPIServer. etcd keeps running.
func (cp *ControlPlane) KillAPIServer() {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.api != nil {
		cp.api.Kill()
	}
}

var errAPIServerNotRunning = errors.New("harness: kube-apiserver is not running")

func (cp *ControlPlane) signalAPIServer(sig syscall.Signal) error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.api == nil {
		return errAPIServerNotRunning
	}
	if done, _ := cp.api.Exited(); done {
		return errAPIServerNotRunning
	}
	if err := syscall.Kill(-cp.api.Cmd.Process.Pid, sig); err != nil {
		return fmt.Errorf("sending %v to kube-apiserver: %w", sig, err)
	}
	return nil
}

// UpdatePodStatus applies change to the pod's current status and writes it
// through the status subresource, as a kubelet does, retrying on conflicts.
func (cp *ControlPlane) UpdatePodStatus(ctx context.Context, namespace, name string, change func(*corev1.PodStatus)) (*corev1.Pod, error) {
	pods := cp.Client.CoreV1().Pods(namespace)
	var out *corev1.Pod
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		change(&cur.Status)
		out, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("updating status of pod %s/%s: %w", namespace, name, err)
	}
	return out, nil
}

// SetPodIPs sets the pod's podIP and podIPs to ips (none clears them), as a
// kubelet does when a pod's sandbox dies (cleared) and is recreated (the
// new sandbox's addresses). The UID stays the same.
func (cp *ControlPlane) SetPodIPs(ctx context.Context, namespace, name string, ips ...netip.Addr) (*corev1.Pod, error) {
	return cp.UpdatePodStatus(ctx, namespace, name, func(s *corev1.PodStatus) {
		s.PodIP = ""
		s.PodIPs = nil
		for i, ip := range ips {
			if i == 0 {
				s.PodIP = ip.String()
			}
			s.PodIPs = append(s.PodIPs, corev1.PodIP{IP: ip.String()})
		}
	})
}

// SetPodPhase sets the pod's phase (e.g. Succeeded, as for a finished Job
// pod, whose object stays in the API with its address until deleted).
func (cp *ControlPlane) SetPodPhase(ctx context.Context, namespace, name string, phase corev1.PodPhase) (*corev1.Pod, error) {
	return cp.UpdatePodStatus(ctx, namespace, name, func(s *corev1.PodStatus) { s.Phase = phase })
}

// BeginDeletePod deletes the pod gracefully: the API sets its
// deletionTimestamp and keeps the object (with its addresses) until a
// kubelet confirms termination, which none does here; DeletePod later
// removes it for good.
func (cp *ControlPlane) BeginDeletePod(ctx context.Context, namespace, name string, grace int64) error {
	err := cp.Client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
	if err != nil {
		return fmt.Errorf("deleting pod %s/%s gracefully: %w", namespace, name, err)
	}
	return nil
}

// Goroutines returns the agent's go_goroutines gauge.
func (a *Agent) Goroutines(ctx context.Context) (int, error) {
	text, err := a.Metrics(ctx)
	if err != nil {
		return 0, err
	}
	n := MetricSum(text, "go_goroutines", nil)
	if n <= 0 {
		return 0, errors.New("harness: the agent's metrics have no go_goroutines")
	}
	return int(n), nil
}

// GoroutineCount is the agent's goroutines from its pprof goroutine
// profile (the agent must run with --enable-pprof), split into those that
// serve a network connection (HTTP client connections in a pool, kept for
// their idle timeout, and server connections) and all others, whose number
// does not depend on how many connections happen to be open.
type GoroutineCount struct {
	Total       int
	Connections int
	Other       int
}

// connectionFrames mark a goroutine that belongs to one network connection.
var connectionFrames = []string{
	"net/http.(*persistConn).readLoop", "net/http.(*persistConn).writeLoop",
	"net/http.(*http2ClientConn)", "golang.org/x/net/http2.(*ClientConn)",
	"net/http.(*conn).serve",
}

// CountGoroutines reads the agent's goroutine profile from its metrics
// listener.
func (a *Agent) CountGoroutines(ctx context.Context) (GoroutineCount, error) {
	url := strings.TrimSuffix(a.MetricsURL, "/metrics") + "/debug/pprof/goroutine?debug=1"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return GoroutineCount{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return GoroutineCount{}, fmt.Errorf("fetching goroutine profile: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return GoroutineCount{}, fmt.Errorf("reading goroutine profile: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return GoroutineCount{}, fmt.Errorf("fetching goroutine profile: %s (is --enable-pprof set?)", resp.Status)
	}
	return parseGoroutineProfile(string(b))
}

// parseGoroutineProfile reads the debug=1 text format: each group of
// identical goroutines starts with "<count> @ <pcs>" and lists its frames
// on the "#" lines that follow.
func parseGoroutineProfile(text string) (GoroutineCount, error) {
	var c GoroutineCount
	count, conn := 0, false
	flush := func() {
		if conn {
			c.Connections += count
		} else {
			c.Other += count
		}
		c.Total += count
		count, conn = 0, false
	}
	for _, line := range strings.Split(text, "\n") {
		if n, _, ok := strings.Cut(line, " @ "); ok {
			if k, err := strconv.Atoi(n); err == nil {
				flush()
				count = k
				continue
			}
		}
		if count > 0 && strings.HasPrefix(line, "#") {
			for _, f := range connectionFrames {
				if strings.Contains(line, f) {
					conn = true
				}
			}
		}
	}
	flush()
	if c.Total == 0 {
		return c, errors.New("goroutine profile: no goroutines found")
	}
	return c, nil
}
