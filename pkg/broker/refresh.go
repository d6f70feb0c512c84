package broker

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"

	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

// Run watches ServiceAccounts and processes prefetches and refreshes until
// ctx is done. It blocks.
func (b *Broker) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { b.accounts.run(ctx) })
	// Workers start once ServiceAccounts are listed: before that every
	// prefetch would fail and be retried for nothing.
	if cacheSynced(ctx, b.accounts.hasSynced) {
		for range b.cfg.Workers {
			wg.Go(func() {
				for b.processNext(ctx) {
				}
			})
		}
	}
	<-ctx.Done()
	b.queue.ShutDown()
	wg.Wait()
	return nil
}

// cacheSynced waits until synced holds or ctx is done.
func cacheSynced(ctx context.Context, synced func() bool) bool {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !synced() {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
	return true
}

// HasSynced reports whether the ServiceAccount watch has listed.
func (b *Broker) HasSynced() bool { return b.accounts.hasSynced() }

func (b *Broker) processNext(ctx context.Context) bool {
	uid, shutdown := b.queue.Get()
	if shutdown {
		return false
	}
	defer b.queue.Done(uid)
	retry, err := b.sync(ctx, uid)
	// The first attempt for an announced pod is over, whatever its outcome.
	b.mu.Lock()
	delete(b.pending, uid)
	b.mu.Unlock()
	switch {
	case err == nil:
		b.queue.Forget(uid)
	case retry:
		b.metrics.refreshFailures.Inc()
		b.log.Warn("refreshing credentials failed; will retry", "pod_uid", uid, "error", err)
		b.queue.AddRateLimited(uid)
	default:
		b.metrics.refreshFailures.Inc()
		b.log.Info("refreshing credentials refused; not retrying in background", "pod_uid", uid, "error", err)
		b.queue.Forget(uid)
	}
	return true
}

// sync makes sure a pod that is on the node has fresh credentials: it
// prefetches for a pod that has none and refreshes ones due for it. It
// reports whether a failure is worth retrying.
func (b *Broker) sync(ctx context.Context, uid types.UID) (retry bool, err error) {
	b.mu.Lock()
	pod, known := b.known[uid]
	b.mu.Unlock()
	cached, cachedOK := b.cache.Peek(uid)
	if !known {
		if !cachedOK {
			return false, nil // the pod left: nothing to do
		}
		pod = cached.pod
	}
	role, err := b.roleFor(pod)
	var refusal *Refusal
	switch {
	case errors.As(err, &refusal):
		// No role (any more), or not allowed: stop refreshing what the pod
		// may no longer have.
		if cachedOK {
			b.evict(uid, evictRoleChanged)
		}
		return false, nil
	case err != nil:
		// The ServiceAccount is missing (being replaced) or not listed
		// yet: keep what is cached and try again.
		return true, err
	}
	now := b.clock.Now()
	if cachedOK && cached.role == role {
		if due := cached.refreshAt.Sub(now); due > 0 && cached.expiration.Sub(now) > FreshnessFloor {
			// Queued early (a pod update, a duplicate add): come back when due.
			b.queue.AddAfter(uid, due)
			return false, nil
		}
	}
	if _, err := b.fetchShared(ctx, pod, role, false); err != nil {
		if cachedOK && cached.expiration.Before(b.clock.Now()) {
			b.evict(uid, evictExpired)
		}
		return retryable(err), err
	}
	return false, nil
}

// retryable reports whether a failed background fetch is worth retrying.
func retryable(err error) bool {
	var xe *exchange.Error
	var refusal *Refusal
	var pd *provisionalDenial
	switch {
	case errors.Is(err, errPodGone), errors.As(err, &refusal):
		return false
	case errors.As(err, &pd):
		return true
	case errors.As(err, &xe):
		return xe.Retryable()
	}
	return true
}

// Prefetched reports whether every pod announced so far has had its first
// fetch (or failed it). At start-up, once the resolver has announced the
// node's pods, it turns true when all of them have been tried.
func (b *Broker) Prefetched() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.pending) == 0
}

func (b *Broker) evict(uid types.UID, reason string) {
	if b.cache.Remove(uid) {
		b.metrics.evictions.WithLabelValues(reason).Inc()
	}
}

// evictRole evicts the pod's cached credential if it is for role.
func (b *Broker) evictRole(uid types.UID, role, reason string) {
	if e, ok := b.cache.Peek(uid); ok && e.role == role {
		b.evict(uid, reason)
	}
}

// PodReady records a pod that arrived on the node, came back (same UID, a
// recreated sandbox) or changed its addresses, and queues a sync, so that
// its first request is normally a cache hit. It is called on the resolver's
// goroutine and does not block.
func (b *Broker) PodReady(pod podresolve.Pod) {
	b.mu.Lock()
	if b.dead.Contains(pod.UID) {
		// The API server said it is gone; the informer is behind.
		b.mu.Unlock()
		return
	}
	b.gone.Remove(pod.UID)
	b.known[pod.UID] = pod
	if _, cached := b.cache.Peek(pod.UID); !cached {
		b.pending[pod.UID] = struct{}{}
	}
	b.mu.Unlock()
	b.queue.Add(pod.UID)
}

// PodGone forgets a pod that stopped being resolvable: its cached
// credentials are evicted at once, and a fetch still in flight cannot put
// them back unless the same pod comes back with PodReady.
func (b *Broker) PodGone(pod podresolve.Pod) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.forgetLocked(pod.UID, evictPodGone)
}

var _ podresolve.Listener = (*Broker)(nil)

// jittered spreads a rate limiter's delays by +-20%, so that pods whose
// refreshes failed together (an outage) do not retry in lockstep.
type jittered[T comparable] struct {
	workqueue.TypedRateLimiter[T]
}

func (j jittered[T]) When(item T) time.Duration {
	d := j.TypedRateLimiter.When(item)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
