package audit

import (
	"context"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CLOUD-VARIABLES-MISSING: a pod of an annotated ServiceAccount that no
// container wires to the agent (the webhook failed open), for the clouds
// the agent's DaemonSet turns on; not for wired, opted-out or otherwise
// federated pods.
func TestVariablesMissing(t *testing.T) {
	env := func(names ...string) []corev1.EnvVar {
		var out []corev1.EnvVar
		for _, n := range names {
			out = append(out, corev1.EnvVar{Name: n, Value: "x"})
		}
		return out
	}
	pod := func(name, sa string, labels, ann map[string]string, cs ...corev1.Container) corev1.Pod {
		return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: name, Labels: labels, Annotations: ann},
			Spec: corev1.PodSpec{ServiceAccountName: sa, AutomountServiceAccountToken: new(bool), Containers: cs}}
	}
	sa := func(name string, ann map[string]string) corev1.ServiceAccount {
		return corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: name, Annotations: ann}}
	}
	o := &objects{
		sas: []corev1.ServiceAccount{
			sa("aws", map[string]string{DefaultRoleAnnotation: "arn:aws:iam::111122223333:role/a"}),
			sa("gcp", map[string]string{GCPAnnotation: "app-sa@proj.iam.gserviceaccount.com"}),
			sa("plain", nil),
		},
		pods: []corev1.Pod{
			pod("wired", "aws", nil, nil, corev1.Container{Name: "a", Env: env("AWS_CONTAINER_CREDENTIALS_FULL_URI")}),
			pod("missed", "aws", nil, nil, corev1.Container{Name: "a"}),
			pod("opted-out", "aws", map[string]string{webhookOptOutLabel: "false"}, nil, corev1.Container{Name: "a"}),
			pod("irsa", "aws", nil, nil, corev1.Container{Name: "a", Env: env("AWS_WEB_IDENTITY_TOKEN_FILE")}),
			pod("only-skipped-wired", "aws", nil, map[string]string{webhookSkip: "proxy"},
				corev1.Container{Name: "a"}, corev1.Container{Name: "proxy", Env: env("AWS_CONTAINER_CREDENTIALS_FULL_URI")}),
			pod("no-identity", "plain", nil, nil, corev1.Container{Name: "a"}),
			pod("google", "gcp", nil, nil, corev1.Container{Name: "a"}),
		},
	}
	missing := func(r *Report) []string {
		var out []string
		for _, f := range r.Findings {
			if f.ID == IDVariablesMissing {
				out = append(out, f.Object.Name)
				if f.Why == "" || !strings.Contains(f.Fix, "recreate pod team/"+f.Object.Name) {
					t.Errorf("%s: fix %q", f.Object.Name, f.Fix)
				}
			}
		}
		slices.Sort(out)
		return out
	}
	// No DaemonSet read: every cloud named counts.
	r, err := Run(context.Background(), o, Config{AllowedRoles: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := missing(r), []string{"google", "missed", "only-skipped-wired"}; !slices.Equal(got, want) {
		t.Errorf("without the DaemonSet: %v, want %v", got, want)
	}
	// The agent's DaemonSet does not turn GCP on: its pods are not missing
	// anything the agent would serve.
	ds := appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: "credbroker-system", Name: "credbroker-agent"}}
	ds.Spec.Template.Spec.Containers = []corev1.Container{{Name: "agent", Args: []string{"serve"}}}
	o.ds = []appsv1.DaemonSet{ds}
	if r, err = Run(context.Background(), o, Config{}); err != nil {
		t.Fatal(err)
	}
	if got, want := missing(r), []string{"missed", "only-skipped-wired"}; !slices.Equal(got, want) {
		t.Errorf("AWS only: %v, want %v", got, want)
	}
	o.ds[0].Spec.Template.Spec.Containers[0].Args = []string{"serve", "--gcp-workload-identity-provider", "projects/1/locations/global/workloadIdentityPools/p/providers/x"}
	if r, err = Run(context.Background(), o, Config{}); err != nil {
		t.Fatal(err)
	}
	if got, want := missing(r), []string{"google", "missed", "only-skipped-wired"}; !slices.Equal(got, want) {
		t.Errorf("GCP on: %v, want %v", got, want)
	}
}
