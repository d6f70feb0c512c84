package main

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// Defect: a SIGTERM during the start-up prefetch wait still bound the
// credential listeners.
func TestAwaitStartup(t *testing.T) {
	always := func() bool { return true }
	never := func() bool { return false }
	t.Run("synced and prefetched", func(t *testing.T) {
		if !awaitStartup(context.Background(), always, always, time.Minute) {
			t.Fatal("an agent that synced and prefetched may not serve")
		}
	})
	t.Run("prefetch wait over", func(t *testing.T) {
		if !awaitStartup(context.Background(), always, never, 10*time.Millisecond) {
			t.Fatal("an agent whose prefetch wait ran out may not serve")
		}
	})
	t.Run("stopped while waiting to sync", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if awaitStartup(ctx, never, always, time.Minute) {
			t.Fatal("an agent stopped before syncing serves")
		}
	})
	t.Run("stopped during the prefetch wait", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		var asked atomic.Int32
		prefetched := func() bool {
			if asked.Add(1) == 2 {
				cancel() // the signal arrives while prefetching
			}
			return false
		}
		if awaitStartup(ctx, always, prefetched, time.Minute) {
			t.Fatal("an agent told to stop during the prefetch wait serves")
		}
	})
}
