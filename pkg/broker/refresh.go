package broker

import (
	"context"
	"errors"
	"sync"

	"k8s.io/apimachinery/pkg/types"

	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

// Run processes prefetches and refreshes until ctx is done. It blocks.
func (b *Broker) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range b.cfg.Workers {
		wg.Go(func() {
			for b.processNext(ctx) {
			}
		})
	}
	<-ctx.Done()
	b.queue.ShutDown()
	wg.Wait()
	return nil
}

func (b *Broker) processNext(ctx context.Context) bool {
	uid, shutdown := b.queue.Get()
	if shutdown {
		return false
	}
	b.processing.Add(1)
	defer b.processing.Add(-1)
	defer b.queue.Done(uid)
	retry, err := b.sync(ctx, uid)
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
	role, err := b.roleFor(ctx, pod)
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
	if _, err := b.fetchShared(ctx, pod, role); err != nil {
		if cachedOK && cached.expiration.Before(b.clock.Now()) {
			b.evict(uid, evictExpired)
		}
		var xe *exchange.Error
		if errors.As(err, &xe) && !xe.Retryable() {
			return false, err
		}
		return true, err
	}
	return false, nil
}

// Prefetched reports whether no prefetch or refresh is queued or running
// right now. At start-up, once the resolver has announced the node's pods,
// it turns true when all of them have been fetched (or have failed).
func (b *Broker) Prefetched() bool {
	return b.queue.Len() == 0 && b.processing.Load() == 0
}

func (b *Broker) evict(uid types.UID, reason string) {
	if b.cache.Remove(uid) {
		b.metrics.evictions.WithLabelValues(reason).Inc()
	}
}

// PodReady records a pod that arrived on the node (or changed its
// addresses) and queues a prefetch, so that its first request is normally a
// cache hit. It is called on the resolver's goroutine and does not block.
func (b *Broker) PodReady(pod podresolve.Pod) {
	b.mu.Lock()
	if b.gone.Contains(pod.UID) {
		b.mu.Unlock()
		return
	}
	b.known[pod.UID] = pod
	b.mu.Unlock()
	b.queue.Add(pod.UID)
}

// PodGone forgets a pod that left the node or lost its address: its cached
// credentials are evicted at once and can never come back, even from a
// fetch still in flight.
func (b *Broker) PodGone(pod podresolve.Pod) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.known, pod.UID)
	b.gone.Add(pod.UID, struct{}{})
	b.failures.Remove(pod.UID)
	b.evict(pod.UID, evictPodGone)
}

var _ podresolve.Listener = (*Broker)(nil)
