package podresolve

import (
	"context"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// ContainerKind says which list of a pod's status a container is in.
type ContainerKind uint8

// Container kinds.
const (
	ContainerRegular   ContainerKind = iota + 1 // status.containerStatuses
	ContainerInit                               // status.initContainerStatuses
	ContainerEphemeral                          // status.ephemeralContainerStatuses (kubectl debug)
)

func (k ContainerKind) String() string {
	switch k {
	case ContainerRegular:
		return "regular"
	case ContainerInit:
		return "init"
	case ContainerEphemeral:
		return "ephemeral"
	default:
		return "unknown"
	}
}

// Container is one running container of a pod, as its status reports it.
// With Config.Containers the Resolver keeps these; pkg/attest's container
// mode sets Pod.Container to the one whose process holds a connection.
type Container struct {
	// ID is the runtime's container ID without its scheme
	// ("containerd://", "cri-o://", "docker://").
	ID      string
	Name    string
	Kind    ContainerKind
	Image   string // status.image: the image the runtime runs
	ImageID string // status.imageID: its digest, often repo@sha256:...
}

// containerState is what the Resolver keeps for container mode. Guarded by
// Resolver.mu.
type containerState struct {
	// byUID holds the running containers of each pod on the node (regular,
	// init and ephemeral; hostNetwork pods included). Bounded by the
	// node's pods and their containers.
	byUID map[types.UID][]Container
	// uidByKey names the pod whose containers byUID holds under each
	// namespace/name, so that a delete (which may carry only the key)
	// drops them.
	uidByKey map[podKey]types.UID
	// hostNet holds the node's hostNetwork pods, which the address index
	// leaves out (their address is the node's); container mode identifies
	// them by the process holding a connection instead.
	hostNet map[podKey]hostPod
	// changed is closed, and replaced, whenever byUID changes.
	changed chan struct{}
}

type hostPod struct {
	pod      Pod
	deadline time.Time // end of the deletion grace period; zero if none
}

// stripPodContainers is stripPod keeping, besides, what container mode
// needs of each container status: its name, ID, image and image ID.
func stripPodContainers(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return stripPod(obj)
	}
	s := strip(p)
	s.Status.storedContainers = &storedContainers{
		ContainerStatuses:          stripStatuses(p.Status.ContainerStatuses),
		InitContainerStatuses:      stripStatuses(p.Status.InitContainerStatuses),
		EphemeralContainerStatuses: stripStatuses(p.Status.EphemeralContainerStatuses),
	}
	return s, nil
}

func stripStatuses(in []corev1.ContainerStatus) []corev1.ContainerStatus {
	if len(in) == 0 {
		return nil
	}
	out := make([]corev1.ContainerStatus, 0, len(in))
	for _, c := range in {
		out = append(out, corev1.ContainerStatus{Name: c.Name, ContainerID: c.ContainerID, Image: c.Image, ImageID: c.ImageID})
	}
	return out
}

// containersOf lists a stripped pod's containers that have an ID.
func containersOf(p *storedPod) []Container {
	var out []Container
	add := func(kind ContainerKind, list []corev1.ContainerStatus) {
		for _, c := range list {
			id := c.ContainerID
			if i := strings.Index(id, "://"); i >= 0 {
				id = id[i+3:]
			}
			if id == "" {
				continue
			}
			out = append(out, Container{ID: strings.ToLower(id), Name: c.Name, Kind: kind, Image: c.Image, ImageID: c.ImageID})
		}
	}
	if p.Status.storedContainers == nil {
		return nil
	}
	add(ContainerRegular, p.Status.ContainerStatuses)
	add(ContainerInit, p.Status.InitContainerStatuses)
	add(ContainerEphemeral, p.Status.EphemeralContainerStatuses)
	return out
}

