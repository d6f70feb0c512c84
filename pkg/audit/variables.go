package audit

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// IDVariablesMissing: a pod whose ServiceAccount names an identity on a
// cloud the agent serves, and no container of which is wired to it (the
// webhook was down or not yet trusted when the pod was created: its
// failurePolicy is Ignore).
const IDVariablesMissing = "CLOUD-VARIABLES-MISSING"

// The webhook's opt-outs (pkg/webhook), which the audit respects.
const (
	webhookOptOutLabel = "credbroker.io/inject"
	webhookSkip        = "credbroker.io/skip-containers"
)

// cloudWiring lists, per cloud, the variables any of which in a container
// means the pod's SDKs are wired for it: the webhook's, and the other
// ways to the same cloud (IRSA, Azure Workload Identity).
var cloudWiring = map[string][]string{
	"aws":   {"AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"},
	"gcp":   {"GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT"},
	"azure": {"IDENTITY_ENDPOINT", "AZURE_FEDERATED_TOKEN_FILE"},
}

// agentCloudFlags are the flags that turn GCP and Azure on in the agent
// (AWS is always on).
var agentCloudFlags = map[string]string{"gcp": "gcp-workload-identity-provider", "azure": "azure-tenant-id"}

// cloudsFromArgs records which clouds the agent's DaemonSet turns on.
func (a *auditor) cloudsFromArgs(args []string) {
	if a.agentClouds == nil {
		a.agentClouds = map[string]bool{"aws": true}
	}
	for cloud, f := range agentCloudFlags {
		if len(flagValues(args, f)) > 0 {
			a.agentClouds[cloud] = true
		}
	}
}

// variablesMissing adds IDVariablesMissing for a pod none of whose
// containers (skipped ones aside) is wired to a cloud its ServiceAccount
// names an identity on. Clouds are those the agent's DaemonSet turns on,
// or all when it was not read. Not for the default ServiceAccount
// (POD-DEFAULT-SA covers it; the webhook does not wire it) or an opted-out
// pod. Variables from envFrom are not seen.
func (a *auditor) variablesMissing(p *corev1.Pod, key saKey, info *saInfo, wl Object) {
	if info == nil || key.name == "default" || p.Labels[webhookOptOutLabel] == "false" {
		return
	}
	named := map[string]string{"aws": info.role, "gcp": info.gcp, "azure": info.azure}
	skip := strings.Split(p.Annotations[webhookSkip], ",")
	for i := range skip {
		skip[i] = strings.TrimSpace(skip[i])
	}
	var missing []string
	for _, cloud := range []string{"aws", "gcp", "azure"} {
		if strings.TrimSpace(named[cloud]) == "" || a.agentClouds != nil && !a.agentClouds[cloud] {
			continue
		}
		wired := false
		for _, c := range slices.Concat(p.Spec.InitContainers, p.Spec.Containers) {
			if slices.Contains(skip, c.Name) {
				continue
			}
			for _, e := range c.Env {
				wired = wired || slices.Contains(cloudWiring[cloud], e.Name)
			}
		}
		if !wired {
			missing = append(missing, cloud)
		}
	}
	if len(missing) == 0 {
		return
	}
	a.addPod(IDVariablesMissing, wl, p.Name, func() Finding {
		return Finding{
			ID: IDVariablesMissing, Severity: Medium, Object: wl, Subject: "ServiceAccount " + key.String(),
			Message: fmt.Sprintf("runs as a ServiceAccount that names an identity on %s, and no container has the variables that point its SDKs at the agent",
				strings.Join(missing, ", ")),
			Why: "the pod gets no credentials from the agent (its SDKs fall back to whatever else they find, or fail); " +
				"pods created while the webhook was down or not yet trusted start this way, since its failurePolicy is Ignore",
			Fix: recreate(wl, p.Name) + " (the webhook wires the new pods; check it is up: kubectl -n credbroker-system get deploy credbroker-webhook), " +
				"or label the pod " + webhookOptOutLabel + "=false if it sets them through envFrom or needs no cloud access",
		}
	})
}

// recreate is the command that replaces a workload's pods.
func recreate(wl Object, pod string) string {
	switch wl.Kind {
	case "Deployment", "StatefulSet", "DaemonSet":
		return fmt.Sprintf("kubectl -n %s rollout restart %s %s", wl.Namespace, strings.ToLower(wl.Kind), wl.Name)
	case "Pod":
		return fmt.Sprintf("recreate pod %s/%s", wl.Namespace, pod)
	}
	return fmt.Sprintf("delete the pods of %s so that they are recreated (e.g. kubectl -n %s delete pod %s)", describe(wl), wl.Namespace, pod)
}
