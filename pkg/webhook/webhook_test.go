package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
)

const (
	roleAnn  = "eks.amazonaws.com/role-arn"
	gcpAnn   = "iam.gke.io/gcp-service-account"
	azureAnn = "azure.workload.identity/client-id"
)

var testClouds = []Cloud{
	AWS(roleAnn, "169.254.170.23", "credbroker"),
	GCP(gcpAnn, "169.254.170.23"),
	Azure(azureAnn, "169.254.170.23", "hdr"),
}

var (
	awsVars   = []string{"AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN"}
	gcpVars   = []string{"GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT"}
	azureVars = []string{"IDENTITY_ENDPOINT", "IDENTITY_HEADER"}
)

// lookupMap is a ServiceAccountLookup over "ns/name" -> annotations.
type lookupMap map[string]map[string]string

func (l lookupMap) Annotations(_ context.Context, ns, name string) (map[string]string, error) {
	a, ok := l[ns+"/"+name]
	if !ok {
		return nil, ErrNoServiceAccount
	}
	return a, nil
}

var accounts = lookupMap{
	"shop/none":    {},
	"shop/aws":     {roleAnn: "arn:aws:iam::111122223333:role/cart"},
	"shop/three":   {roleAnn: "arn:aws:iam::111122223333:role/cart", gcpAnn: "cart@p.iam.gserviceaccount.com", azureAnn: "00000000-0000-0000-0000-000000000001"},
	"shop/default": {roleAnn: "arn:aws:iam::111122223333:role/everyone"},
}

func container(name string, env ...corev1.EnvVar) corev1.Container {
	return corev1.Container{Name: name, Image: "example", Env: env}
}

func review(t testing.TB, pod *corev1.Pod) []byte {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: types.UID("0b7d6f3e-1111-2222-3333-444455556666"), Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource: metav1.GroupVersionResource{Version: "v1", Resource: "pods"}, Namespace: pod.Namespace,
			Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// admitPod posts the pod's AdmissionReview and returns the pod after the
// answer's patch, and the answer.
func admitPod(t *testing.T, h http.Handler, pod *corev1.Pod) (*corev1.Pod, *admissionv1.AdmissionResponse) {
	t.Helper()
	body := review(t, pod)
	resp := post(t, h, body)
	if resp.UID != "0b7d6f3e-1111-2222-3333-444455556666" || !resp.Allowed {
		t.Fatalf("answer uid %q allowed %v", resp.UID, resp.Allowed)
	}
	if resp.Patch == nil {
		return pod, resp
	}
	if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("patch type %v", resp.PatchType)
	}
	p, err := jsonpatch.DecodePatch(resp.Patch)
	if err != nil {
		t.Fatalf("decoding patch %s: %v", resp.Patch, err)
	}
	orig, _ := json.Marshal(pod)
	out, err := p.Apply(orig)
	if err != nil {
		t.Fatalf("applying patch %s: %v", resp.Patch, err)
	}
	var got corev1.Pod
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	return &got, resp
}

func post(t *testing.T, h http.Handler, body []byte) *admissionv1.AdmissionResponse {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body)))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var rv admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &rv); err != nil || rv.Response == nil {
		t.Fatalf("answer %s: %v", rec.Body, err)
	}
	if rv.APIVersion != "admission.k8s.io/v1" || rv.Kind != "AdmissionReview" {
		t.Fatalf("answer type %s %s", rv.APIVersion, rv.Kind)
	}
	return rv.Response
}

func names(env []corev1.EnvVar) []string {
	var out []string
	for _, e := range env {
		out = append(out, e.Name)
	}
	return out
}

func concat(ls ...[]string) []string { return slices.Concat(ls...) }

