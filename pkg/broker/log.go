package broker

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

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
