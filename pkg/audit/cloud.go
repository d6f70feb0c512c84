package audit

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws/arn"

	"github.com/credbroker/agent/pkg/exchange"
)

// maxDetails bounds the lists a finding carries (workloads, grants).
const maxDetails = 20

// serviceAccountFindings runs the checks that need every pod seen: shared
// accounts and the cloud identity annotations.
func (a *auditor) serviceAccountFindings() {
	identities := map[string][]saKey{} // "aws role X" → accounts naming it
	for key, info := range a.sas {
		if len(info.workloads) > 1 && key.name != "default" {
			wls := make([]string, 0, len(info.workloads))
			for w := range info.workloads {
				wls = append(wls, describe(w))
			}
			slices.Sort(wls)
			a.add(Finding{
				ID: IDSharedSA, Severity: Medium, Object: saObject(key),
				Message: fmt.Sprintf("is used by %d workloads", len(info.workloads)),
				Why: "the workloads hold each other's RBAC grants and cloud role, and the audit trail cannot tell them apart; " +
					"one ServiceAccount per workload keeps each to what it needs",
				Fix: fmt.Sprintf("give each workload but one its own ServiceAccount: kubectl -n %s create serviceaccount <workload> && kubectl -n %s set serviceaccount <kind>/<workload> <workload>",
					key.namespace, key.namespace),
				Details: capList(wls),
			})
		}
		ids := info.identities(a.cfg.RoleAnnotation)
		if len(ids) == 0 {
			continue
		}
		if info.pods == 0 {
			names := make([]string, 0, len(ids))
			for _, id := range ids {
				names = append(names, id.annotation+"="+id.value)
			}
			a.add(Finding{
				ID: IDUnusedIdentity, Severity: Low, Object: saObject(key),
				Message: "names a cloud identity (" + strings.Join(names, ", ") + ") and no pod runs as it",
				Why: "a leftover annotation keeps the cloud side's trust for this ServiceAccount alive: whoever can create a pod " +
					"in the namespace can run as it and get the identity",
				Fix: fmt.Sprintf("kubectl -n %s annotate serviceaccount %s %s (and remove the trust on the cloud side), or delete the ServiceAccount",
					key.namespace, key.name, annotationRemovals(ids)),
			})
		}
		for _, id := range ids {
			identities[id.kind+" "+id.value] = append(identities[id.kind+" "+id.value], key)
			if err := id.validate(a.cfg.ExtraPartitions); err != nil {
				a.add(Finding{
					ID: IDMalformedIdentity, Severity: Medium, Object: saObject(key),
					Message: fmt.Sprintf("annotation %s=%q is malformed: %v", id.annotation, id.value, err),
					Why:     "the agent (and the cloud) refuse it, so the ServiceAccount's pods get no credentials; a typo here is also how a wrong account or role gets trusted",
					Fix:     fmt.Sprintf("kubectl -n %s annotate --overwrite serviceaccount %s %s=<%s>", key.namespace, key.name, id.annotation, id.expected()),
				})
				continue
			}
			if id.kind == "aws role" && a.cfg.AllowedRoles != nil && len(a.cfg.AllowedRoles) > 0 && !allowed(a.cfg.AllowedRoles, id.value) {
				from := a.patternsFrom
				if from == "" {
					from = "--allowed-role-arn"
				}
				a.add(Finding{
					ID: IDRoleNotAllowed, Severity: Medium, Object: saObject(key),
					Message: fmt.Sprintf("names role %s, outside the agent's allowed patterns %s (from %s)", id.value, strings.Join(a.cfg.AllowedRoles, ","), from),
					Why:     "the agent refuses this role (403 RoleNotAllowed), so the pods get no credentials; either the annotation drifted or the patterns must grow, deliberately",
					Fix: fmt.Sprintf("kubectl -n %s annotate --overwrite serviceaccount %s %s=<an allowed role>, or add a pattern to the agent's --allowed-role-arn",
						key.namespace, key.name, id.annotation),
				})
			}
		}
	}
	for ident, keys := range identities {
		nss := map[string]struct{}{}
		for _, k := range keys {
			nss[k.namespace] = struct{}{}
		}
		if len(nss) < 2 {
			continue
		}
		all := make([]string, 0, len(keys))
		for _, k := range keys {
			all = append(all, k.String())
		}
		slices.Sort(all)
		for _, k := range keys {
			a.add(Finding{
				ID: IDReusedIdentity, Severity: Medium, Object: saObject(k),
				Message: fmt.Sprintf("names %s, which ServiceAccounts of %d namespaces name", ident, len(nss)),
				Why: "the cloud identity must trust every namespace that names it, so an admin of any of them can use what it may do in all; " +
					"one identity per namespace (or per workload) keeps blast radius to one",
				Fix:     fmt.Sprintf("create a cloud identity for %s and annotate it instead (kubectl -n %s annotate --overwrite serviceaccount %s ...), then remove this ServiceAccount from the shared identity's trust", k, k.namespace, k.name),
				Details: capList(all),
			})
		}
	}
}

