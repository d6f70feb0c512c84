package webhook

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// OptOutLabel set to "false" on a pod, or on its namespace, keeps the
// webhook away from it. The namespace form is the webhook configuration's
// namespaceSelector (the API server does not even call the webhook); the
// pod form is both its objectSelector and checked here.
const OptOutLabel = "credbroker.io/inject"

// SkipContainersAnnotation on a pod names containers (comma-separated)
// that get no variables: a sidecar that must not hold the pod's identity.
const SkipContainersAnnotation = "credbroker.io/skip-containers"

// Cloud is what the webhook adds for one cloud.
type Cloud struct {
	// Name is the cloud's name in logs ("aws", "gcp", "azure").
	Name string
	// Annotation is the ServiceAccount annotation naming the pod's identity
	// on this cloud; a ServiceAccount without it gets nothing of Env.
	Annotation string
	// Env is added to every container that sets none of Owns.
	Env []corev1.EnvVar
	// Owns are the variables that, set by the container itself, mean it is
	// wired to this cloud by hand: Env's names and the SDKs' alternatives.
	Owns []string
}

// AgentHost formats the agent's address as a URL host: IPv6 in brackets.
func AgentHost(addr string) string {
	if a, err := netip.ParseAddr(addr); err == nil && a.Is6() {
		return "[" + addr + "]"
	}
	return addr
}

// AWS is the AWS SDKs' container-credentials wiring. authToken, when not
// empty, is AWS_CONTAINER_AUTHORIZATION_TOKEN: every AWS SDK then sends it
// as Authorization, which the agent's --require-authorization asks for
// (not a secret: an SSRF guard, README "Using it from a workload").
func AWS(annotation, agentAddr, authToken string) Cloud {
	env := []corev1.EnvVar{{Name: "AWS_CONTAINER_CREDENTIALS_FULL_URI", Value: "http://" + AgentHost(agentAddr) + "/v1/credentials"}}
	if authToken != "" {
		env = append(env, corev1.EnvVar{Name: "AWS_CONTAINER_AUTHORIZATION_TOKEN", Value: authToken})
	}
	return Cloud{Name: "aws", Annotation: annotation, Env: env, Owns: []string{
		"AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
		"AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
	}}
}

// GCP is the Google libraries' GCE metadata wiring: GCE_METADATA_HOST (Go,
// Python, Node, Java), GCE_METADATA_IP (Python's detection probe, Node) and
// GCE_METADATA_ROOT (the Google Cloud CLI; docs/gcp.md).
func GCP(annotation, agentAddr string) Cloud {
	h := AgentHost(agentAddr)
	return Cloud{Name: "gcp", Annotation: annotation, Env: []corev1.EnvVar{
		{Name: "GCE_METADATA_HOST", Value: h}, {Name: "GCE_METADATA_IP", Value: h}, {Name: "GCE_METADATA_ROOT", Value: h},
	}, Owns: []string{"GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT"}}
}

// Azure is the App Service managed-identity wiring that MSAL, azidentity,
// Python azure-identity and JS @azure/identity pick first; header is the
// agent's --azure-identity-header.
func Azure(annotation, agentAddr, header string) Cloud {
	return Cloud{Name: "azure", Annotation: annotation, Env: []corev1.EnvVar{
		{Name: "IDENTITY_ENDPOINT", Value: "http://" + AgentHost(agentAddr) + "/metadata/identity/oauth2/token"},
		{Name: "IDENTITY_HEADER", Value: header},
	}, Owns: []string{"IDENTITY_ENDPOINT", "IDENTITY_HEADER"}}
}

// PatchOp is one RFC 6902 operation.
type PatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// OptedOut reports whether the pod's labels keep the webhook away.
func OptedOut(pod *corev1.Pod) bool { return pod.Labels[OptOutLabel] == "false" }

// skipped returns the container names the pod's annotation names.
func skipped(pod *corev1.Pod) []string {
	var out []string
	for _, s := range strings.Split(pod.Annotations[SkipContainersAnnotation], ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Patch returns the operations that add each cloud's variables to every
// container, init container and native sidecar (an init container with
// restartPolicy Always) of pod, except skipped containers and containers
// that set a variable of that cloud themselves. A container with no env
// list gets one (an "add" of the whole list: "/env/-" needs the array to
// exist). clouds are those the pod's ServiceAccount names an identity on.
// Nothing for an opted-out pod.
func Patch(pod *corev1.Pod, clouds []Cloud) []PatchOp {
	if len(clouds) == 0 || OptedOut(pod) {
		return nil
	}
	skip := skipped(pod)
	var ops []PatchOp
	add := func(field string, cs []corev1.Container) {
		for i := range cs {
			c := &cs[i]
			if slices.Contains(skip, c.Name) {
				continue
			}
			var env []corev1.EnvVar
			for _, cl := range clouds {
				if !setsAny(c.Env, cl.Owns) {
					env = append(env, cl.Env...)
				}
			}
			if len(env) == 0 {
				continue
			}
			path := fmt.Sprintf("/spec/%s/%d/env", field, i)
			if len(c.Env) == 0 {
				ops = append(ops, PatchOp{Op: "add", Path: path, Value: env})
				continue
			}
			for _, e := range env {
				ops = append(ops, PatchOp{Op: "add", Path: path + "/-", Value: e})
			}
		}
	}
	add("initContainers", pod.Spec.InitContainers)
	add("containers", pod.Spec.Containers)
	return ops
}

func setsAny(env []corev1.EnvVar, names []string) bool {
	for _, e := range env {
		if slices.Contains(names, e.Name) {
			return true
		}
	}
	return false
}
