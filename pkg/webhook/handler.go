package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// MaxRequestBytes bounds an AdmissionReview's body: twice the API server's
// 3 MiB request limit, so that no pod the API server accepts is cut, and a
// caller that is not an API server cannot make the webhook buffer more.
const MaxRequestBytes = 6 << 20

// ErrNoServiceAccount is a lookup's answer for a ServiceAccount that
// exists neither in the watch nor on the API server.
var ErrNoServiceAccount = errors.New("webhook: ServiceAccount not found")

// ServiceAccountLookup returns a ServiceAccount's annotations.
type ServiceAccountLookup interface {
	Annotations(ctx context.Context, namespace, name string) (map[string]string, error)
}

// Config configures a Handler.
type Config struct {
	// Clouds are the enabled clouds, in the order their variables are added.
	Clouds []Cloud
	// ServiceAccounts finds a pod's ServiceAccount.
	ServiceAccounts ServiceAccountLookup
	// AllowDefaultServiceAccount wires pods of the default ServiceAccount
	// too, as the agent's flag of the same name serves them.
	AllowDefaultServiceAccount bool
	// AdmissionTimeout is the webhook configuration's timeoutSeconds: a
	// ServiceAccount lookup ends at four fifths of it, so that the answer
	// (unmodified, at worst) reaches the API server in time. Default 5s.
	AdmissionTimeout time.Duration
	// Metrics, from NewMetrics; nil counts nothing.
	Metrics *Metrics
	// Logger; nil discards.
	Logger *slog.Logger
	// now is the clock; tests replace it.
	now func() time.Time
}

// Handler answers AdmissionReviews for pod CREATE.
type Handler struct {
	cfg Config
	log *slog.Logger
}

// NewHandler checks cfg and returns its Handler.
func NewHandler(cfg Config) (*Handler, error) {
	if cfg.ServiceAccounts == nil {
		return nil, errors.New("webhook: Config.ServiceAccounts is required")
	}
	for _, c := range cfg.Clouds {
		if c.Annotation == "" {
			return nil, fmt.Errorf("webhook: cloud %s has no annotation", c.Name)
		}
	}
	if cfg.AdmissionTimeout <= 0 {
		cfg.AdmissionTimeout = 5 * time.Second
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	return &Handler{cfg: cfg, log: cfg.Logger}, nil
}

// Results counted in credbroker_webhook_admissions_total.
const (
	resultMutated = "mutated"
	resultSkipped = "skipped"
	resultError   = "error"
)

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := h.cfg.now()
	result := resultError
	defer func() { h.cfg.Metrics.observe(result, h.cfg.now().Sub(start)) }()
	if r.Method != http.MethodPost {
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxRequestBytes+1))
	if err != nil {
		h.log.Warn("reading admission request", "error", err)
		http.Error(w, "reading body", http.StatusBadRequest)
		return
	}
	var review admissionv1.AdmissionReview
	if len(body) > MaxRequestBytes {
		h.allowUnreadable(w, body, fmt.Sprintf("admission request larger than %d bytes", MaxRequestBytes))
		return
	}
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
		if err == nil {
			err = errors.New("no request")
		}
		h.allowUnreadable(w, body, "unreadable AdmissionReview: "+err.Error())
		return
	}
	req := review.Request
	// A panic while looking at the pod still answers the API server.
	defer func() {
		if p := recover(); p != nil {
			h.log.Error("panic while admitting a pod; allowed unmodified", "namespace", req.Namespace, "uid", req.UID, "panic", fmt.Sprint(p))
			result = resultError
			writeReview(w, req.UID, nil)
		}
	}()
	ops, res := h.admit(r.Context(), start, req)
	result = res
	var patch []byte
	if len(ops) > 0 {
		if patch, err = json.Marshal(ops); err != nil {
			h.log.Error("encoding patch; allowed unmodified", "namespace", req.Namespace, "error", err)
			patch, result = nil, resultError
		}
	}
	writeReview(w, req.UID, patch)
}

