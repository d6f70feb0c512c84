package aws_test

import (
	"regexp"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/credbroker/agent/pkg/exchange/aws"
)

// stsSessionName is what STS accepts for RoleSessionName.
var stsSessionName = regexp.MustCompile(`^[\w+=,.@-]{2,64}$`)

func TestSessionName(t *testing.T) {
	long := strings.Repeat("a", 63)
	tests := []struct {
		name       string
		namespace  string
		pod        string
		uid        string
		wantPrefix string
	}{
		{"short names kept whole", "team-a", "web-7d9f8-abcde", "5f0c", "team-a.web-7d9f8-abcde."},
		{"allowed punctuation kept", "ns", "a_b+c=d,e.f@g-h", "u", "ns.a_b+c=d,e.f@g-h."},
		{"unicode replaced per character", "équipe", "pod-ü", "u", "-quipe.pod--."},
		{"spaces and slashes replaced", "a b", "c/d", "u", "a-b.c-d."},
		{"invalid UTF-8 replaced", "ns", "p\xffq", "u", "ns.p-q."},
		{"long pod name cut, namespace whole", "prod", strings.Repeat("p", 253), "u", "prod." + strings.Repeat("p", 48) + "."},
		{"long namespace cut, pod whole", long, "web", "u", strings.Repeat("a", 49) + ".web."},
		{"both long: namespace keeps 24", long, strings.Repeat("p", 253), "u", strings.Repeat("a", 24) + "." + strings.Repeat("p", 28) + "."},
		{"empty inputs", "", "", "", "-.-."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := aws.SessionName(tt.namespace, tt.pod, tt.uid)
			if !stsSessionName.MatchString(got) {
				t.Errorf("SessionName = %q (%d bytes), not acceptable to STS", got, len(got))
			}
			if !strings.HasPrefix(got, tt.wantPrefix) {
				t.Errorf("SessionName = %q, want prefix %q", got, tt.wantPrefix)
			}
			if hash := got[len(tt.wantPrefix):]; !regexp.MustCompile(`^[0-9a-f]{10}$`).MatchString(hash) {
				t.Errorf("SessionName = %q: suffix %q is not a 10-digit hex hash", got, hash)
			}
		})
	}
}

func TestSessionNameUniquePerPod(t *testing.T) {
	longNS := strings.Repeat("n", 63)
	longPod := strings.Repeat("p", 200)
	pods := [][3]string{
		{"ns", "web", "uid-1"},
		{"ns", "web", "uid-2"}, // same name, recreated pod
		{"ns", "web2", "uid-1"},
		{"ns2", "web", "uid-1"},
		{longNS, longPod + "a", "uid-1"}, // identical after cutting
		{longNS, longPod + "b", "uid-1"},
		{"ns", "web", ""},
		{"ns", "café", "uid-1"}, // identical after sanitising
		{"ns", "cafè", "uid-1"},
	}
	seen := map[string][3]string{}
	for _, p := range pods {
		name := aws.SessionName(p[0], p[1], p[2])
		if other, dup := seen[name]; dup {
			t.Errorf("pods %q and %q share session name %q", other, p, name)
		}
		seen[name] = p
	}
	// Stable: the same pod always gets the same name.
	if a, b := aws.SessionName("ns", "web", "uid-1"), aws.SessionName("ns", "web", "uid-1"); a != b {
		t.Errorf("SessionName not deterministic: %q vs %q", a, b)
	}
}

func TestSessionNameAcceptsTypesUID(t *testing.T) {
	uid := types.UID("0b1e2f3a-1111-2222-3333-444455556666")
	if a, b := aws.SessionName("ns", "web", uid), aws.SessionName("ns", "web", string(uid)); a != b {
		t.Errorf("types.UID gives %q, string gives %q", a, b)
	}
}
