package main

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives the tests: every
// server, broker worker, log sweeper and client connection a test starts
// must be stopped by it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