func TestAdmission(t *testing.T) {
	custom := corev1.EnvVar{Name: "AWS_CONTAINER_CREDENTIALS_FULL_URI", Value: "http://127.0.0.1:9/mine"}
	app := corev1.EnvVar{Name: "APP", Value: "1"}
	always := corev1.ContainerRestartPolicyAlways
	cases := []struct {
		name string
		pod  corev1.Pod
		// want: variable names per container name, in order, after the patch.
		want map[string][]string
	}{
		{"no identity", corev1.Pod{Spec: corev1.PodSpec{ServiceAccountName: "none", Containers: []corev1.Container{container("app")}}},
			map[string][]string{"app": nil}},
		{"default ServiceAccount named", corev1.Pod{Spec: corev1.PodSpec{ServiceAccountName: "default", Containers: []corev1.Container{container("app")}}},
			map[string][]string{"app": nil}},
		{"default ServiceAccount implied", corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{container("app")}}},
			map[string][]string{"app": nil}},
		{"ServiceAccount not found", corev1.Pod{Spec: corev1.PodSpec{ServiceAccountName: "ghost", Containers: []corev1.Container{container("app")}}},
			map[string][]string{"app": nil}},
		{"one cloud", corev1.Pod{Spec: corev1.PodSpec{ServiceAccountName: "aws", Containers: []corev1.Container{container("app"), container("two", app)}}},
			map[string][]string{"app": awsVars, "two": concat([]string{"APP"}, awsVars)}},
		{"three clouds", corev1.Pod{Spec: corev1.PodSpec{ServiceAccountName: "three", Containers: []corev1.Container{container("app")}}},
			map[string][]string{"app": concat(awsVars, gcpVars, azureVars)}},
		{"empty env list", corev1.Pod{Spec: corev1.PodSpec{ServiceAccountName: "aws", Containers: []corev1.Container{{Name: "app", Env: []corev1.EnvVar{}}}}},
			map[string][]string{"app": awsVars}},
		{"variable already set: that cloud left alone in that container", corev1.Pod{Spec: corev1.PodSpec{ServiceAccountName: "three",
			Containers: []corev1.Container{container("app", custom), container("other")}}},
			map[string][]string{"app": concat([]string{custom.Name}, gcpVars, azureVars), "other": concat(awsVars, gcpVars, azureVars)}},
		{"opt-out label on the pod", corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{OptOutLabel: "false"}},
			Spec: corev1.PodSpec{ServiceAccountName: "three", Containers: []corev1.Container{container("app")}}},
			map[string][]string{"app": nil}},
		{"opt-out label other value: wired", corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{OptOutLabel: "true"}},
			Spec: corev1.PodSpec{ServiceAccountName: "aws", Containers: []corev1.Container{container("app")}}},
			map[string][]string{"app": awsVars}},
		{"skipped containers", corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{SkipContainersAnnotation: " istio-proxy , log"}},
			Spec: corev1.PodSpec{ServiceAccountName: "aws", Containers: []corev1.Container{container("app"), container("istio-proxy"), container("log", app)}}},
			map[string][]string{"app": awsVars, "istio-proxy": nil, "log": {"APP"}}},
		{"init containers and native sidecars", corev1.Pod{Spec: corev1.PodSpec{ServiceAccountName: "aws",
			InitContainers: []corev1.Container{container("migrate", app), {Name: "sidecar", RestartPolicy: &always}},
			Containers:     []corev1.Container{container("app")}}},
			map[string][]string{"migrate": concat([]string{"APP"}, awsVars), "sidecar": awsVars, "app": awsVars}},
	}
	h, err := NewHandler(Config{Clouds: testClouds, ServiceAccounts: accounts})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := tc.pod
			pod.Namespace, pod.GenerateName = "shop", "web-"
			got, resp := admitPod(t, h, &pod)
			all := append(append([]corev1.Container{}, got.Spec.InitContainers...), got.Spec.Containers...)
			orig := map[string][]string{}
			for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
				orig[c.Name] = names(c.Env)
			}
			mutated := false
			for _, c := range all {
				want, ok := tc.want[c.Name]
				if !ok {
					t.Fatalf("container %s not in the case", c.Name)
				}
				if !slices.Equal(names(c.Env), want) {
					t.Errorf("container %s: env %v, want %v", c.Name, names(c.Env), want)
				}
				mutated = mutated || !slices.Equal(orig[c.Name], want)
			}
			if mutated != (resp.Patch != nil) {
				t.Errorf("patch %s, want one: %v", resp.Patch, mutated)
			}
		})
	}
}

// The values are the ones the SDKs need (README "Using it from a
// workload", docs/gcp.md, docs/azure.md), IPv6 in brackets.
func TestVariableValues(t *testing.T) {
	h, _ := NewHandler(Config{Clouds: testClouds, ServiceAccounts: accounts})
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop"}, Spec: corev1.PodSpec{ServiceAccountName: "three", Containers: []corev1.Container{container("app")}}}
	got, _ := admitPod(t, h, pod)
	want := []corev1.EnvVar{
		{Name: "AWS_CONTAINER_CREDENTIALS_FULL_URI", Value: "http://169.254.170.23/v1/credentials"},
		{Name: "AWS_CONTAINER_AUTHORIZATION_TOKEN", Value: "credbroker"},
		{Name: "GCE_METADATA_HOST", Value: "169.254.170.23"}, {Name: "GCE_METADATA_IP", Value: "169.254.170.23"}, {Name: "GCE_METADATA_ROOT", Value: "169.254.170.23"},
		{Name: "IDENTITY_ENDPOINT", Value: "http://169.254.170.23/metadata/identity/oauth2/token"}, {Name: "IDENTITY_HEADER", Value: "hdr"},
	}
	if !slices.Equal(got.Spec.Containers[0].Env, want) {
		t.Errorf("env %v\nwant %v", got.Spec.Containers[0].Env, want)
	}
	if v := AWS(roleAnn, "fd00:ec2::23", "").Env; len(v) != 1 || v[0].Value != "http://[fd00:ec2::23]/v1/credentials" {
		t.Errorf("IPv6, no token: %v", v)
	}
	if v := GCP(gcpAnn, "fd00:ec2::23").Env[0].Value; v != "[fd00:ec2::23]" {
		t.Errorf("GCE_METADATA_HOST for IPv6 = %q", v)
	}
}

