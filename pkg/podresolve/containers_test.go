package podresolve

import (
	"context"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

func withContainer(list *[]corev1.ContainerStatus, name, id, image, imageID string) podOpt {
	return func(p *corev1.Pod) {
		l := list
		switch {
		case l == &initStatuses:
			p.Status.InitContainerStatuses = append(p.Status.InitContainerStatuses, corev1.ContainerStatus{Name: name, ContainerID: id, Image: image, ImageID: imageID, Ready: true})
		case l == &ephemeralStatuses:
			p.Status.EphemeralContainerStatuses = append(p.Status.EphemeralContainerStatuses, corev1.ContainerStatus{Name: name, ContainerID: id, Image: image, ImageID: imageID})
		default:
			p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{Name: name, ContainerID: id, Image: image, ImageID: imageID, RestartCount: 3})
		}
	}
}

// Markers telling withContainer which status list to append to.
var regularStatuses, initStatuses, ephemeralStatuses []corev1.ContainerStatus

// TestContainers: with Config.Containers the resolver keeps each pod's
// containers (regular, init, ephemeral, from their statuses) and the
// node's hostNetwork pods, follows their changes, and tells listeners
// about hostNetwork pods; without it, neither.
func TestContainers(t *testing.T) {
	const idApp, idInit, idDebug, idHost = "containerd://aaaa", "containerd://bbbb", "cri-o://CCCC", "docker://dddd"
	a := mkPod("a", ips("10.0.0.1"), withContainer(&regularStatuses, "app", idApp, "registry.example/app:v1", "registry.example/app@sha256:11"),
		withContainer(&initStatuses, "setup", idInit, "busybox:1", "sha256:22"))
	host := mkPod("host", ips("192.168.1.20"), hostNet(), withContainer(&regularStatuses, "exporter", idHost, "exporter:v2", "sha256:44"))
	h := newHarness(t, harnessOpts{containers: true}, a, host)
	ctx := context.Background()

	got, ok := h.r.Container(ctx, a.UID, "aaaa")
	if want := (Container{ID: "aaaa", Name: "app", Kind: ContainerRegular, Image: "registry.example/app:v1", ImageID: "registry.example/app@sha256:11"}); !ok || got != want {
		t.Errorf("Container(app) = %+v, %v; want %+v", got, ok, want)
	}
	if got, ok := h.r.Container(ctx, a.UID, "bbbb"); !ok || got.Kind != ContainerInit || got.Name != "setup" {
		t.Errorf("Container(init) = %+v, %v", got, ok)
	}
	if _, ok := h.r.Container(ctx, a.UID, "dddd"); ok {
		t.Error("pod a answers for the hostNetwork pod's container")
	}
	hp := h.r.HostNetworkPods()
	if len(hp) != 1 || hp[0].UID != host.UID || hp[0].ServiceAccount != "sa-host" {
		t.Fatalf("HostNetworkPods = %+v, want the host pod", hp)
	}
	if p, ok := h.r.PodByUID(host.UID); !ok || p.Name != "host" {
		t.Errorf("PodByUID(host) = %+v, %v", p, ok)
	}
	if evs := h.rec.take(); !slices.Contains(evs, "ready "+testNS+"/host host-uid []") {
		t.Errorf("listeners did not hear of the hostNetwork pod: %q", evs)
	}

	// kubectl debug: an ephemeral container appears in the status of a
	// pod whose addresses do not change.
	dbg := a.DeepCopy()
	withContainer(&ephemeralStatuses, "debugger", idDebug, "busybox:1", "sha256:33")(dbg)
	h.do(t, "add an ephemeral container", update(dbg))
	if got, ok := h.r.Container(ctx, a.UID, "cccc"); !ok || got.Kind != ContainerEphemeral || got.Name != "debugger" {
		t.Errorf("Container(ephemeral) = %+v, %v; want the ephemeral container (ID lower-cased)", got, ok)
	}

	// A container that is not in the status yet is waited for.
	h.r.wait = 5 * time.Second
	waiting := make(chan struct{}, 1)
	h.r.testHookWaiting = func() {
		select {
		case waiting <- struct{}{}:
		default:
		}
	}
	done := make(chan Container)
	go func() {
		c, _ := h.r.Container(ctx, a.UID, "eeee")
		done <- c
	}()
	<-waiting // the update below must wake a waiter, not precede it
	restarted := dbg.DeepCopy()
	restarted.Status.ContainerStatuses[0].ContainerID = "containerd://eeee"
	h.do(t, "restart the app container", update(restarted))
	if c := <-done; c.Name != "app" {
		t.Errorf("waiting for the restarted container: %+v", c)
	}
	h.r.testHookWaiting = nil
	h.r.wait = -1
	if _, ok := h.r.Container(ctx, a.UID, "aaaa"); ok {
		t.Error("the container before the restart is still listed")
	}

	h.do(t, "delete the host pod", del("host"))
	if hp := h.r.HostNetworkPods(); len(hp) != 0 {
		t.Errorf("HostNetworkPods after delete = %+v", hp)
	}
	if _, ok := h.r.Container(ctx, host.UID, "dddd"); ok {
		t.Error("a deleted pod's container is still listed")
	}
	if evs := h.rec.take(); !slices.Contains(evs, "gone "+testNS+"/host host-uid []") {
		t.Errorf("listeners did not hear the hostNetwork pod go: %q", evs)
	}

	// A pod deleted before it had an address (never in the address
	// index) leaves no containers behind.
	pending := mkPod("pending", withContainer(&initStatuses, "setup", "containerd://ffff", "busybox:1", "sha256:55"))
	h.do(t, "create a pod without an address", create(pending))
	if _, ok := h.r.Container(ctx, pending.UID, "ffff"); !ok {
		t.Error("the pending pod's init container is not listed")
	}
	h.do(t, "delete it", del("pending"))
	h.r.mu.RLock()
	left := len(h.r.ctr.byUID) + len(h.r.ctr.uidByKey)
	h.r.mu.RUnlock()
	if want := 2; left != want { // pod a: one entry in each map
		t.Errorf("%d entries left after deletes, want %d", left, want)
	}

	off := newHarness(t, harnessOpts{}, mkPod("a", ips("10.0.0.1"), withContainer(&regularStatuses, "app", idApp, "x", "y")), mkPod("host", hostNet()))
	if _, ok := off.r.Container(ctx, "a-uid", "aaaa"); ok || len(off.r.HostNetworkPods()) != 0 {
		t.Error("without Config.Containers the resolver keeps containers or hostNetwork pods")
	}
}
