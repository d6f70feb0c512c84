package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/clock"

	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

// EventRecorder records Kubernetes Events; client-go's
// record.EventRecorder is one.
type EventRecorder interface {
	Event(object runtime.Object, eventtype, reason, message string)
}

// LogKeyRemoteAddr is the log attribute holding the caller's address on
// every per-request line. The agent limits such lines per address with
// guard.LogLimiter, which looks for exactly this key.
const LogKeyRemoteAddr = "remote_addr"

// Serve is the surfaces' one entry into the broker: Credentials, and for a
// request that fails, its classified Failure, already logged (and recorded
// as an Event) here, so that a surface only writes it in its own format.
// A failed request allocates its Failure; an answered one allocates
// nothing.
func (b *Broker) Serve(ctx context.Context, addr netip.Addr, req Request) (Answer, *Failure) {
	ans, err := b.Credentials(ctx, addr, req)
	if err == nil {
		return ans, nil
	}
	return ans, b.fail(ctx, addr, ans.Pod, err)
}

// ServeIdentity is Identity for the surfaces, failing as Serve does.
func (b *Broker) ServeIdentity(ctx context.Context, addr netip.Addr, cloud exchange.Cloud) (string, *Failure) {
	pod, id, err := b.Identity(ctx, addr, cloud)
	if err == nil {
		return id, nil
	}
	return "", b.fail(ctx, addr, pod, err)
}

func (b *Broker) fail(ctx context.Context, addr netip.Addr, pod podresolve.Pod, err error) *Failure {
	f := Classify(err)
	b.LogFailure(ctx, addr, pod, f, err)
	return &f
}

// LogFailure writes one line per refused or failed request; the logger the
// agent passes in caps them per caller address (LogKeyRemoteAddr), so a pod
// hammering with a refused identity cannot flood the node's logs. The error
// may name the pod, identity and upstream error code; it never holds a
// secret (tokens and keys are exchange.Secret values, which redact
// themselves).
//
// A refusal of an identified pod is also recorded as a Warning Event on
// the pod, with the refusal's code as its reason.
func (b *Broker) LogFailure(ctx context.Context, addr netip.Addr, pod podresolve.Pod, f Failure, err error) {
	if f.Class == Refused && pod.UID != "" && b.cfg.Events != nil {
		b.cfg.Events.Event(&corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
			corev1.EventTypeWarning, f.Code, f.Message)
	}
	level := slog.LevelWarn
	var refusal *Refusal
	if f.Class == Refused || errors.As(err, &refusal) {
		level = slog.LevelInfo
	}
	if !b.log.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String(LogKeyRemoteAddr, addr.String()),
		slog.String("reason", f.Code),
		slog.String("error", err.Error()),
	}
	if pod.UID != "" {
		attrs = append(attrs, slog.String("namespace", pod.Namespace), slog.String("pod", pod.Name),
			slog.String("serviceaccount", pod.ServiceAccount))
	}
	b.log.LogAttrs(ctx, level, "credentials request refused", attrs...)
}

// EventSink writes Events to the API server; client-go's record.EventSink
// is one, and what record.EventBroadcaster.StartRecordingToSink takes.
type EventSink interface {
	Create(event *corev1.Event) (*corev1.Event, error)
	Update(event *corev1.Event) (*corev1.Event, error)
	Patch(oldEvent *corev1.Event, data []byte) (*corev1.Event, error)
}

// forbiddenEventsPause is how long no Event is sent after the API server
// refused one as forbidden: RBAC rarely changes within minutes, and every
// refused Event is an API call.
const forbiddenEventsPause = 5 * time.Minute

// QuietEventSink stands between client-go's event broadcaster and the API
// server for an agent whose RBAC may lack events: without it, every
// refusal the broker records as an Event costs an ERROR line from
// client-go ("events is forbidden"). It logs the first forbidden answer
// once, with the API server's reason, then counts the Events it drops in
// credbroker_events_forbidden_total, sends none for forbiddenEventsPause,
// and tries again after (saying so, once, when Events go through again).
// A forbidden Event is reported to the broadcaster as written, so that
// client-go neither logs nor retries it. Other errors pass through.
type QuietEventSink struct {
	sink    EventSink
	log     *slog.Logger
	clock   clock.PassiveClock
	dropped prometheus.Counter

	mu          sync.Mutex
	forbidden   bool      // the last answer was forbidden; guarded by mu
	pausedUntil time.Time // guarded by mu
}

// NewQuietEventSink wraps sink. reg registers the counter; clk may be nil
// (the real clock).
func NewQuietEventSink(sink EventSink, log *slog.Logger, reg prometheus.Registerer, clk clock.PassiveClock) (*QuietEventSink, error) {
	if clk == nil {
		clk = clock.RealClock{}
	}
	q := &QuietEventSink{sink: sink, log: log, clock: clk, dropped: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "credbroker_events_forbidden_total",
		Help: "Events on refused pods not recorded because the API server forbids the agent to write Events (RBAC without events).",
	})}
	if err := reg.Register(q.dropped); err != nil {
		return nil, fmt.Errorf("registering the Events counter: %w", err)
	}
	return q, nil
}

// Create creates event, unless Events are forbidden.
func (q *QuietEventSink) Create(event *corev1.Event) (*corev1.Event, error) {
	return q.do(event, func() (*corev1.Event, error) { return q.sink.Create(event) })
}

// Update updates event, unless Events are forbidden.
func (q *QuietEventSink) Update(event *corev1.Event) (*corev1.Event, error) {
	return q.do(event, func() (*corev1.Event, error) { return q.sink.Update(event) })
}

// Patch patches oldEvent, unless Events are forbidden.
func (q *QuietEventSink) Patch(oldEvent *corev1.Event, data []byte) (*corev1.Event, error) {
	return q.do(oldEvent, func() (*corev1.Event, error) { return q.sink.Patch(oldEvent, data) })
}

func (q *QuietEventSink) do(event *corev1.Event, write func() (*corev1.Event, error)) (*corev1.Event, error) {
	q.mu.Lock()
	paused := q.forbidden && q.clock.Now().Before(q.pausedUntil)
	q.mu.Unlock()
	if paused {
		q.dropped.Inc()
		return event, nil
	}
	out, err := write()
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case apierrors.IsForbidden(err):
		if !q.forbidden {
			q.log.Error("the API server forbids the agent to write Events, so refusals are not recorded on pods; "+
				"the rest are counted in credbroker_events_forbidden_total (grant create and patch on events, or run with --record-events=false)",
				"error", err.Error())
		}
		q.forbidden = true
		q.pausedUntil = q.clock.Now().Add(forbiddenEventsPause)
		q.dropped.Inc()
		return event, nil
	case err == nil && q.forbidden:
		q.forbidden = false
		q.log.Info("the API server accepts the agent's Events again")
	}
	return out, err
}
