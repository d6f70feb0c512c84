package broker

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/credbroker/agent/internal/testfake"
)

// forbiddingSink answers like an API server whose RBAC grants the agent
// nothing on events, until allow is set.
type forbiddingSink struct {
	calls atomic.Int64
	allow atomic.Bool
}

func (s *forbiddingSink) answer(ev *corev1.Event) (*corev1.Event, error) {
	s.calls.Add(1)
	if s.allow.Load() {
		return ev, nil
	}
	return nil, apierrors.NewForbidden(schema.GroupResource{Resource: "events"}, "",
		errors.New(`User "system:serviceaccount:credbroker:agent" cannot create resource "events" in API group "" in the namespace "ns"`))
}
func (s *forbiddingSink) Create(ev *corev1.Event) (*corev1.Event, error) { return s.answer(ev) }
func (s *forbiddingSink) Update(ev *corev1.Event) (*corev1.Event, error) { return s.answer(ev) }
func (s *forbiddingSink) Patch(ev *corev1.Event, _ []byte) (*corev1.Event, error) {
	return s.answer(ev)
}

// Defect (issue 18, item 11): an agent whose RBAC lacks events logged an
// ERROR "events is forbidden" (client-go's) for every refusal it recorded.
// Through client-go's real broadcaster, the forbidden answer is logged
// once, the rest are counted, and client-go logs nothing.
func TestForbiddenEventsAreLoggedOnceAndCounted(t *testing.T) {
	var clientGo testfake.Buffer
	klog.SetSlogLogger(slog.New(slog.NewJSONHandler(&clientGo, nil)))
	defer klog.ClearLogger()

	var agentLog testfake.Buffer
	reg := prometheus.NewRegistry()
	clk := clocktesting.NewFakePassiveClock(time.Now())
	inner := &forbiddingSink{}
	sink, err := NewQuietEventSink(inner, slog.New(slog.NewJSONHandler(&agentLog, nil)), reg, clk)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := record.NewBroadcaster(record.WithContext(ctx))
	defer b.Shutdown()
	recorded := make(chan struct{}, 100)
	b.StartEventWatcher(func(*corev1.Event) { recorded <- struct{}{} })
	b.StartRecordingToSink(sink)
	rec := b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "credbroker-agent"})

	const pods = 20
	for i := range pods {
		pod := &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: "ns", Name: "p" + string(rune('a'+i)), UID: types.UID("u" + string(rune('a'+i)))}
		rec.Event(pod, corev1.EventTypeWarning, CodeNoRole, "no role")
	}
	for range pods {
		<-recorded
	}
	testfake.Eventually(t, "every Event to be counted", func() bool { return testutil.ToFloat64(sink.dropped) == pods })
	if n := inner.calls.Load(); n != 1 {
		t.Errorf("%d Events sent to an API server that forbids them, want 1 and then a pause", n)
	}
	if n := strings.Count(agentLog.String(), "forbids the agent to write Events"); n != 1 {
		t.Errorf("%d log lines about forbidden Events, want 1:\n%s", n, agentLog.String())
	}
	if strings.Contains(clientGo.String(), "forbidden") {
		t.Errorf("client-go still logs the refusals:\n%s", clientGo.String())
	}

	// The pause ends; RBAC now allows Events: they go through again.
	inner.allow.Store(true)
	clk.SetTime(clk.Now().Add(forbiddenEventsPause))
	rec.Event(&corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: "ns", Name: "late", UID: "late"}, corev1.EventTypeWarning, CodeNoRole, "no role")
	<-recorded
	testfake.Eventually(t, "the Event to be sent", func() bool { return inner.calls.Load() == 2 })
	testfake.Eventually(t, "the recovery to be logged", func() bool { return strings.Contains(agentLog.String(), "accepts the agent's Events again") })
	if got := testutil.ToFloat64(sink.dropped); got != pods {
		t.Errorf("%v dropped after recovery, want %d", got, pods)
	}
}
