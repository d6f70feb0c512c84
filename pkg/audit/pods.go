package audit

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// agentHosts are the addresses the agent serves on (deploy/daemonset).
var agentHosts = []string{"169.254.170.23", "fd00:ec2::23"}

// serviceAccount records the facts the later checks need.
func (a *auditor) serviceAccount(sa *corev1.ServiceAccount) {
	info := &saInfo{
		automount: sa.AutomountServiceAccountToken,
		role:      sa.Annotations[a.cfg.RoleAnnotation],
		gcp:       sa.Annotations[GCPAnnotation],
		azure:     sa.Annotations[AzureAnnotation],
	}
	a.sas[saKey{namespace: sa.Namespace, name: sa.Name}] = info
}

// pod adds a running (or pending) pod to its workload's findings.
func (a *auditor) pod(p *corev1.Pod) {
	// Finished pods hold no token any more and run nothing.
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return
	}
	saName := p.Spec.ServiceAccountName
	if saName == "" {
		saName = "default"
	}
	key := saKey{namespace: p.Namespace, name: saName}
	wl := a.workloadOf(p.Namespace, p.Name, p.OwnerReferences)
	if wl.Kind == "DaemonSet" {
		if a.daemonSets[wl] == nil {
			a.daemonSets[wl] = map[saKey]struct{}{}
		}
		a.daemonSets[wl][key] = struct{}{}
	}
	info := a.sas[key]
	if info != nil {
		info.pods++
		if info.workloads == nil {
			info.workloads = map[Object]struct{}{}
		}
		info.workloads[wl] = struct{}{}
	}
	a.variablesMissing(p, key, info, wl)
	if saName == "default" {
		a.addPod(IDPodDefaultSA, wl, p.Name, func() Finding {
			return Finding{
				ID: IDPodDefaultSA, Severity: Medium, Object: wl, Subject: "ServiceAccount " + key.String(),
				Message: "runs as its namespace's default ServiceAccount",
				Why: "default is shared by every pod that names no ServiceAccount, so whatever it is granted (RBAC, a cloud role) " +
					"goes to all of them; the agent refuses it credentials unless --allow-default-service-account",
				Fix: setServiceAccount(wl, shortName(wl)),
			}
		})
	}

	mounted := automounted(p, info)
	_, bound := a.bound[key]
	if _, ok := a.nsGroupBound[p.Namespace]; ok || a.allSABound {
		bound = true
	}
	usesAgent := usesAgent(p)
	cloudToken := cloudAudienceToken(p)
	switch {
	case usesAgent && (cloudToken != "" || mounted && !bound):
		what := "a mounted API token"
		if cloudToken != "" {
			what = "a projected token for audience " + cloudToken
		}
		a.addPod(IDCloudTokenMounted, wl, p.Name, func() Finding {
			f := Finding{
				ID: IDCloudTokenMounted, Severity: Medium, Object: wl, Subject: "ServiceAccount " + key.String(),
				Message: "gets its cloud identity from the agent and also carries " + what + " it does not need",
				Why: "the agent asks for a short-lived pod-bound token itself and never hands it to the pod; a token in the " +
					"pod's filesystem is one more credential to leak, readable by anything in the pod",
			}
			if cloudToken != "" {
				f.Fix = "remove the projected serviceAccountToken volume (audience " + cloudToken + ") and AWS_WEB_IDENTITY_TOKEN_FILE from " + describe(wl) +
					" (a pod-identity webhook adds them: exclude the ServiceAccount from it)"
			} else {
				f.Fix = noAutomount(key, p, wl)
			}
			return f
		})
	case mounted && !bound:
		a.addPod(IDUnusedToken, wl, p.Name, func() Finding {
			return Finding{
				ID: IDUnusedToken, Severity: Low, Object: wl, Subject: "ServiceAccount " + key.String(),
				Message: "has its ServiceAccount token mounted, and no RBAC binding names the ServiceAccount",
				Why: "nothing needs the token (the ServiceAccount is granted nothing), yet anything that reads the pod's filesystem " +
					"can use it to authenticate to the API server, and any later grant to the account reaches it",
				Fix: noAutomount(key, p, wl),
			}
		})
	}
}

