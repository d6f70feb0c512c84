package podresolve

import (
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// stripPod is the informer's transform. It returns a new, minimal *v1.Pod
// holding only what this package reads, so the informer store does not keep
// managed fields, specs, annotations, labels or container statuses alive.
// It builds a fresh object rather than editing the one it is given (which
// may be shared), and is idempotent, as client-go requires. A *v1.Pod is
// kept rather than a private type so the store's key function and any
// client-go code inspecting stored objects keep working unchanged.
func stripPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		// Tombstones and anything else pass through untouched; the event
		// handler copes with them.
		return obj, nil
	}
	podIP := p.Status.PodIP
	if len(p.Status.PodIPs) > 0 && p.Status.PodIPs[0].IP == podIP {
		// One string for both: the decoder made two.
		podIP = p.Status.PodIPs[0].IP
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: intern(p.Namespace),
			Name:      p.Name,
			UID:       p.UID,
			// Kept because client-go reads object resource versions in
			// some code paths; it is a short string.
			ResourceVersion:   p.ResourceVersion,
			CreationTimestamp: p.CreationTimestamp,
			DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec: corev1.PodSpec{
			NodeName:           intern(p.Spec.NodeName),
			ServiceAccountName: intern(p.Spec.ServiceAccountName),
			HostNetwork:        p.Spec.HostNetwork,
		},
		Status: corev1.PodStatus{
			Phase:  corev1.PodPhase(intern(string(p.Status.Phase))),
			PodIP:  podIP,
			PodIPs: p.Status.PodIPs,
		},
	}, nil
}

// interned holds the strings many stripped pods share (their namespace,
// node, ServiceAccount, phase): the decoder allocates each anew for every
// pod and every update, and the store would keep one copy per pod. It is
// bounded; past the bound, strings are kept as they come.
var interned = struct {
	sync.Mutex
	m map[string]string
}{m: make(map[string]string)}

const maxInterned = 4096

func intern(s string) string {
	if s == "" {
		return ""
	}
	interned.Lock()
	defer interned.Unlock()
	if c, ok := interned.m[s]; ok {
		return c
	}
	if len(interned.m) < maxInterned {
		interned.m[s] = s
	}
	return s
}
