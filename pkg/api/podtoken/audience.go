package podtoken

import (
	"fmt"
	"slices"
	"strings"

	"github.com/credbroker/agent/pkg/broker"
)

// CloudConfig describes the pod-token cloud to the broker.
type CloudConfig struct {
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
}

// Reserved is an audience no pod token may carry, and whose it is (for
// messages: "the GCP workload identity provider's").
type Reserved struct {
	Audience string
	Owner    string
}

// BrokerCloud is the broker's pod-token cloud. The broker refuses an
// audience that is a spelling of a reserved one (SameAudience): Google STS,
// for one, accepts its provider's audience both as //iam.googleapis.com/...
// and as https://iam.googleapis.com/..., so reserving the configured
// spelling alone would let a pod whose prefix is https:// get a token
// Google accepts for another cloud's policy.
//
// SECURITY: this is where pod tokens and the clouds' exchanges are kept
// apart; CheckPrefix refuses at start the prefixes that could not be.
func BrokerCloud(cfg CloudConfig) broker.Cloud {
	c := broker.Cloud{Name: Cloud, TokenPerAudience: true, AudiencePrefix: cfg.Prefix,
		Annotation: cfg.Annotation, AllowedIdentities: cfg.Allowed}
	canon := make([]string, 0, len(cfg.Reserved))
	for _, r := range cfg.Reserved {
		if r.Audience == "" {
			continue
		}
		c.ReservedAudiences = append(c.ReservedAudiences, r.Audience)
		canon = append(canon, canonicalAudience(r.Audience))
	}
	c.ReservedAudience = func(aud string) bool { return slices.Contains(canon, canonicalAudience(aud)) }
	return c
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
