package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// used is one verb on one resource ("pods", "serviceaccounts/token") of one
// API group ("" for core), as an audit event records it.
type used struct{ verb, group, resource string }

func (u used) String() string {
	g := u.group
	if g == "" {
		g = "core"
	}
	return u.verb + " " + u.resource + " (" + g + ")"
}

// auditEvent is the part of an audit.k8s.io/v1 Event the check reads.
type auditEvent struct {
	Verb string `json:"verb"`
	User struct {
		Username string `json:"username"`
	} `json:"user"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		APIGroup    string `json:"apiGroup"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
	Annotations              map[string]string `json:"annotations"`
	RequestReceivedTimestamp time.Time         `json:"requestReceivedTimestamp"`
}

// readAuditLog collects, per ServiceAccount in scope, what it was allowed
// to do in the log. Lines that are not events are counted, not fatal: logs
// get truncated and rotated mid-line.
func (a *auditor) readAuditLog(ctx context.Context) (map[saKey]map[used]struct{}, time.Time, time.Time, error) {
	out := map[saKey]map[used]struct{}{}
	var first, last time.Time
	r := bufio.NewReaderSize(a.cfg.AuditLog, 1<<16)
	bad, events := 0, 0
	for n := 0; ; n++ {
		if n%4096 == 0 && ctx.Err() != nil {
			return nil, first, last, ctx.Err()
		}
		line, err := r.ReadBytes('\n')
		if len(line) > 0 && strings.TrimSpace(string(line)) != "" {
			var ev auditEvent
			if jerr := json.Unmarshal(line, &ev); jerr != nil {
				bad++
			} else {
				events++
				if t := ev.RequestReceivedTimestamp; !t.IsZero() {
					if first.IsZero() || t.Before(first) {
						first = t
					}
					if t.After(last) {
						last = t
					}
				}
				a.event(&ev, out)
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, first, last, fmt.Errorf("reading audit log %s: %w", a.cfg.AuditLogName, err)
		}
	}
	if bad > 0 {
		a.note("audit log %s: %d lines were not JSON events and were skipped", a.cfg.AuditLogName, bad)
	}
	a.report.Scanned["audit events"] = events
	return out, first, last, nil
}

func (a *auditor) event(ev *auditEvent, out map[saKey]map[used]struct{}) {
	if ev.ObjectRef == nil || ev.ObjectRef.Resource == "" || !strings.HasPrefix(ev.User.Username, saUserPrefix) {
		return
	}
	// A denied request used nothing it was granted.
	if ev.Annotations["authorization.k8s.io/decision"] == "forbid" || ev.ResponseStatus != nil && ev.ResponseStatus.Code == 403 {
		return
	}
	ns, name, ok := strings.Cut(strings.TrimPrefix(ev.User.Username, saUserPrefix), ":")
	if !ok || !a.inScope(ns) {
		return
	}
	k := saKey{namespace: ns, name: name}
	res := ev.ObjectRef.Resource
	if ev.ObjectRef.Subresource != "" {
		res += "/" + ev.ObjectRef.Subresource
	}
	m := out[k]
	if m == nil {
		m = map[used]struct{}{}
		out[k] = m
	}
	m[used{verb: ev.Verb, group: ev.ObjectRef.APIGroup, resource: res}] = struct{}{}
}

// permissionDebt reports, per ServiceAccount with grants, the verbs and
// resources it was granted and did not use in the audit log's window.
func (a *auditor) permissionDebt(ctx context.Context) error {
	seen, first, last, err := a.readAuditLog(ctx)
	if err != nil {
		return err
	}
	window := "the audit log (no timestamps)"
	if !first.IsZero() {
		window = fmt.Sprintf("%s to %s", first.UTC().Format(time.RFC3339), last.UTC().Format(time.RFC3339))
	}
	// Every ServiceAccount that some binding grants to: the named ones and,
	// through the groups, every one that exists in scope.
	accounts := map[saKey]struct{}{}
	for k := range a.grants {
		accounts[k] = struct{}{}
	}
	if len(a.nsGroupGrant) > 0 || len(a.allSAGrant) > 0 {
		for k := range a.sas {
			if _, ok := a.nsGroupGrant[k.namespace]; ok || len(a.allSAGrant) > 0 {
				accounts[k] = struct{}{}
			}
		}
	}
	for k := range accounts {
		gs := append(append(append([]grant(nil), a.grants[k]...), a.nsGroupGrant[k.namespace]...), a.allSAGrant...)
		var unused, usedList []string
		granted := 0
		missing := map[string]struct{}{}
		done := map[string]struct{}{}
		for _, g := range gs {
			rules, ok := a.rules[g.role]
			if !ok {
				missing[g.role.kind+" "+g.role.name] = struct{}{}
				continue
			}
			for _, r := range rules {
				for _, verb := range r.verbs {
					for _, group := range r.groups {
						for _, res := range r.resources {
							want := used{verb: verb, group: group, resource: res}
							key := want.String()
							if _, dup := done[key]; dup {
								continue
							}
							done[key] = struct{}{}
							granted++
							if matchesAny(want, seen[k]) {
								usedList = append(usedList, key)
							} else {
								unused = append(unused, key)
							}
						}
					}
				}
			}
		}
		for m := range missing {
			a.note("ServiceAccount %s is bound to %s, which does not exist", k, m)
		}
		if len(unused) == 0 {
			continue
		}
		slices.Sort(unused)
		fix := "no request of the account was seen: if that holds for longer windows, remove its bindings"
		if len(seen[k]) > 0 {
			var obs []string
			for u := range seen[k] {
				obs = append(obs, u.String())
			}
			slices.Sort(obs)
			fix = "bind a Role granting only what was used (" + strings.Join(capList(obs), ", ") + ") instead of " + grantNames(gs)
		}
		a.add(Finding{
			ID: IDUnusedGrant, Severity: Low, Object: saObject(k),
			Message: fmt.Sprintf("used %d of the %d verb/resource pairs its bindings grant, from %s", granted-len(unused), granted, window),
			Why: "a grant nothing uses is all risk: whoever gets the token (a compromised pod, a leaked file) gets it; " +
				"least privilege is what the account did, not what it might",
			Fix:     fix,
			Details: capList(unused),
		})
	}
	return nil
}

func grantNames(gs []grant) string {
	var names []string
	for _, g := range gs {
		names = append(names, g.binding.object().String()+" ("+g.role.kind+" "+g.role.name+")")
	}
	slices.Sort(names)
	return strings.Join(slices.Compact(names), ", ")
}

// matchesAny reports whether a request in seen is covered by the granted
// triple want, where "*" in want matches anything.
func matchesAny(want used, seen map[used]struct{}) bool {
	if want.verb != "*" && want.group != "*" && want.resource != "*" {
		_, ok := seen[want]
		return ok
	}
	for s := range seen {
		if (want.verb == "*" || want.verb == s.verb) && (want.group == "*" || want.group == s.group) && (want.resource == "*" || want.resource == s.resource) {
			return true
		}
	}
	return false
}