// admit decides one request: the patch and the result to count.
func (h *Handler) admit(ctx context.Context, start time.Time, req *admissionv1.AdmissionRequest) ([]PatchOp, string) {
	if req.Kind.Kind != "Pod" || req.Kind.Group != "" || req.Operation != admissionv1.Create || req.SubResource != "" {
		return nil, resultSkipped
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		h.log.Warn("unreadable pod; allowed unmodified", "namespace", req.Namespace, "uid", req.UID, "error", err)
		return nil, resultError
	}
	ns := req.Namespace
	if ns == "" {
		ns = pod.Namespace
	}
	log := h.log.With("namespace", ns, "pod", podName(&pod, req.Name))
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	switch {
	case len(h.cfg.Clouds) == 0:
		return nil, resultSkipped
	case sa == "default" && !h.cfg.AllowDefaultServiceAccount:
		log.Debug("default ServiceAccount: not wired")
		return nil, resultSkipped
	case OptedOut(&pod):
		log.Debug("opted out", "label", OptOutLabel)
		return nil, resultSkipped
	}
	lctx, cancel := context.WithDeadline(ctx, start.Add(h.cfg.AdmissionTimeout*4/5))
	defer cancel()
	ann, err := h.cfg.ServiceAccounts.Annotations(lctx, ns, sa)
	switch {
	case errors.Is(err, ErrNoServiceAccount):
		log.Info("ServiceAccount not found; pod not wired", "serviceAccount", sa)
		return nil, resultSkipped
	case err != nil:
		log.Warn("reading the ServiceAccount failed; pod allowed unmodified", "serviceAccount", sa, "error", err)
		return nil, resultError
	}
	var clouds []Cloud
	var names []string
	for _, c := range h.cfg.Clouds {
		if strings.TrimSpace(ann[c.Annotation]) != "" {
			clouds = append(clouds, c)
			names = append(names, c.Name)
		}
	}
	ops := Patch(&pod, clouds)
	if len(ops) == 0 {
		log.Debug("nothing to add", "serviceAccount", sa, "clouds", names)
		return nil, resultSkipped
	}
	log.Info("wired pod", "serviceAccount", sa, "clouds", names, "operations", len(ops))
	return ops, resultMutated
}

func podName(p *corev1.Pod, reqName string) string {
	switch {
	case p.Name != "":
		return p.Name
	case reqName != "":
		return reqName
	}
	return p.GenerateName + "*"
}

// allowUnreadable answers a request it cannot read: allowed and unmodified
// when its UID can be found, else 400 (the API server then applies the
// failure policy, Ignore).
func (h *Handler) allowUnreadable(w http.ResponseWriter, body []byte, why string) {
	uid := findUID(body)
	h.log.Warn("admission request not readable; allowed unmodified", "reason", why, "bytes", len(body), "uid", uid)
	if uid == "" {
		http.Error(w, "not an AdmissionReview with a request UID", http.StatusBadRequest)
		return
	}
	writeReview(w, types.UID(uid), nil)
}

// findUID finds the request UID in an AdmissionReview that does not parse
// (or is too large to): the API server writes it first in "request".
func findUID(body []byte) string {
	const marker = `"request":{"uid":"`
	i := bytes.Index(body, []byte(marker))
	if i < 0 {
		return ""
	}
	rest := body[i+len(marker):]
	end := bytes.IndexByte(rest, '"')
	if end <= 0 || end > 64 {
		return ""
	}
	for _, c := range rest[:end] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-') {
			return ""
		}
	}
	return string(rest[:end])
}

func writeReview(w http.ResponseWriter, uid types.UID, patch []byte) {
	resp := &admissionv1.AdmissionResponse{UID: uid, Allowed: true}
	if patch != nil {
		pt := admissionv1.PatchTypeJSONPatch
		resp.Patch, resp.PatchType = patch, &pt
	}
	out, _ := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Response: resp,
	})
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}
