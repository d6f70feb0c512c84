package broker

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test stops what it started: the broker's workers, the ServiceAccount
// watch, singleflight fetches and background refreshes.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
