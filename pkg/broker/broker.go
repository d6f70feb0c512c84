// Package broker turns "a pod on this node asks" into "here are that pod's
// cloud credentials". It owns the pod-bound TokenRequest, the per-pod
// credential cache with refresh-ahead, the de-duplication and rate limiting of
// upstream calls, and their metrics; the wire surfaces (pkg/api) serve it.
//
// Guarantees:
//   - A credential is cached under the UID of the pod it was minted for, along
//     with the role, and is only ever returned to a caller that the resolver
//     identifies as that very pod. Pods that leave the node are evicted, and
//     a fetch that completes after its pod left is discarded.
//   - A served credential has at least FreshnessFloor of lifetime left unless
//     upstream is failing, in which case a still valid one (with at least
//     staleServeFloor left) is served; an expired one never is.
//   - Concurrent requests for one pod share a single TokenRequest and a single
//     exchange; all upstream calls pass one rate limiter.
//   - No token or credential appears in a log line, a metric or an error text.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"

	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

// PodResolver identifies the pod behind a source address.
type PodResolver interface {
	Resolve(ctx context.Context, addr netip.Addr) (podresolve.Pod, error)
}

// Exchanger trades a pod-bound ServiceAccount token for cloud credentials.
type Exchanger = exchange.Exchanger

// Broker serves per-pod credentials. Create it with New, register it as the
// resolver's Listener, call Credentials from a wire surface, and call Run
// for background refresh.
type Broker struct {
	cfg      Config
	resolver PodResolver
	tokens   *tokenSource
	accounts *serviceAccounts
	policy   rolePolicy
	// extraField is, per cloud, the watch's first field holding its
	// ExtraAnnotations.
	extraField []int
	// prefetches are, per cloud, its Prefetch as requests.
	prefetches [][]Request
	// imagesField and ephemeralField are the watch's fields holding
	// AnnotationAllowedImages and AnnotationAllowEphemeral.
	imagesField, ephemeralField int
	clock                       clock.WithTicker
	log                         *slog.Logger
	metrics                     *metrics
	limiter                     *rate.Limiter
	inflight                    singleflight.Group
	queue                       workqueue.TypedRateLimitingInterface[entryKey]

	cache    *lru.Cache[entryKey, *entry]
	failures *lru.Cache[entryKey, fetchFailure]
	// podFetches holds each pod's budget of request-driven fetches.
	podFetches *lru.Cache[types.UID, *rate.Limiter]

	// mu makes "is the pod still here? then cache its credentials" atomic
	// with PodGone and markDead, so that a fetch finishing after its pod
	// left can never put a credential back.
	mu    sync.Mutex
	known map[types.UID]podresolve.Pod // pods the resolver announced; guarded by mu
	// pending holds pods announced but not yet fetched once, for
	// Prefetched. Guarded by mu.
	pending map[types.UID]struct{}
	// asked lists, per pod, the requests it has cached or failed entries
	// for, oldest first, at most PodCacheEntries. Guarded by mu.
	asked map[types.UID][]Request
	// gone holds pods that left the index. A pod that comes back (its
	// sandbox was recreated, same UID) leaves it again with PodReady.
	gone *lru.Cache[types.UID, struct{}]
	// dead holds pods the API server says no longer exist (a TokenRequest
	// answered NotFound or Conflict for their UID). UIDs are never reused,
	// so nothing is served, fetched or cached for them again, whatever the
	// informer still shows. Guarded by mu for writes.
	dead *lru.Cache[types.UID, struct{}]
	// gate holds the workers while a hand-off is taken (handoff.go).
	gate fetchGate
}

