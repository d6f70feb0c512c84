package testfake

import (
	"bytes"
	"os"
	"sync"
	"testing"
	"time"
)

// Buffer is a bytes.Buffer that a logger may write to while a test reads
// it: slog handlers write from the goroutines under test, and a plain
// bytes.Buffer would race. The zero value is ready to use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Unavailable stops a test whose prerequisite (a tool, a client library,
// root) is missing: a skip, with the reason, except under CI (CI=true),
// where it is a failure, because a suite that skips everything would pass
// while testing nothing.
func Unavailable(tb testing.TB, format string, args ...any) {
	tb.Helper()
	if os.Getenv("CI") == "true" {
		tb.Fatalf("prerequisite missing (CI=true, so this fails instead of skipping): "+format, args...)
	}
	tb.Skipf("prerequisite missing: "+format, args...)
}

// Eventually polls cond every millisecond until it holds. It asserts an
// outcome, not a duration: the 10-second bound only stops a broken test
// from hanging, and fails the test naming what it waited for.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
