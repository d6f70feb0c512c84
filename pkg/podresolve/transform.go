package podresolve

import (
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
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: p.Namespace,
			Name:      p.Name,
			UID:       p.UID,
			// Kept because client-go reads object resource versions in
			// some code paths; it is a short string.
			ResourceVersion:   p.ResourceVersion,
			CreationTimestamp: p.CreationTimestamp,
			DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec: corev1.PodSpec{
			NodeName:           p.Spec.NodeName,
			ServiceAccountName: p.Spec.ServiceAccountName,
			HostNetwork:        p.Spec.HostNetwork,
		},
		Status: corev1.PodStatus{
			Phase:  p.Status.Phase,
			PodIP:  p.Status.PodIP,
			PodIPs: p.Status.PodIPs,
		},
	}, nil
}
