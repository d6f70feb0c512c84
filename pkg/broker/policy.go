package broker

import (
	"fmt"
	"strings"

	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

// rolePolicy decides which identities a pod may use: not any for the
// default ServiceAccount, and per cloud only the one its ServiceAccount
// names, within the operator's patterns (so that a namespace admin cannot
// annotate a ServiceAccount with any role of the account).
type rolePolicy struct {
	allowDefault bool
}

// checkServiceAccount runs before any API call: the default ServiceAccount is
// refused without asking what role it names.
func (p rolePolicy) checkServiceAccount(namespace, serviceAccount string) error {
	if serviceAccount == "default" && !p.allowDefault {
		return &Refusal{Code: CodeDefaultServiceAccount,
			Message: fmt.Sprintf("pods on the default ServiceAccount of namespace %s get no credentials: give the workload its own ServiceAccount", namespace)}
	}
	return nil
}

// checkIdentity checks the identity the ServiceAccount names on cloud c
// ("" when it names none; a GUID in lower case, see canonicalGUID) and the
// one the caller asked for ("" for whichever the ServiceAccount names). A
// cloud with its own Check decides alone: its annotation holds a policy
// for the request's scope, not an identity.
func (p rolePolicy) checkIdentity(c *Cloud, namespace, serviceAccount, identity string, req Request) error {
	requested := req.Identity
	if c.Check != nil {
		return c.Check(namespace, serviceAccount, identity, req.Scope)
	}
	noun := c.Noun
	if noun == "" {
		noun = "identity"
	}
	if identity == "" && !c.IdentityOptional {
		return &Refusal{Code: CodeNoRole,
			Message: fmt.Sprintf("ServiceAccount %s/%s has no %s annotation naming the %s to use", namespace, serviceAccount, c.Annotation, noun)}
	}
	if requested != "" && canonicalGUID(requested) != identity {
		return &Refusal{Code: CodeIdentityNotAllowed,
			Message: fmt.Sprintf("ServiceAccount %s/%s does not name the %s this request asks for; it may use only the one its %s annotation names", namespace, serviceAccount, noun, c.Annotation)}
	}
	if identity == "" || len(c.AllowedIdentities) == 0 {
		return nil
	}
	for _, pat := range c.AllowedIdentities {
		if globMatch(pat, identity) || isGUID(identity) && globMatch(strings.ToLower(pat), identity) {
			return nil
		}
	}
	return &Refusal{Code: CodeRoleNotAllowed,
		Message: fmt.Sprintf("%s %s named by ServiceAccount %s/%s is not allowed on this cluster", noun, identity, namespace, serviceAccount)}
}

// principal is whom a pod's credentials on a cloud stand for: the identity
// its ServiceAccount names and, on a cloud with tenants, the tenant (a
// client ID may mean nothing without its tenant; the cloud's Principal
// says). Cached entries, remembered
// failures and flights are matched on the whole of it, so that a change of
// either annotation takes effect on the next request and the next refresh.
// Both fields are canonical (canonicalGUID), so that == compares them as
// the identity provider does.
type principal struct {
	identity string
	tenant   string
}

// canonicalGUID returns s in lower case if it is a GUID, else s unchanged.
// GUIDs (client and tenant IDs, where a cloud uses them) are
// case-insensitive (RFC 9562), and lower case is their canonical form;
// other identities (resource names, email addresses) are never GUIDs and
// stay exact.
func canonicalGUID(s string) string {
	if isGUID(s) {
		return strings.ToLower(s)
	}
	return s
}

// isGUID reports whether s has the 8-4-4-4-12 hexadecimal form of a GUID.
func isGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f', 'A' <= c && c <= 'F':
		default:
			return false
		}
	}
	return true
}

// hasControl reports whether s holds a control character. No identity,
// tenant or audience has one; an annotation that does (the API server
// checks only the total size of annotation values) is a mistake or an
// attempt to confuse whatever reads it, and is refused.
//
// Control characters are C0 (below 0x20), DEL and C1 (U+0080 to U+009F).
// It runs on every request, so it reads bytes rather than decoding runes:
// C1 is encoded 0xC2 0x80 to 0xC2 0x9F, and 0xC2 never continues another
// sequence, so a decoder that resyncs after invalid bytes (as range over a
// string does) sees exactly these pairs.
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if !controlLead[s[i]] {
			continue
		}
		if s[i] != 0xc2 || i+1 < len(s) && 0x80 <= s[i+1] && s[i+1] < 0xa0 {
			return true
		}
	}
	return false
}

// controlLead marks the bytes hasControl looks at twice: C0, DEL and C1's
// lead byte.
var controlLead = func() (t [256]bool) {
	for c := range 0x20 {
		t[c] = true
	}
	t[0x7f], t[0xc2] = true, true
	return t
}()

// globMatch matches s against pattern (exchange.Glob).
func globMatch(pattern, s string) bool { return exchange.Glob(pattern, s) }

// cloudIndex returns the index of cloud in Config.Clouds, or -1.
func (b *Broker) cloudIndex(cloud exchange.Cloud) int {
	for i := range b.cfg.Clouds {
		if b.cfg.Clouds[i].Name == cloud {
			return i
		}
	}
	return -1
}

// identityFor applies the operator's policy and returns the cloud's index
// and the principal the pod's ServiceAccount names on it: its identity and
// tenant, both read from one version of the account. It reads the
// ServiceAccount watch and makes no API call.
func (b *Broker) identityFor(pod podresolve.Pod, req Request) (int, principal, error) {
	if err := b.policy.checkServiceAccount(pod.Namespace, pod.ServiceAccount); err != nil {
		return 0, principal{}, err
	}
	ci := b.cloudIndex(req.Cloud)
	if ci < 0 {
		return 0, principal{}, &Refusal{Code: CodeCloudNotServed,
			Message: fmt.Sprintf("this agent is not configured to serve %s credentials", req.Cloud)}
	}
	fields, err := b.accounts.fields(pod.Namespace, pod.ServiceAccount)
	if err != nil {
		return 0, principal{}, err
	}
	if fields != nil {
		if err := checkContainer(pod, fields[b.imagesField], fields[b.ephemeralField]); err != nil {
			return 0, principal{}, err
		}
	} else if pod.Container != nil && pod.Container.Kind == podresolve.ContainerEphemeral {
		return 0, principal{}, checkContainer(pod, "", "")
	}
	cloud := &b.cfg.Clouds[ci]
	var who principal
	if fields != nil {
		who.identity = fields[ci]
	}
	if cloud.Principal != nil {
		var extra []string
		if fields != nil {
			f := b.extraField[ci]
			extra = fields[f : f+len(cloud.ExtraAnnotations)]
		}
		p := cloud.Principal(who.identity, extra)
		who = principal{identity: p.Identity, tenant: p.Tenant}
	}
	if hasControl(who.identity) || hasControl(who.tenant) {
		return 0, principal{}, &Refusal{Code: CodeInvalidRole,
			Message: fmt.Sprintf("an annotation of ServiceAccount %s/%s that names this pod's %s identity (%s or its tenant) holds a control character; fix the annotation", pod.Namespace, pod.ServiceAccount, cloud.Name, cloud.Annotation)}
	}
	who = principal{identity: canonicalGUID(who.identity), tenant: canonicalGUID(who.tenant)}
	if err := b.policy.checkIdentity(cloud, pod.Namespace, pod.ServiceAccount, who.identity, req); err != nil {
		return 0, principal{}, err
	}
	return ci, who, nil
}
