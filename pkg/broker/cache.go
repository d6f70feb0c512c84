package broker

import (
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

// entryKey is what the cache is keyed by: never an address. The request's
// Identity is always empty in a key: which identity a pod gets is its
// ServiceAccount's to say, and the entry records it.
type entryKey struct {
	uid types.UID
	req Request
}

// podSync is the queue item of a pod's prefetch: every cloud's Prefetch
// requests for which the pod has an identity.
var podSync = Request{}

// entry is one pod's cached credential for one request. It is immutable
// but for touched: a refresh replaces it, so readers need no lock beyond
// the cache's.
type entry struct {
	pod        podresolve.Pod
	who        principal
	creds      *exchange.Credentials
	expiration time.Time
	fetchedAt  time.Time
	refreshAt  time.Time
	// touched is when a hit last moved the entry to the front of the
	// cache's eviction order (Unix nanoseconds of the broker's clock).
	touched atomic.Int64
}

// touchInterval is how often at most a hit moves its entry to the front
// of the cache's eviction order. Moving it takes the cache's write lock and
// rewrites three list nodes, which on every hit was the largest share of
// the broker's work in a cache hit; once per interval keeps the order
// exact to within the interval, which is all an LRU of credentials that
// live for an hour needs.
const touchInterval = time.Second

// touch marks e, found under key by Peek, as used at now for the cache's
// eviction order. If a refresh replaced the entry in between, the new one
// is moved, which is as good.
func (b *Broker) touch(key entryKey, e *entry, now time.Time) {
	n := now.UnixNano()
	if last := e.touched.Load(); last != 0 && n >= last && n-last < int64(touchInterval) {
		return
	}
	e.touched.Store(n)
	b.cache.Get(key)
}

// record caches a fetch's outcome and schedules the next refresh. It returns
// the error callers are to see: during the denied-retry window a denial
// comes back marked as provisional.
func (b *Broker) record(pod podresolve.Pod, key entryKey, who principal, e *entry, err error) error {
	now := b.clock.Now()
	if err != nil {
		return b.recordFailure(pod, key, who, err, now)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.gone.Contains(pod.UID) || b.dead.Contains(pod.UID) {
		return nil
	}
	b.storeLocked(key, e, now)
	return nil
}

// storeLocked caches e under key, in place of any failure remembered for
// it, and schedules its refresh. b.mu must be held.
func (b *Broker) storeLocked(key entryKey, e *entry, now time.Time) {
	compact(e.creds)
	b.askedLocked(key)
	if b.cache.Add(key, e) {
		b.metrics.evictions.WithLabelValues(evictCapacity).Inc()
	}
	b.failures.Remove(key)
	b.queue.AddAfter(key, max(e.refreshAt.Sub(now), 0))
}

// compact copies the strings of c, not yet shared with anyone, into one
// allocation of their exact total size. Exchangers' strings come from
// response decoders that size buffers for growth (an SDK's XML
// decoder builds each value in a strings.Builder, so a session token
// holds up to twice its length): a cached credential lives for an hour
// per pod, and this halves what its strings hold.
func compact(c *exchange.Credentials) {
	fields := [...]*string{&c.AccessKeyID, (*string)(&c.SecretAccessKey), (*string)(&c.SessionToken), &c.AccountID,
		(*string)(&c.AccessToken), &c.TokenType, (*string)(&c.IDToken)}
	n := 0
	for _, f := range fields {
		n += len(*f)
	}
	if n == 0 {
		return
	}
	var sb strings.Builder
	sb.Grow(n)
	for _, f := range fields {
		sb.WriteString(*f)
	}
	all := sb.String()
	for _, f := range fields {
		l := len(*f)
		*f, all = all[:l], all[l:]
	}
}

// askedLocked records that the pod holds an entry for key.req, and drops
// the pod's oldest one beyond PodCacheEntries. b.mu must be held.
func (b *Broker) askedLocked(key entryKey) {
	list := b.asked[key.uid]
	if i := slices.Index(list, key.req); i >= 0 {
		list = slices.Delete(list, i, i+1)
	}
	list = append(list, key.req)
	for len(list) > b.cfg.PodCacheEntries {
		oldest := entryKey{uid: key.uid, req: list[0]}
		if b.cache.Remove(oldest) {
			b.metrics.evictions.WithLabelValues(evictPodLimit).Inc()
		}
		b.failures.Remove(oldest)
		list = list[1:]
	}
	b.asked[key.uid] = list
}

// markDead records that the API server no longer knows the pod: it is
// evicted and never fetched or served again.
func (b *Broker) markDead(pod podresolve.Pod) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dead.Add(pod.UID, struct{}{})
	b.forgetLocked(pod.UID, evictPodDeleted)
	b.log.Info("the API server says the pod no longer exists; nothing is served for it again",
		"namespace", pod.Namespace, "pod", pod.Name, "pod_uid", pod.UID)
}

// forgetLocked drops everything held for a pod. b.mu must be held.
func (b *Broker) forgetLocked(uid types.UID, reason string) {
	delete(b.known, uid)
	delete(b.pending, uid)
	b.gone.Add(uid, struct{}{})
	b.podFetches.Remove(uid)
	for _, req := range b.asked[uid] {
		key := entryKey{uid: uid, req: req}
		b.failures.Remove(key)
		b.evict(key, reason)
	}
	delete(b.asked, uid)
}

// refreshTime picks when to refresh: at 40-60% of the span during which the
// credential is fresh. Refreshing mid-span leaves as much time for retries
// as it has already lasted, and the jitter keeps pods that were fetched
// together (an agent restart, a rollout) from refreshing together.
func refreshTime(e *entry) time.Time {
	freshSpan := e.expiration.Sub(e.fetchedAt) - FreshnessFloor
	if freshSpan <= 0 {
		// Upstream granted less than we need: refresh soon, not in a loop.
		return e.fetchedAt.Add(30 * time.Second)
	}
	return e.fetchedAt.Add(time.Duration(float64(freshSpan) * (0.4 + 0.2*rand.Float64())))
}
