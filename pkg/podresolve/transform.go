package podresolve

import (
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// storedPod is what the informer store keeps of a pod: the fields this
// package reads, under the same names as in a *v1.Pod. A *v1.Pod is 1,240
// bytes however little of it is set (a 1,280-byte allocation per pod, a
// third of the agent's memory per pod); this is a quarter of that. It
// embeds ObjectMeta so that the store's key function, tombstones and
// client-go's resource-version checks work on it as on a pod.
type storedPod struct {
	metav1.ObjectMeta
	Spec   storedSpec
	Status storedStatus
}

type storedSpec struct {
	NodeName           string
	ServiceAccountName string
	HostNetwork        bool
}

type storedStatus struct {
	Phase  corev1.PodPhase
	PodIP  string
	PodIPs []corev1.PodIP
	// Containers is set in container mode only.
	*storedContainers
}

type storedContainers struct {
	ContainerStatuses          []corev1.ContainerStatus
	InitContainerStatuses      []corev1.ContainerStatus
	EphemeralContainerStatuses []corev1.ContainerStatus
}

// GetObjectKind is runtime.Object's: the store has no use for a kind.
func (p *storedPod) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject is runtime.Object's.
func (p *storedPod) DeepCopyObject() runtime.Object {
	c := &storedPod{Spec: p.Spec, Status: p.Status}
	p.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	c.Status.PodIPs = append([]corev1.PodIP(nil), p.Status.PodIPs...)
	if p.Status.storedContainers != nil {
		sc := *p.Status.storedContainers
		sc.ContainerStatuses = append([]corev1.ContainerStatus(nil), sc.ContainerStatuses...)
		sc.InitContainerStatuses = append([]corev1.ContainerStatus(nil), sc.InitContainerStatuses...)
		sc.EphemeralContainerStatuses = append([]corev1.ContainerStatus(nil), sc.EphemeralContainerStatuses...)
		c.Status.storedContainers = &sc
	}
	return c
}

// stripPod is the informer's transform. It returns a new *storedPod
// holding only what this package reads, so the informer store does not keep
// managed fields, specs, annotations, labels or container statuses alive.
// It builds a fresh object rather than editing the one it is given (which
// may be shared), and is idempotent, as client-go requires.
func stripPod(obj any) (any, error) {
	switch p := obj.(type) {
	case *storedPod:
		return p, nil
	case *corev1.Pod:
		return strip(p), nil
	}
	// Tombstones and anything else pass through untouched; the event
	// handler copes with them.
	return obj, nil
}

func strip(p *corev1.Pod) *storedPod {
	podIP := p.Status.PodIP
	if len(p.Status.PodIPs) > 0 && p.Status.PodIPs[0].IP == podIP {
		// One string for both: the decoder made two.
		podIP = p.Status.PodIPs[0].IP
	}
	return &storedPod{
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
		Spec: storedSpec{
			NodeName:           intern(p.Spec.NodeName),
			ServiceAccountName: intern(p.Spec.ServiceAccountName),
			HostNetwork:        p.Spec.HostNetwork,
		},
		Status: storedStatus{
			Phase:  corev1.PodPhase(intern(string(p.Status.Phase))),
			PodIP:  podIP,
			PodIPs: p.Status.PodIPs,
		},
	}
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
