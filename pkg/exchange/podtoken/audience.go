package podtoken

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/credbroker/agent/pkg/exchange"
)

// Config describes the pod-token cloud.
type Config struct {
	// Prefix is the cluster's audience prefix (--token-audience-prefix):
	// every audience handed out starts with it. Required.
	Prefix string
	// Annotation is the ServiceAccount annotation listing the audiences
	// (comma-separated globs) its pods may ask for. Required.
	Annotation string
	// Allowed are the operator's glob patterns every audience must match;
	// empty allows every audience with the prefix.
	Allowed []string
	// Reserved are audiences never handed out, under any spelling (see
	// SameAudience): the other clouds' exchange audiences, which a pod
	// holding a token for could use to skip their policy, and the API
	// server's own.
	Reserved []Reserved
	// Lifetime is how long the tokens live; zero means an hour, what the
	// kubelet projects by default, whatever the other clouds' lifetimes.
	Lifetime time.Duration
}

// Reserved is an audience no pod token may carry, and whose it is (for
// messages: "the GCP workload identity provider's").
type Reserved struct {
	Audience string
	Owner    string
}

// Profile describes pod tokens to the broker: the credential is the
// pod-bound token itself (Exchanger), for the audience the request names,
// and the ServiceAccount's annotation lists the audiences its pods may ask
// for. An audience that is a spelling of a reserved one (SameAudience) is
// refused: Google STS, for one, accepts its provider's audience both as
// //iam.googleapis.com/... and as https://iam.googleapis.com/..., so
// reserving the configured spelling alone would let a pod whose prefix is
// https:// get a token Google accepts for another cloud's policy.
//
// SECURITY: this is where pod tokens and the clouds' exchanges are kept
// apart; CheckPrefix refuses at start the prefixes that could not be.
func Profile(cfg Config) (exchange.Profile, error) {
	if cfg.Prefix == "" {
		return exchange.Profile{}, fmt.Errorf("cloud %s hands out tokens for any audience: it needs an audience prefix", Cloud)
	}
	cfg.Lifetime = cmp.Or(cfg.Lifetime, defaultLifetime)
	p := &policy{prefix: cfg.Prefix, annotation: cfg.Annotation, allowed: cfg.Allowed}
	for _, r := range cfg.Reserved {
		if r.Audience == "" {
			continue
		}
		p.reserved = append(p.reserved, r.Audience)
		p.canon = append(p.canon, canonicalAudience(r.Audience))
	}
	return exchange.Profile{
		Name:              Cloud,
		Exchanger:         Exchanger{},
		TokenAudience:     func(scope string) string { return scope },
		TokenLifetime:     cfg.Lifetime,
		Annotation:        cfg.Annotation,
		AllowedIdentities: cfg.Allowed,
		Check:             p.check,
		Lifetime:          cfg.Lifetime,
	}, nil
}

// policy decides which audiences a pod may ask for.
type policy struct {
	prefix, annotation string
	allowed            []string
	reserved, canon    []string
}

// check checks a token's audience against the ServiceAccount's patterns
// (its annotation's value, comma-separated), the operator's and the
// reserved ones.
func (p *policy) check(namespace, serviceAccount, patterns, audience string) error {
	if patterns == "" {
		return &exchange.Refusal{Code: exchange.CodeNoIdentity,
			Message: fmt.Sprintf("ServiceAccount %s/%s has no %s annotation listing the token audiences it may ask for", namespace, serviceAccount, p.annotation)}
	}
	refuse := func(why string) error {
		return &exchange.Refusal{Code: exchange.CodeAudienceNotAllowed,
			Message: fmt.Sprintf("a token for audience %q is not allowed for ServiceAccount %s/%s: %s", audience, namespace, serviceAccount, why)}
	}
	switch {
	case audience == "":
		return &exchange.Refusal{Code: exchange.CodeAudienceNotAllowed, Message: "a token needs an audience"}
	case slices.Contains(p.reserved, audience), p.isReserved(audience):
		return refuse("it is the audience of a cloud exchange, never handed out")
	case !strings.HasPrefix(audience, p.prefix):
		return refuse(fmt.Sprintf("service audiences on this cluster start with %q", p.prefix))
	case len(p.allowed) > 0 && !slices.ContainsFunc(p.allowed, func(pat string) bool { return exchange.Glob(pat, audience) }):
		return refuse("the cluster's --allowed-token-audience patterns do not include it")
	}
	for pat := range strings.SplitSeq(patterns, ",") {
		if pat = strings.TrimSpace(pat); pat != "" && exchange.Glob(pat, audience) {
			return nil
		}
	}
	return refuse(fmt.Sprintf("its %s annotation does not list it", p.annotation))
}

