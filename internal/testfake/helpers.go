package testfake

import (
	"bytes"
	"sync"
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
