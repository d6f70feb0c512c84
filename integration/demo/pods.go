package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/netns"
	"github.com/credbroker/agent/pkg/verify"
)

// pod is a pod the demo plays the scheduler and kubelet for: the API
// object, as admission left it, and a network namespace whose traffic
// carries the pod's address.
type pod struct {
	obj *corev1.Pod
	ns  *netns.Namespace
}

// createPod creates the network namespace and then the pod, exactly as the
// manifest gives it (a container and its ServiceAccount, not one
// variable), bound to the node; then it sets the status a kubelet would.
// The returned object is what the API server stored after the admission
// webhooks.
func createPod(ctx context.Context, cp *harness.ControlPlane, nsName, name, sa string, ip netip.Addr) (*pod, error) {
	ns, err := netns.Create(ctx, netns.Spec{Name: nsName, IP: ip})
	if err != nil {
		return nil, err
	}
	no := false
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			NodeName:                     nodeName,
			ServiceAccountName:           sa,
			AutomountServiceAccountToken: &no,
			Containers:                   []corev1.Container{{Name: "main", Image: "registry.example/" + name + ":1"}},
		},
	}
	pods := cp.Client.CoreV1().Pods(namespace)
	created, err := pods.Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("creating pod %s/%s: %w", namespace, name, err)
	}
	now := metav1.Now()
	created.Status.Phase = corev1.PodRunning
	created.Status.PodIP = ip.String()
	created.Status.PodIPs = []corev1.PodIP{{IP: ip.String()}}
	created.Status.StartTime = &now
	created.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}
	if _, err := pods.UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		ns.Close()
		return nil, fmt.Errorf("setting the status of pod %s/%s: %w", namespace, name, err)
	}
	return &pod{obj: created, ns: ns}, nil
}

// exec runs a command inside the pod's network namespace with exactly env.
func (p *pod) exec(ctx context.Context, env []string, args ...string) ([]byte, error) {
	cmd := p.ns.Exec(ctx, args...)
	cmd.Env = env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s in pod %s: %w: %s", args[0], p.obj.Name, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// startReceiver serves pod B's whole program in B's network namespace: an
// HTTP service that accepts callers only with a ServiceAccount token for
// its audience, verified with pkg/verify against the API server's
// discovery (read with B's own ServiceAccount token), and answers with the
// caller's identity.
func startReceiver(ctx context.Context, cp *harness.ControlPlane, b *pod, audience, allow string) (*http.Server, string, error) {
	token, err := cp.ServiceAccountToken(ctx, namespace, b.obj.Spec.ServiceAccountName, time.Hour)
	if err != nil {
		return nil, "", err
	}
	v, err := verify.New(verify.Config{
		Kubernetes: &rest.Config{Host: cp.URL, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAData: cp.CACert}},
		Audiences:  []string{audience},
		Subjects:   []string{allow},
	})
	if err != nil {
		return nil, "", err
	}
	addr := net.JoinHostPort(b.ns.IP().String(), "8080")
	// The receiving pod's socket, on its own address.
	l, err := b.ns.Listen("tcp", addr)
	if err != nil {
		return nil, "", err
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: v.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := verify.FromContext(r.Context())
		note("[%s receives] %s %s from %s: caller is pod %s/%s, ServiceAccount %s, pod UID %s, node %s",
			b.obj.Name, r.Method, r.URL.Path, r.RemoteAddr, id.Namespace, id.PodName, id.ServiceAccount, id.PodUID, id.NodeName)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{
			"hello": "system:serviceaccount:" + id.Namespace + ":" + id.ServiceAccount, "pod": id.PodName, "podUID": id.PodUID,
		})
	}))}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "receiver:", err)
		}
	}()
	return srv, "http://" + addr, nil
}

// claims decodes a JWT's payload for display (the signature is the
// receiver's business).
func claims(token string) map[string]any {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil
	}
	var c map[string]any
	if json.Unmarshal(b, &c) != nil {
		return nil
	}
	return c
}
