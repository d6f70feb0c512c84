package aws

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"unicode/utf8"
)

// STS accepts a RoleSessionName of 2 to 64 characters from [\w+=,.@-], where
// \w is ASCII only (letters, digits, underscore).
const (
	maxSessionNameLen = 64
	minSessionNameLen = 2
	// sessionHashLen hex digits of SHA-256 keep names of different pods apart
	// even when their readable part is cut: 40 bits.
	sessionHashLen = 10
	// minNamespaceLen is how much of a long namespace survives when both the
	// namespace and the pod name are too long to fit whole.
	minNamespaceLen = 24
)

// SessionName returns the RoleSessionName for a pod:
// "<namespace>.<pod>.<hash>", where hash is 10 hex digits of a SHA-256 over
// namespace, pod name and UID. Guarantees:
//   - the result always matches [\w+=,.@-]{2,64}, whatever the input;
//   - it starts with the (sanitised) namespace and pod name, so that
//     CloudTrail names the workload; when they are too long, both are cut,
//     the namespace keeping at least 24 characters if it has them;
//   - two pods differ in the hash even if they share namespace and name (a
//     pod recreated under the same name has a new UID), so sessions of
//     different pods are told apart even when the readable part is cut.
//
// Characters STS does not accept (anything outside ASCII letters, digits and
// _+=,.@-) become '-'. A namespace never contains '.', so the first '.'
// separates namespace from pod name.
//
// The UID may be given as a string or as k8s.io/apimachinery's types.UID.
func SessionName[U ~string](namespace, pod string, uid U) string {
	sum := sha256.Sum256([]byte(namespace + "/" + pod + "/" + string(uid)))
	suffix := "." + hex.EncodeToString(sum[:])[:sessionHashLen]

	ns, name := sanitise(namespace), sanitise(pod)
	if ns == "" {
		ns = "-"
	}
	if name == "" {
		name = "-"
	}
	avail := maxSessionNameLen - len(suffix) - len(".")
	if len(ns)+len(name) > avail {
		nsLen := min(len(ns), max(avail-len(name), minNamespaceLen))
		ns = ns[:nsLen]
		name = name[:min(len(name), avail-nsLen)]
	}
	return ns + "." + name + suffix
}

// SessionNameFor makes a caller-supplied session name acceptable to STS:
// disallowed characters become '-', and a name longer than 64 characters is
// cut and given a hash of the whole name, so that two long names sharing a
// prefix stay distinct. It reports false for a name too short to be useful
// (STS needs at least 2 characters).
func SessionNameFor(s string) (string, bool) {
	clean := sanitise(s)
	if len(clean) < minSessionNameLen {
		return "", false
	}
	if len(clean) <= maxSessionNameLen {
		return clean, true
	}
	sum := sha256.Sum256([]byte(s))
	suffix := "." + hex.EncodeToString(sum[:])[:sessionHashLen]
	return clean[:maxSessionNameLen-len(suffix)] + suffix, true
}

// sanitise replaces every rune STS would reject with '-'. Invalid UTF-8 counts
// one '-' per bad byte. The result is ASCII, so byte and character lengths
// agree.
func sanitise(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		if allowedInSessionName(r) {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	return b.String()
}

func allowedInSessionName(r rune) bool {
	switch {
	case r >= utf8.RuneSelf:
		return false
	case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9':
		return true
	}
	return strings.ContainsRune("_+=,.@-", r)
}
