package broker

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/credbroker/agent/internal/testfake"
	"github.com/credbroker/agent/pkg/podresolve"
)

func TestImageAllowed(t *testing.T) {
	app := &podresolve.Container{Image: "registry.example/team/app:v1", ImageID: "registry.example/team/app@sha256:aaaa"}
	local := &podresolve.Container{Image: "localhost/credbroker/workload:test", ImageID: "sha256:bbbb"}
	docker := &podresolve.Container{Image: "nginx:1.27", ImageID: "docker-pullable://nginx@sha256:cccc"}
	for _, tc := range []struct {
		list string
		c    *podresolve.Container
		want bool
	}{
		{"registry.example/team/*", app, true},
		{"registry.example/team/app", app, true},
		{"registry.example/other/*, registry.example/team/app", app, true},
		{"registry.example/other/*", app, false},
		{"registry.example/team/app:v2", app, false},
		{"sha256:aaaa", app, true},
		{"sha256:AAAA", app, true},
		{"sha256:aaab", app, false},
		{"sha256:bbbb", local, true},
		{"localhost/credbroker/*", local, true},
		{"sha256:cccc", docker, true},
		{"nginx", docker, true},
		{"registry.example/team/*", local, false},
		{" , ", app, false},
	} {
		if got := imageAllowed(tc.list, tc.c); got != tc.want {
			t.Errorf("imageAllowed(%q, %s %s) = %v, want %v", tc.list, tc.c.Image, tc.c.ImageID, got, tc.want)
		}
	}
}

// eventLog records the Events the broker emits.
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (l *eventLog) Event(obj runtime.Object, eventtype, reason, message string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ref := obj.(*corev1.ObjectReference)
	l.events = append(l.events, ref.Name+" "+eventtype+" "+reason+" "+message)
}

// TestContainerRules: the ServiceAccount's image list and the ephemeral
// container rule apply to the attested container, cache hits included;
// without container attestation an image list refuses everything.
func TestContainerRules(t *testing.T) {
	events := &eventLog{}
	e := newEnv(t, func(c *Config) { c.Events = events })
	ctx := context.Background()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "app", Annotations: map[string]string{
		roleAnnotation: roleA, AnnotationAllowedImages: "registry.example/team/*, sha256:feed"}}}
	if _, err := e.client.CoreV1().ServiceAccounts("ns").Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitForRole("ns", "app", roleA)
	p := e.pod("10.0.0.9", "ns", "p", "app")
	at := func(c *podresolve.Container) {
		q := p
		q.Container = c
		e.resolver.Set("10.0.0.9", q)
	}
	allowed := &podresolve.Container{ID: "1", Name: "app", Kind: podresolve.ContainerRegular, Image: "registry.example/team/app:v1", ImageID: "registry.example/team/app@sha256:0001"}
	byDigest := &podresolve.Container{ID: "2", Name: "sidecar", Kind: podresolve.ContainerRegular, Image: "elsewhere/sidecar:v1", ImageID: "elsewhere/sidecar@sha256:feed"}
	other := &podresolve.Container{ID: "3", Name: "intruder", Kind: podresolve.ContainerRegular, Image: "evil.example/miner:latest", ImageID: "evil.example/miner@sha256:0bad"}
	debug := &podresolve.Container{ID: "4", Name: "debugger", Kind: podresolve.ContainerEphemeral, Image: "registry.example/team/debug:v1", ImageID: "registry.example/team/debug@sha256:0003"}

	at(allowed)
	if r := e.get("10.0.0.9"); r.status != http.StatusOK {
		t.Fatalf("allowed image: %d %s", r.status, r.body)
	}
	at(byDigest)
	if r := e.get("10.0.0.9"); r.status != http.StatusOK {
		t.Fatalf("allowed digest: %d %s", r.status, r.body)
	}
	// The pod's credentials are cached now: the other container of the
	// same pod must still be refused.
	at(other)
	r := e.get("10.0.0.9")
	if r.status != http.StatusForbidden || r.errObj["code"] != CodeImageNotAllowed {
		t.Fatalf("disallowed image: %d %v", r.status, r.errObj)
	}
	for _, want := range []string{"intruder", "evil.example/miner:latest", AnnotationAllowedImages, "ns/app"} {
		if !strings.Contains(r.errObj["message"], want) {
			t.Errorf("message %q does not name %s", r.errObj["message"], want)
		}
	}
	events.mu.Lock()
	got := strings.Join(events.events, "\n")
	events.mu.Unlock()
	if !strings.Contains(got, "p Warning ImageNotAllowed container intruder") {
		t.Errorf("no ImageNotAllowed Event on the pod; Events:\n%s", got)
	}

	at(debug)
	if r := e.get("10.0.0.9"); r.status != http.StatusForbidden || r.errObj["code"] != CodeEphemeralNotAllowed ||
		!strings.Contains(r.errObj["message"], AnnotationAllowEphemeral) {
		t.Fatalf("ephemeral container without the annotation: %d %v", r.status, r.errObj)
	}
	sa.Annotations[AnnotationAllowEphemeral] = "true"
	if _, err := e.client.CoreV1().ServiceAccounts("ns").Update(ctx, sa, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testfake.Eventually(t, "the ephemeral annotation", func() bool {
		f, _ := e.broker.accounts.fields("ns", "app")
		return f != nil && f[e.broker.ephemeralField] == "true"
	})
	if r := e.get("10.0.0.9"); r.status != http.StatusOK {
		t.Fatalf("ephemeral container allowed by the annotation: %d %s", r.status, r.body)
	}

	// netns mode: no container known, an image list refuses.
	at(nil)
	r = e.get("10.0.0.9")
	if r.status != http.StatusForbidden || r.errObj["code"] != CodeImageNotAllowed || !strings.Contains(r.errObj["message"], "--attest=container") {
		t.Fatalf("without container attestation: %d %v", r.status, r.errObj)
	}

	// A ServiceAccount without the annotations: any image, no ephemeral.
	e.serviceAccount("ns", "plain", roleB)
	q := e.pod("10.0.0.10", "ns", "q", "plain")
	q.Container = other
	e.resolver.Set("10.0.0.10", q)
	if r := e.get("10.0.0.10"); r.status != http.StatusOK {
		t.Fatalf("no image list: %d %s", r.status, r.body)
	}
	q.Container = debug
	e.resolver.Set("10.0.0.10", q)
	if r := e.get("10.0.0.10"); r.status != http.StatusForbidden || r.errObj["code"] != CodeEphemeralNotAllowed {
		t.Fatalf("ephemeral container, no annotations: %d %v", r.status, r.errObj)
	}
}
