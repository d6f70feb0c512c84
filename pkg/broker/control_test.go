package broker

import (
	"strings"
	"testing"
)

// hasControlRunes is hasControl's definition, by rune.
func hasControlRunes(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f || 0x80 <= r && r < 0xa0 })
}

func TestHasControlMatchesRunes(t *testing.T) {
	for _, s := range []string{
		"", "arn:aws:iam::123456789012:role/app", "a\x00", "\x1f", "\x7f", "\u0080", "x\u009fy", "\u00a0", "\u00bf",
		"\xc2", "\xc2\x7f", "\xc2\xa0", "\xe0\xc2\x80", "\xc3\x80", "\xe2\x80\x80", "\xf0\x9f\x98\x80", "\xff\x85", "é\u0085",
	} {
		if got, want := hasControl(s), hasControlRunes(s); got != want {
			t.Errorf("hasControl(%q) = %v, want %v", s, got, want)
		}
	}
}

func FuzzHasControl(f *testing.F) {
	for _, s := range []string{"arn:aws:iam::1:role/x", "\xc2\x85", "\xe0\xc2\x80", "\x7f", "\xc2\xa0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := hasControl(s), hasControlRunes(s); got != want {
			t.Errorf("hasControl(%q) = %v, want %v", s, got, want)
		}
	})
}

func BenchmarkHasControl(b *testing.B) {
	s := "arn:aws:iam::123456789012:role/credbroker-bench-workload"
	for b.Loop() {
		if hasControl(s) {
			b.Fatal("control")
		}
	}
}