// automounted reports whether the pod gets an API token mounted: the pod's
// automountServiceAccountToken wins over its ServiceAccount's, and both
// default to true. A projected serviceAccountToken volume for the API
// server (no audience) mounts one as well.
func automounted(p *corev1.Pod, sa *saInfo) bool {
	for _, v := range p.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, s := range v.Projected.Sources {
			if s.ServiceAccountToken != nil && s.ServiceAccountToken.Audience == "" {
				return true
			}
		}
	}
	if p.Spec.AutomountServiceAccountToken != nil {
		return *p.Spec.AutomountServiceAccountToken
	}
	if sa != nil && sa.automount != nil {
		return *sa.automount
	}
	return true
}

// cloudAudiences are the audiences of tokens that pod-identity webhooks
// project for a cloud's STS, which a pod served by the agent never needs.
var cloudAudiences = []string{"sts.amazonaws.com", "api://AzureADTokenExchange"}

func cloudAudienceToken(p *corev1.Pod) string {
	for _, v := range p.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, s := range v.Projected.Sources {
			if t := s.ServiceAccountToken; t != nil && slices.Contains(cloudAudiences, t.Audience) {
				return t.Audience
			}
		}
	}
	return ""
}

// usesAgent reports whether a container of p is pointed at the agent for
// cloud credentials: AWS_CONTAINER_CREDENTIALS_FULL_URI, GCE_METADATA_HOST
// or IDENTITY_ENDPOINT naming the agent's address.
func usesAgent(p *corev1.Pod) bool {
	check := func(cs []corev1.Container) bool {
		for _, c := range cs {
			for _, e := range c.Env {
				switch e.Name {
				case "AWS_CONTAINER_CREDENTIALS_FULL_URI", "IDENTITY_ENDPOINT":
					if u, err := url.Parse(e.Value); err == nil && isAgentHost(u.Hostname()) {
						return true
					}
				case "GCE_METADATA_HOST":
					h := e.Value
					if host, _, err := net.SplitHostPort(h); err == nil {
						h = host
					}
					if isAgentHost(strings.Trim(h, "[]")) {
						return true
					}
				}
			}
		}
		return false
	}
	return check(p.Spec.Containers) || check(p.Spec.InitContainers)
}

func isAgentHost(h string) bool { return slices.Contains(agentHosts, h) }

// noAutomount is the fix for a token nobody needs: on the ServiceAccount,
// unless the pod itself asks for the token, which then wins.
func noAutomount(sa saKey, p *corev1.Pod, wl Object) string {
	if p.Spec.AutomountServiceAccountToken != nil && *p.Spec.AutomountServiceAccountToken {
		return templatePatch(wl, `{"automountServiceAccountToken":false}`)
	}
	return fmt.Sprintf(`kubectl -n %s patch serviceaccount %s -p '{"automountServiceAccountToken":false}'`, sa.namespace, sa.name)
}

// setServiceAccount is the fix that moves a workload to a ServiceAccount of
// its own.
func setServiceAccount(wl Object, sa string) string {
	create := fmt.Sprintf("kubectl -n %s create serviceaccount %s && ", wl.Namespace, sa)
	return create + templatePatch(wl, fmt.Sprintf(`{"serviceAccountName":%q}`, sa))
}

// templatePatch patches the pod template of wl with podSpec (JSON), or says
// how to when wl has no template to patch.
func templatePatch(wl Object, podSpec string) string {
	switch wl.Kind {
	case "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController":
		return fmt.Sprintf(`kubectl -n %s patch %s %s -p '{"spec":{"template":{"spec":%s}}}'`, wl.Namespace, strings.ToLower(wl.Kind), wl.Name, podSpec)
	case "CronJob":
		return fmt.Sprintf(`kubectl -n %s patch cronjob %s -p '{"spec":{"jobTemplate":{"spec":{"template":{"spec":%s}}}}}'`, wl.Namespace, wl.Name, podSpec)
	case "Job", "Pod":
		// Their pod templates are immutable.
		return fmt.Sprintf("recreate %s with %s in its pod spec", describe(wl), podSpec)
	}
	return fmt.Sprintf("set %s in the pod template of %s", podSpec, describe(wl))
}

func describe(o Object) string { return strings.ToLower(o.Kind) + " " + o.Namespace + "/" + o.Name }

// shortName is a ServiceAccount name for a workload: its own name.
func shortName(wl Object) string { return wl.Name }