func saObject(k saKey) Object {
	return Object{Kind: "ServiceAccount", Namespace: k.namespace, Name: k.name}
}

func capList(s []string) []string {
	if len(s) <= maxDetails {
		return s
	}
	return append(s[:maxDetails:maxDetails], fmt.Sprintf("... and %d more", len(s)-maxDetails))
}

// identity is one cloud identity a ServiceAccount names.
type identity struct{ kind, annotation, value string }

func (info *saInfo) identities(roleAnnotation string) []identity {
	var out []identity
	if info.role != "" {
		out = append(out, identity{"aws role", roleAnnotation, info.role})
	}
	if info.gcp != "" {
		out = append(out, identity{"google service account", GCPAnnotation, info.gcp})
	}
	if info.azure != "" {
		out = append(out, identity{"azure client", AzureAnnotation, info.azure})
	}
	return out
}

func annotationRemovals(ids []identity) string {
	parts := make([]string, 0, len(ids))
	for _, id := range ids {
		parts = append(parts, id.annotation+"-")
	}
	return strings.Join(parts, " ")
}

// Compiled on first use: the serving agent links this package for
// `agent audit` and never runs it.
var (
	// A Google service account's e-mail address.
	gcpServiceAccount = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9.:-]+\.iam\.gserviceaccount\.com$`)
	})
	// An Entra ID application (client) ID is a GUID.
	guid = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	})
)

func (id identity) expected() string {
	switch id.kind {
	case "aws role":
		return "arn:aws:iam::<12-digit account>:role/<name>"
	case "google service account":
		return "<name>@<project>.iam.gserviceaccount.com"
	}
	return "client ID, a GUID"
}

func (id identity) validate(extraPartitions []string) error {
	switch id.kind {
	case "google service account":
		if !gcpServiceAccount().MatchString(id.value) {
			return fmt.Errorf("not a service account e-mail (%s)", id.expected())
		}
	case "azure client":
		if !guid().MatchString(id.value) {
			return fmt.Errorf("not a GUID")
		}
	case "aws role":
		return validateRoleARN(id.value, extraPartitions)
	}
	return nil
}

// validateRoleARN accepts an IAM role ARN in any AWS partition, or in one
// of the agent's extra partitions (whose account may be empty, as MinIO's
// is), as the agent's STS exchange does (pkg/exchange), and nothing else: a
// user, policy or instance-profile ARN, a bare role name, a short account.
func validateRoleARN(s string, extraPartitions []string) error {
	a, err := arn.Parse(s)
	if err != nil {
		return err
	}
	extra := slices.Contains(extraPartitions, a.Partition)
	switch {
	case !extra && a.Partition != "aws" && !strings.HasPrefix(a.Partition, "aws-"):
		return fmt.Errorf("partition %q is not an AWS partition (nor one of the agent's --sts-extra-arn-partitions)", a.Partition)
	case a.Service != "iam":
		return fmt.Errorf("service %q is not iam", a.Service)
	case !extra && (len(a.AccountID) != 12 || strings.Trim(a.AccountID, "0123456789") != ""):
		return fmt.Errorf("account %q is not 12 digits", a.AccountID)
	case !strings.HasPrefix(a.Resource, "role/") || len(a.Resource) == len("role/"):
		return fmt.Errorf("resource %q is not role/<name>", a.Resource)
	}
	return nil
}

// allowed reports whether role matches one of the agent's patterns, with
// the agent's own glob rule (exchange.Glob).
func allowed(patterns []string, role string) bool {
	for _, p := range patterns {
		if exchange.Glob(p, role) {
			return true
		}
	}
	return false
}
