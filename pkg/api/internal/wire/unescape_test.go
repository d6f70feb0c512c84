package wire

import (
	"net/url"
	"strings"
	"testing"
)

// TestValuesUnescapeIsQueryUnescape: every value decodes as
// url.QueryUnescape decodes it, errors included, seen before or not.
func TestValuesUnescapeIsQueryUnescape(t *testing.T) {
	var vs Values
	for _, v := range []string{"", "plain", "https%3A%2F%2Fmanagement.azure.com%2F", "a+b", "%2b", "%zz", "%4", "%", "a%2",
		"%C3%A9", "%00", strings.Repeat("%41", 600), strings.Repeat("a", 511), strings.Repeat("a", 513)} {
		for range 2 {
			got, err := vs.Unescape(v)
			want, werr := url.QueryUnescape(v)
			if got != want || (err == nil) != (werr == nil) {
				t.Errorf("Unescape(%q) = %q, %v; want %q, %v", v, got, err, want, werr)
			}
		}
	}
}

// TestValuesAllocateOnce: a value seen before is decoded without an
// allocation; the set stays bounded.
func TestValuesAllocateOnce(t *testing.T) {
	var vs Values
	const v = "https%3A%2F%2Fmanagement.azure.com%2F"
	if _, err := vs.Unescape(v); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = vs.Unescape(v) }); n != 0 {
		t.Errorf("%v allocations for a value seen before", n)
	}
	for i := range 2 * maxValues {
		_, _ = vs.Unescape(strings.Repeat("x", i+1))
	}
	if n := len(*vs.seen.Load()); n != maxValues {
		t.Errorf("%d values kept, want %d", n, maxValues)
	}
}

// TestValuesConcurrent: readers and writers at once (run with -race).
func TestValuesConcurrent(t *testing.T) {
	var vs Values
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 500 {
				v := strings.Repeat("%41", (g*500+i)%40+1)
				if got, err := vs.Unescape(v); err != nil || got != strings.Repeat("A", (g*500+i)%40+1) {
					t.Errorf("Unescape(%q) = %q, %v", v, got, err)
					return
				}
			}
		}()
	}
	for range 4 {
		<-done
	}
}