// Clouds that are off add nothing, even when the ServiceAccount names an
// identity on them; the default ServiceAccount is wired when allowed.
func TestEnabledCloudsAndDefault(t *testing.T) {
	h, _ := NewHandler(Config{Clouds: testClouds[:1], ServiceAccounts: accounts, AllowDefaultServiceAccount: true})
	for sa, want := range map[string][]string{"three": awsVars, "default": awsVars} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop"}, Spec: corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{container("app")}}}
		got, _ := admitPod(t, h, pod)
		if n := names(got.Spec.Containers[0].Env); !slices.Equal(n, want) {
			t.Errorf("%s: env %v, want %v", sa, n, want)
		}
	}
}

// Bad input never crashes the webhook and never blocks a pod: an answer
// with the request's UID is allowed and unmodified.
func TestBadInput(t *testing.T) {
	h, _ := NewHandler(Config{Clouds: testClouds, ServiceAccounts: accounts})
	const uid = "0b7d6f3e-1111-2222-3333-444455556666"
	notAPod := strings.Replace(string(review(t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop"}})),
		`"object":{`, `"object":{"spec":"not an object",`, 1)
	truncated := string(review(t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop"}, Spec: corev1.PodSpec{ServiceAccountName: "aws"}}))
	truncated = truncated[:len(truncated)-40]
	huge := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Annotations: map[string]string{"big": strings.Repeat("x", MaxRequestBytes)}},
		Spec: corev1.PodSpec{ServiceAccountName: "aws", Containers: []corev1.Container{container("app")}}}
	for name, body := range map[string]string{
		"pod that does not parse": notAPod,
		"truncated review":        truncated,
		"larger than the limit":   string(review(t, huge)),
	} {
		t.Run(name, func(t *testing.T) {
			resp := post(t, h, []byte(body))
			if string(resp.UID) != uid || !resp.Allowed || resp.Patch != nil {
				t.Errorf("answer uid %q allowed %v patch %s", resp.UID, resp.Allowed, resp.Patch)
			}
		})
	}
	t.Run("not a review at all", func(t *testing.T) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/mutate", strings.NewReader("\x00garbage")))
		if rec.Code != http.StatusBadRequest {
			t.Errorf("status %d", rec.Code)
		}
	})
	t.Run("many containers", func(t *testing.T) {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop"}, Spec: corev1.PodSpec{ServiceAccountName: "three"}}
		for i := range 500 {
			pod.Spec.Containers = append(pod.Spec.Containers, container(strings.Repeat("c", 1+i%50)+string(rune('a'+i%26))))
		}
		got, _ := admitPod(t, h, pod)
		for _, c := range got.Spec.Containers {
			if len(c.Env) != 7 {
				t.Fatalf("container %s: %d variables", c.Name, len(c.Env))
			}
		}
	})
}

// A lookup that hangs (API server unreachable) ends before the admission
// timeout: the pod is allowed unmodified in time.
func TestLookupBoundedByAdmissionTimeout(t *testing.T) {
	// The bound is asserted on the deadline the lookup is given, not on
	// wall-clock time: a loaded machine must not fail this test.
	lookup := &hangingLookup{}
	h, _ := NewHandler(Config{Clouds: testClouds, ServiceAccounts: lookup, AdmissionTimeout: 500 * time.Millisecond})
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop"}, Spec: corev1.PodSpec{ServiceAccountName: "aws", Containers: []corev1.Container{container("app")}}}
	before := time.Now()
	_, resp := admitPod(t, h, pod)
	if resp.Patch != nil {
		t.Errorf("a lookup that never answers: patch %s, want the pod allowed unmodified", resp.Patch)
	}
	if !lookup.hadDeadline {
		t.Fatal("the ServiceAccount lookup ran without a deadline")
	}
	if limit := before.Add(500 * time.Millisecond); lookup.deadline.After(limit) {
		t.Errorf("lookup deadline %s after the admission timeout's end %s", lookup.deadline.Format(time.StampMicro), limit.Format(time.StampMicro))
	}
}

// hangingLookup never answers; it records the deadline it was given.
type hangingLookup struct {
	deadline    time.Time
	hadDeadline bool
}

func (l *hangingLookup) Annotations(ctx context.Context, _, _ string) (map[string]string, error) {
	l.deadline, l.hadDeadline = ctx.Deadline()
	<-ctx.Done()
	return nil, ctx.Err()
}

// A lookup that panics still answers the API server.
func TestPanicAnswersAllowed(t *testing.T) {
	h, _ := NewHandler(Config{Clouds: testClouds, ServiceAccounts: panickyLookup{}})
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop"}, Spec: corev1.PodSpec{ServiceAccountName: "aws", Containers: []corev1.Container{container("app")}}}
	if _, resp := admitPod(t, h, pod); resp.Patch != nil {
		t.Errorf("patch %s", resp.Patch)
	}
}

type panickyLookup struct{}

func (panickyLookup) Annotations(context.Context, string, string) (map[string]string, error) {
	panic("boom")
}