// trackContainersLocked records p's containers and, for a hostNetwork pod, the
// pod itself; p nil removes the pod at key. r.mu must be held. It returns
// the events for hostNetwork pods arriving and leaving.
func (r *Resolver) trackContainersLocked(key podKey, p *storedPod, evs []event) []event {
	cs := r.ctr
	live := p != nil && p.Spec.NodeName == r.node &&
		p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
	var uid types.UID
	if p != nil {
		uid = p.UID
	}
	if prev, ok := cs.uidByKey[key]; ok && (!live || prev != uid) {
		// The pod that had this name is gone, or ended.
		r.setContainersLocked(prev, nil)
		delete(cs.uidByKey, key)
	}
	old, hadHost := cs.hostNet[key]
	if hadHost && (!live || old.pod.UID != uid || !p.Spec.HostNetwork) {
		delete(cs.hostNet, key)
		evs = append(evs, event{kind: eventGone, pod: old.pod})
	}
	if !live {
		return evs
	}
	cs.uidByKey[key] = p.UID
	r.setContainersLocked(p.UID, containersOf(p))
	if p.Spec.HostNetwork {
		hp := hostPod{pod: Pod{Namespace: p.Namespace, Name: p.Name, UID: p.UID, ServiceAccount: p.Spec.ServiceAccountName}}
		if p.DeletionTimestamp != nil {
			hp.deadline = p.DeletionTimestamp.Time
		}
		if _, still := cs.hostNet[key]; !still {
			evs = append(evs, event{kind: eventReady, pod: hp.pod})
		}
		cs.hostNet[key] = hp
	}
	return evs
}

func (r *Resolver) setContainersLocked(uid types.UID, list []Container) {
	cs := r.ctr
	old, had := cs.byUID[uid]
	switch {
	case len(list) == 0 && !had:
		return
	case len(list) == 0:
		delete(cs.byUID, uid)
	case had && equalContainers(old, list):
		return
	default:
		cs.byUID[uid] = list
	}
	close(cs.changed)
	cs.changed = make(chan struct{})
}

func equalContainers(a, b []Container) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Container returns pod uid's running container with the runtime ID id
// (lower-case hex, no scheme). A container that just started may not be
// in the pod's status yet: Container waits up to Config.WaitForPod (and
// while ctx lasts) for the kubelet to report it. It needs
// Config.Containers.
func (r *Resolver) Container(ctx context.Context, uid types.UID, id string) (Container, bool) {
	if r.ctr == nil {
		return Container{}, false
	}
	var timer *time.Timer
	for {
		r.mu.RLock()
		list := r.ctr.byUID[uid]
		changed := r.ctr.changed
		r.mu.RUnlock()
		for _, c := range list {
			if c.ID == id {
				return c, true
			}
		}
		if r.wait < 0 {
			return Container{}, false
		}
		if timer == nil {
			timer = time.NewTimer(r.wait)
			defer timer.Stop()
		}
		if r.testHookWaiting != nil {
			r.testHookWaiting()
		}
		select {
		case <-changed:
		case <-timer.C:
			return Container{}, false
		case <-ctx.Done():
			return Container{}, false
		}
	}
}

// HostNetworkPods returns the node's live hostNetwork pods (in their
// deletion grace period included, until it ends). It needs
// Config.Containers; nil otherwise.
func (r *Resolver) HostNetworkPods() []Pod {
	if r.ctr == nil {
		return nil
	}
	now := r.clock.Now()
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Pod, 0, len(r.ctr.hostNet))
	for _, hp := range r.ctr.hostNet {
		if hp.deadline.IsZero() || now.Before(hp.deadline) {
			out = append(out, hp.pod)
		}
	}
	return out
}

// hostPodByUIDLocked is PodByUID for hostNetwork pods. r.mu must be held.
func (r *Resolver) hostPodByUIDLocked(uid types.UID) (Pod, bool) {
	if r.ctr == nil {
		return Pod{}, false
	}
	now := r.clock.Now()
	for _, hp := range r.ctr.hostNet {
		if hp.pod.UID == uid && (hp.deadline.IsZero() || now.Before(hp.deadline)) {
			return hp.pod, true
		}
	}
	return Pod{}, false
}