// New validates cfg and builds a Broker. It makes no API call; the one
// goroutine it starts is the refresh queue's timer (client-go's delaying
// queue starts it on construction), which Run stops when it returns.
func New(cfg Config) (*Broker, error) {
	cfg.setDefaults()
	switch {
	case cfg.ServiceAccounts == nil:
		return nil, errors.New("broker: ServiceAccounts is required")
	case cfg.Resolver == nil:
		return nil, errors.New("broker: Resolver is required")
	case len(cfg.Clouds) == 0:
		return nil, errors.New("broker: at least one cloud is required")
	case cfg.CacheSize < 0, cfg.PodCacheEntries < 0:
		return nil, fmt.Errorf("broker: cache sizes %d and %d must be positive", cfg.CacheSize, cfg.PodCacheEntries)
	case cfg.TokenExpiration < MinTokenExpiration:
		return nil, fmt.Errorf("broker: token expiration %s is below the %s the API server accepts for a TokenRequest", cfg.TokenExpiration, MinTokenExpiration)
	case cfg.RequestTimeout < 0, cfg.FetchTimeout < 0, cfg.PodFetchInterval < 0, cfg.PodFetchBurst < 0:
		return nil, errors.New("broker: timeouts and limits must not be negative")
	case cfg.UpstreamQPS < 0 || cfg.UpstreamBurst < 1:
		return nil, fmt.Errorf("broker: upstream rate %v/s burst %d must be positive", cfg.UpstreamQPS, cfg.UpstreamBurst)
	}
	// The watch keeps one field per cloud's identity annotation, then
	// each cloud's extra annotations.
	annotations := make([]string, len(cfg.Clouds))
	prefetch := make([][]Request, len(cfg.Clouds))
	for i, c := range cfg.Clouds {
		switch {
		case c.Name == "":
			return nil, errors.New("broker: a cloud without a name")
		case slices.ContainsFunc(cfg.Clouds[:i], func(o Cloud) bool { return o.Name == c.Name }):
			return nil, fmt.Errorf("broker: cloud %s configured twice", c.Name)
		case c.Exchanger == nil:
			return nil, fmt.Errorf("broker: cloud %s has no exchanger", c.Name)
		case c.Audience == "" && c.TokenAudience == nil, c.Annotation == "":
			return nil, fmt.Errorf("broker: cloud %s needs a token audience and an annotation", c.Name)
		case slices.Contains(c.AllowedIdentities, ""):
			return nil, fmt.Errorf("broker: cloud %s: empty allowed-identity pattern", c.Name)
		case c.Lifetime != 0 && c.Lifetime < MinLifetime:
			return nil, fmt.Errorf("broker: cloud %s: lifetime %s leaves no room to refresh before the %s freshness floor; use at least %s",
				c.Name, c.Lifetime, FreshnessFloor, MinLifetime)
		case c.DeniedRetryWindow < 0:
			return nil, fmt.Errorf("broker: cloud %s: negative denied-retry window", c.Name)
		}
		for _, r := range c.Prefetch {
			if r.Want == 0 {
				return nil, fmt.Errorf("broker: cloud %s: prefetch request %+v must name a kind", c.Name, r)
			}
			prefetch[i] = append(prefetch[i], Request{Cloud: c.Name, Want: r.Want, Scope: r.Scope})
		}
		annotations[i] = c.Annotation
	}
	extraField := make([]int, len(cfg.Clouds))
	for i, c := range cfg.Clouds {
		extraField[i] = len(annotations)
		annotations = append(annotations, c.ExtraAnnotations...)
	}
	imagesField, ephemeralField := len(annotations), len(annotations)+1
	annotations = append(annotations, AnnotationAllowedImages, AnnotationAllowEphemeral)
	b := &Broker{
		imagesField: imagesField, ephemeralField: ephemeralField,
		cfg:        cfg,
		resolver:   cfg.Resolver,
		policy:     rolePolicy{allowDefault: cfg.AllowDefaultServiceAccount},
		clock:      cfg.Clock,
		log:        cfg.Logger,
		limiter:    rate.NewLimiter(rate.Limit(cfg.UpstreamQPS), cfg.UpstreamBurst),
		known:      make(map[types.UID]podresolve.Pod),
		pending:    make(map[types.UID]struct{}),
		asked:      make(map[types.UID][]Request),
		extraField: extraField,
		prefetches: prefetch,
	}
	var err error
	if b.cache, err = lru.New[entryKey, *entry](cfg.CacheSize); err != nil {
		return nil, fmt.Errorf("broker: credential cache: %w", err)
	}
	if b.failures, err = lru.New[entryKey, fetchFailure](cfg.CacheSize); err != nil {
		return nil, fmt.Errorf("broker: failure cache: %w", err)
	}
	if b.gone, err = lru.New[types.UID, struct{}](cfg.CacheSize); err != nil {
		return nil, fmt.Errorf("broker: departed pods: %w", err)
	}
	if b.dead, err = lru.New[types.UID, struct{}](cfg.CacheSize); err != nil {
		return nil, fmt.Errorf("broker: deleted pods: %w", err)
	}
	if b.podFetches, err = lru.New[types.UID, *rate.Limiter](cfg.CacheSize); err != nil {
		return nil, fmt.Errorf("broker: per-pod fetch budgets: %w", err)
	}
	if b.accounts, err = newServiceAccounts(cfg.ServiceAccounts, annotations); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	b.metrics = newMetrics(cfg.Registerer, b.cache.Len)
	b.tokens = &tokenSource{client: cfg.ServiceAccounts, expiration: cfg.TokenExpiration, clock: cfg.Clock, metrics: b.metrics}
	b.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		jittered[entryKey]{workqueue.NewTypedItemExponentialFailureRateLimiter[entryKey](time.Second, 2*time.Minute)},
		workqueue.TypedRateLimitingQueueConfig[entryKey]{Name: "credbroker_refresh", Clock: cfg.Clock},
	)
	return b, nil
}

// Credentials returns credentials of the pod at addr for req. The answer's
// Credentials are shared with the cache: read them, never modify them.
func (b *Broker) Credentials(ctx context.Context, addr netip.Addr, req Request) (Answer, error) {
	start := b.clock.Now()
	pod, err := b.resolver.Resolve(ctx, addr)
	if err != nil {
		return Answer{Pod: pod}, fmt.Errorf("identifying caller: %w", err)
	}
	ci, who, err := b.identityFor(pod, req)
	if err != nil {
		return Answer{Pod: pod}, err
	}
	key := entryKey{uid: pod.UID, req: req}
	key.req.Identity = ""
	cached, ok := b.cache.Peek(key)
	if ok && cached.who == who {
		if now := b.clock.Now(); cached.expiration.Sub(now) >= FreshnessFloor {
			b.touch(key, cached, now)
			b.metrics.cacheHits.Inc()
			return Answer{Pod: pod, Identity: who.identity, Credentials: cached.creds}, nil
		}
	}
	if !ok || cached.who != who {
		cached = nil
	}
	creds, err := b.credentialsNotFresh(ctx, start, pod, ci, who, key, cached)
	return Answer{Pod: pod, Identity: who.identity, Credentials: creds}, err
}

// Identity resolves the pod at addr and returns the identity its
// ServiceAccount may use on cloud ("" for a federated principal), without
// fetching anything: what a surface lists before a token is asked for.
func (b *Broker) Identity(ctx context.Context, addr netip.Addr, cloud exchange.Cloud) (podresolve.Pod, string, error) {
	pod, err := b.resolver.Resolve(ctx, addr)
	if err != nil {
		return pod, "", fmt.Errorf("identifying caller: %w", err)
	}
	_, who, err := b.identityFor(pod, Request{Cloud: cloud})
	return pod, who.identity, err
}
