package exchange

import "testing"

// TestGlob: '*' crosses the '/' of IAM role paths, '?' is one character;
// the broker's policy and the audit's findings both match with it.
func TestGlob(t *testing.T) {
	for _, c := range []struct {
		pattern, s string
		want       bool
	}{
		{"arn:aws:iam::111122223333:role/team-a/*", "arn:aws:iam::111122223333:role/team-a/app", true},
		{"arn:aws:iam::111122223333:role/team-a/*", "arn:aws:iam::111122223333:role/team-a/sub/app", true},
		{"arn:aws:iam::111122223333:role/team-a/*", "arn:aws:iam::111122223333:role/team-b/app", false},
		{"arn:aws:iam::*:role/x", "arn:aws:iam::999999999999:role/x", true},
		{"a?c", "abc", true}, {"a?c", "ac", false}, {"*", "", true}, {"", "a", false},
	} {
		if got := Glob(c.pattern, c.s); got != c.want {
			t.Errorf("Glob(%q, %q) = %v", c.pattern, c.s, got)
		}
	}
}
