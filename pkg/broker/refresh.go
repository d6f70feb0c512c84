package broker

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
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
	// prefetch would fail and be retried for nothing; and once a hand-off
	// (if any) is taken, so that they fetch only what it did not bring.
	if cacheSynced(ctx, b.accounts.hasSynced) && b.fetchesReleased(ctx) {
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
	key, shutdown := b.queue.Get()
	if shutdown {
		return false
	}
	defer b.queue.Done(key)
	var retry bool
	var err error
	if key.req == podSync {
		retry, err = b.prefetch(ctx, key.uid)
		// The first attempt for an announced pod is over, whatever its
		// outcome.
		b.mu.Lock()
		delete(b.pending, key.uid)
		b.mu.Unlock()
	} else {
		retry, err = b.sync(ctx, key)
	}
	switch {
	case err == nil:
		b.queue.Forget(key)
	case retry:
		b.metrics.refreshFailures.Inc()
		b.log.Warn("refreshing credentials failed; will retry", "pod_uid", key.uid, "cloud", key.req.Cloud, "error", err)
		b.queue.AddRateLimited(key)
	default:
		b.metrics.refreshFailures.Inc()
		b.log.Info("refreshing credentials refused; not retrying in background", "pod_uid", key.uid, "cloud", key.req.Cloud, "error", err)
		b.queue.Forget(key)
	}
	return true
}

// prefetch syncs every cloud's Prefetch requests for which the pod has an
// identity. It reports the first failure, and whether any is worth a
// retry.
func (b *Broker) prefetch(ctx context.Context, uid types.UID) (retry bool, err error) {
	b.mu.Lock()
	pod, known := b.known[uid]
	b.mu.Unlock()
	if !known {
		return false, nil
	}
	for ci := range b.cfg.Clouds {
		for _, req := range b.prefetches[ci] {
			// No identity on this cloud, or only a federated principal
			// (which every ServiceAccount has, so prefetching it would
			// fetch for every pod whether it uses the cloud or not):
			// nothing to prefetch; the first request fetches.
			if _, who, perr := b.identityFor(pod, req); perr != nil && isRefusal(perr) || perr == nil && who.identity == "" {
				continue
			}
			r, serr := b.sync(ctx, entryKey{uid: uid, req: req})
			retry = retry || r
			if err == nil {
				err = serr
			}
		}
	}
	return retry, err
}

func isRefusal(err error) bool {
	var refusal *Refusal
	return errors.As(err, &refusal)
}

// sync makes sure a pod that is on the node has a fresh credential for
// key's request: it refreshes one due for it, and fetches a missing one
// only if it is one of the cloud's Prefetch requests. Any other key that is
// not cached was evicted (past the pod's PodCacheEntries, or by the LRU)
// after its refresh was queued: fetching it would put it back, evicting
// the pod's next entry, whose refresh is queued too, and so on for the
// pod's whole life (a pod asking for a new scope set or audience every few
// seconds would have the agent refresh an ever-growing set in the
// background); it is dropped, and the pod's next request for it fetches,
// within the pod's fetch budget. It reports whether a failure is worth
// retrying.
func (b *Broker) sync(ctx context.Context, key entryKey) (retry bool, err error) {
	b.mu.Lock()
	pod, known := b.known[key.uid]
	b.mu.Unlock()
	cached, cachedOK := b.cache.Peek(key)
	if !known {
		if !cachedOK {
			return false, nil // the pod left: nothing to do
		}
		pod = cached.pod
	}
	ci, who, err := b.identityFor(pod, key.req)
	switch {
	case isRefusal(err):
		// No identity (any more), or not allowed: stop refreshing what the
		// pod may no longer have.
		if cachedOK {
			b.evict(key, evictRoleChanged)
		}
		return false, nil
	case err != nil:
		// The ServiceAccount is missing (being replaced) or not listed
		// yet: keep what is cached and try again.
		return true, err
	}
	if !cachedOK && (who.identity == "" || !slices.Contains(b.prefetches[ci], key.req)) {
		// Evicted, and no prefetch would fetch it (prefetch skips a
		// federated principal, which every pod has).
		return false, nil
	}
	now := b.clock.Now()
	if cachedOK && cached.who == who {
		if due := cached.refreshAt.Sub(now); due > 0 && cached.expiration.Sub(now) > FreshnessFloor {
			// Queued early (a pod update, a duplicate add): come back when due.
			b.queue.AddAfter(key, due)
			return false, nil
		}
	}
	if _, err := b.fetchShared(ctx, pod, ci, who, key, false); err != nil {
		if cachedOK && cached.expiration.Before(b.clock.Now()) {
			b.evict(key, evictExpired)
		}
		return retryable(err), err
	}
	return false, nil
}

// retryable reports whether a failed background fetch is worth retrying.
func retryable(err error) bool {
	var xe *exchange.Error
	var pd *provisionalDenial
	switch {
	case errors.Is(err, errPodGone), isRefusal(err):
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

func (b *Broker) evict(key entryKey, reason string) {
	if b.cache.Remove(key) {
		b.metrics.evictions.WithLabelValues(reason).Inc()
	}
}

// evictIdentity evicts what the pod has cached for who on cloud.
func (b *Broker) evictIdentity(uid types.UID, cloud exchange.Cloud, who principal, reason string) {
	b.mu.Lock()
	reqs := slices.Clone(b.asked[uid])
	b.mu.Unlock()
	for _, req := range reqs {
		key := entryKey{uid: uid, req: req}
		if e, ok := b.cache.Peek(key); ok && req.Cloud == cloud && e.who == who {
			b.evict(key, reason)
		}
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
	if len(b.asked[pod.UID]) == 0 {
		b.pending[pod.UID] = struct{}{}
	}
	b.mu.Unlock()
	b.queue.Add(entryKey{uid: pod.UID, req: podSync})
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