// isReserved reports whether aud is a spelling of a reserved audience.
func (p *policy) isReserved(aud string) bool {
	return slices.Contains(p.canon, canonicalAudience(aud))
}

// CheckPrefix refuses a prefix that covers a reserved audience under any
// of the spellings its receiver may accept: with such a prefix the
// admission policy (serviceAudiencePrefix, kept equal to the prefix) lets
// the agent's identity mint that audience, so a compromised agent could
// mint tokens the Kubernetes API or a cloud accepts, whatever the agent's
// own checks.
func CheckPrefix(prefix string, reserved []Reserved) error {
	if prefix == "" {
		return nil
	}
	var covered []string
	for _, r := range reserved {
		s, ok := covers(prefix, r.Audience)
		if !ok || r.Audience == "" {
			continue
		}
		what := fmt.Sprintf("%q (%s audience", r.Audience, r.Owner)
		if s != r.Audience {
			what += fmt.Sprintf(", spelled %q", s)
		}
		covered = append(covered, what+")")
	}
	if len(covered) == 0 {
		return nil
	}
	return fmt.Errorf("--token-audience-prefix %q covers %s: a pod token, or a token a compromised agent mints, could carry it; "+
		"choose a prefix that names service-to-service audiences only, such as https://svc.example.com/",
		prefix, strings.Join(covered, ", "))
}

// SameAudience reports whether a and b are spellings of one audience as a
// receiver may read them: a URL with or without its https:// or http://
// scheme (Google STS takes //iam.googleapis.com/... and
// https://iam.googleapis.com/... alike), with or without trailing slashes,
// with its scheme and host in any letter case, with or without the default
// port; a bare name (sts.amazonaws.com) is the host of such a URL. It errs
// towards "same": it is used to refuse.
func SameAudience(a, b string) bool { return canonicalAudience(a) == canonicalAudience(b) }

// canonicalAudience is "//host/path" for a web URL, scheme-less or bare
// name ("scheme://host/path" for any other scheme), host and scheme in
// lower case, without a default port, a trailing dot on the host or
// trailing slashes.
func canonicalAudience(s string) string {
	scheme, host, path := splitAudience(s)
	return scheme + "//" + host + strings.TrimRight(path, "/")
}

// splitAudience splits s into a lower-case scheme with its colon ("" for
// http, https, scheme-less and bare names), the lower-case host without a
// default port or trailing dot, and the rest.
func splitAudience(s string) (scheme, host, rest string) {
	if i := strings.Index(s, "://"); i > 0 && validScheme(s[:i]) {
		scheme, s = strings.ToLower(s[:i])+":", s[i+3:]
	} else {
		s = strings.TrimPrefix(s, "//")
	}
	if scheme == "http:" || scheme == "https:" {
		scheme = ""
	}
	host, rest = s, ""
	if i := strings.IndexAny(s, "/?#"); i >= 0 {
		host, rest = s[:i], s[i:]
	}
	host = strings.ToLower(host)
	if scheme == "" {
		host = strings.TrimSuffix(strings.TrimSuffix(host, ":443"), ":80")
	}
	return scheme, strings.TrimSuffix(host, "."), rest
}

func validScheme(s string) bool {
	for i, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case i > 0 && (c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return s != ""
}

// covers reports whether some spelling of aud a receiver may accept (see
// SameAudience) starts with prefix, and which. The prefix's scheme and host
// part is compared in any letter case, its path exactly.
func covers(prefix, aud string) (string, bool) {
	scheme, host, path := splitAudience(aud)
	path = strings.TrimRight(path, "/")
	heads := []string{scheme + "//"}
	if scheme == "" {
		heads = []string{"https://", "//", "http://", ""}
	}
	for _, head := range heads {
		for _, tail := range []string{path, path + "/"} {
			s := head + host + tail
			n := len(head) + len(host) // the part compared in any case
			switch {
			case len(prefix) <= n:
				if strings.EqualFold(prefix, s[:len(prefix)]) {
					return s, true
				}
			case strings.EqualFold(prefix[:n], s[:n]) && strings.HasPrefix(s[n:], prefix[n:]):
				return s, true
			}
		}
	}
	return "", false
}
