// Package broker turns "a pod on this node asks" into "here are that pod's
// cloud credentials". It owns the pod-bound TokenRequest, the per-pod
// credential cache with refresh-ahead, the de-duplication and rate limiting of
// upstream calls, the container-credentials HTTP API and its metrics.
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
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
type Exchanger interface {
	Exchange(ctx context.Context, req exchange.Request) (exchange.Credentials, error)
}

// Cloud is one cloud whose credentials the broker serves.
type Cloud struct {
	Name      exchange.Cloud
	Exchanger Exchanger // required
	// Audience is the audience of the pod-bound token the exchanger takes.
	// Default for AWS: "sts.amazonaws.com".
	Audience string
	// Annotation is the ServiceAccount annotation naming the identity.
	// Default for AWS: "eks.amazonaws.com/role-arn".
	Annotation string
	// AllowedIdentities are glob patterns the annotated identity must
	// match; empty allows every identity.
	AllowedIdentities []string
	// Federated serves a ServiceAccount without the annotation as its own
	// federated principal (identity ""), instead of refusing it.
	Federated bool
	// Prefetch lists the requests fetched when a pod with an identity on
	// this cloud arrives (its first request is then a cache hit). Default
	// for AWS: the container credentials.
	Prefetch []Request
	// TokenPerAudience makes the pod-bound token itself the credential
	// (service-to-service identity, exchange.KindIDToken): its audience is
	// the request's Scope, which must start with AudiencePrefix, match one
	// of the comma-separated glob patterns the ServiceAccount's annotation
	// lists and, when set, one of AllowedIdentities, and be none of
	// ReservedAudiences (the other clouds' token audiences: handing those
	// out would let a pod skip their policy) nor one ReservedAudience
	// reports (the same audiences under other spellings; package podtoken
	// describes this cloud). It needs no Exchanger; the token lives
	// Lifetime.
	TokenPerAudience  bool
	AudiencePrefix    string
	ReservedAudiences []string
	ReservedAudience  func(audience string) bool
	// TenantAnnotation, when set, is the ServiceAccount annotation naming
	// the identity's tenant (Azure); DefaultTenant applies without it.
	TenantAnnotation string
	DefaultTenant    string
	// Lifetime is the credential lifetime asked of this cloud's exchanger
	// (exchange.Request.Duration), or of the API server for pod tokens.
	// Zero means, for AWS, Config.SessionDuration (--session-duration);
	// for pod tokens, an hour; for other clouds, the exchanger's own
	// default. Each cloud has its own: Google caps impersonated tokens at
	// an hour where AWS grants twelve.
	Lifetime time.Duration
	// DeniedRetryWindow is how long this cloud's denials are answered as
	// retryable after the first of a run of them, because its IAM is
	// eventually consistent (a binding or trust created a moment ago is
	// refused for a while); final (403) after. The exchanger's package
	// documents its cloud's figure. Zero means deniedRetryWindow.
	DeniedRetryWindow time.Duration
}

// podTokenLifetime is the default Lifetime of pod tokens: what the kubelet
// projects by default, whatever the other clouds' lifetimes.
const podTokenLifetime = time.Hour

// FreshnessFloor is the least lifetime a served credential has whenever a
// fresh one can be had. botocore refetches on every call below 15 minutes
// and fails below 10; every other SDK is more lenient.
const FreshnessFloor = 15 * time.Minute

// staleServeFloor is the least lifetime of a credential served while
// upstream is failing: less than this and the caller could not even use it.
const staleServeFloor = time.Minute

// Config configures a Broker. Zero values take the documented defaults.
type Config struct {
	ServiceAccounts ServiceAccountClient // required: TokenRequest and the ServiceAccount watch
	Resolver        PodResolver          // required
	Clouds          []Cloud              // at least one

	TokenExpiration            time.Duration // TokenRequest lifetime; default and minimum 10m (the API's minimum)
	SessionDuration            time.Duration // AWS credential lifetime unless its Cloud sets Lifetime; default 1h
	AllowDefaultServiceAccount bool
	CacheSize                  int // credentials cached in all; default 4096
	// PodCacheEntries bounds what one pod holds in the cache (and in the
	// failure memo): a pod asking for a thousand scope sets or audiences
	// evicts its own oldest, never its neighbours'. Default 16.
	PodCacheEntries int

	// UpstreamQPS and UpstreamBurst limit fetches (each one TokenRequest plus
	// one exchange) across all pods. Defaults 50 and 100: a node of 250 pods
	// is prefetched in about 3 s after a restart, and a whole cluster's
	// steady state stays far below STS's per-account quota (docs/upstream-cost.md).
	UpstreamQPS   float64
	UpstreamBurst int
	// RequestTimeout bounds how long a request waits for a cache miss to be
	// filled; the fetch itself goes on and fills the cache. Default 5s.
	RequestTimeout time.Duration
	// FetchTimeout bounds one fetch. Default 15s.
	FetchTimeout time.Duration
	// Workers fetch for prefetches and refreshes. Default 16: a restarted
	// agent prefetches its node's pods before serving, and each fetch mostly
	// waits on the API server and STS.
	Workers int
	// PodFetchBurst and PodFetchInterval limit the fetches one pod's
	// requests may cause (a cache miss each), so that a pod cannot spend
	// the node's upstream budget: PodFetchBurst at once, then one per
	// PodFetchInterval. A well-behaved pod causes one fetch per refresh
	// span (about 25 minutes); background prefetches and refreshes are not
	// counted. Defaults 10 and 6s.
	PodFetchBurst    int
	PodFetchInterval time.Duration

	// Events records an Event on the calling pod for each refusal, so that
	// `kubectl describe pod` says why it gets no credentials. client-go's
	// record.EventRecorder is one (its spam filter and aggregation bound
	// what a pod asking in a loop costs the API server). Default: none.
	Events EventRecorder

	Registerer prometheus.Registerer // default: a private registry
	Logger     *slog.Logger          // default: discard
	Clock      clock.WithTicker      // default: real clock
}

func (c *Config) setDefaults() {
	setDefault := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	for i := range c.Clouds {
		cl := &c.Clouds[i]
		if cl.Name != exchange.AWS {
			continue
		}
		if cl.Audience == "" {
			cl.Audience = "sts.amazonaws.com"
		}
		if cl.Annotation == "" {
			cl.Annotation = "eks.amazonaws.com/role-arn"
		}
		if cl.Prefetch == nil {
			cl.Prefetch = []Request{{Cloud: exchange.AWS, Want: exchange.KindAWS}}
		}
	}
	if c.PodCacheEntries == 0 {
		c.PodCacheEntries = 16
	}
	setDefault(&c.TokenExpiration, 10*time.Minute)
	setDefault(&c.SessionDuration, time.Hour)
	for i := range c.Clouds {
		cl := &c.Clouds[i]
		switch {
		case cl.Lifetime != 0:
		case cl.Name == exchange.AWS:
			cl.Lifetime = c.SessionDuration
		case cl.TokenPerAudience:
			cl.Lifetime = podTokenLifetime
		}
	}
	setDefault(&c.PodFetchInterval, 6*time.Second)
	if c.PodFetchBurst == 0 {
		c.PodFetchBurst = 10
	}
	setDefault(&c.RequestTimeout, 5*time.Second)
	setDefault(&c.FetchTimeout, 15*time.Second)
	if c.CacheSize == 0 {
		c.CacheSize = 4096
	}
	if c.UpstreamQPS == 0 {
		c.UpstreamQPS = 50
	}
	if c.UpstreamBurst == 0 {
		c.UpstreamBurst = 100
	}
	if c.Workers == 0 {
		c.Workers = 16
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = clock.RealClock{}
	}
}

// Broker serves per-pod credentials. Create it with New, register it as the
// resolver's Listener, call Credentials from a wire surface, and call Run
// for background refresh.
type Broker struct {
	cfg      Config
	resolver PodResolver
	tokens   *tokenSource
	accounts *serviceAccounts
	policy   rolePolicy
	// tenantField is, per cloud, the watch's field holding the tenant
	// annotation, or -1.
	tenantField []int
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

// entry is one pod's cached credential for one request. It is immutable: a
// refresh replaces it, so readers need no lock beyond the cache's.
type entry struct {
	pod        podresolve.Pod
	who        principal
	creds      *exchange.Credentials
	expiration time.Time
	fetchedAt  time.Time
	refreshAt  time.Time
}

// fetchFailure remembers a failed fetch so that callers get the same answer
// without another upstream call until it expires: this is the backoff.
type fetchFailure struct {
	who      principal
	err      error
	until    time.Time
	failures int
	// firstDenied is when upstream first denied this pod the identity, in
	// the current run of denials; zero otherwise.
	firstDenied time.Time
	// windowEnd is, while the denial is provisional, when its window ends:
	// from then on the remembered denial is answered as final.
	windowEnd time.Time
}

// current is the error a caller is told now: a provisional denial becomes
// final once its window has ended, without waiting for the next fetch,
// which the backoff may put up to maxDeniedBackoff later.
func (f fetchFailure) current(now time.Time) error {
	if pd, ok := f.err.(*provisionalDenial); ok && !f.windowEnd.IsZero() && !now.Before(f.windowEnd) {
		return pd.err
	}
	return f.err
}

// negativeTTL is how long a permanent refusal (by the operator's policy,
// the API server or the identity provider) is remembered.
const negativeTTL = 30 * time.Second

// maxTransientBackoff caps the per-pod backoff after transient failures, so
// that a new pod is served within this long once upstream recovers.
const maxTransientBackoff = 10 * time.Second

// deniedRetryWindow is, unless a Cloud sets its own, how long upstream
// denials (AccessDenied, an invalid token) are treated as possibly
// transient, retried with backoff and answered with a retryable status.
// IAM is eventually consistent: a role or trust policy created seconds ago
// is denied for a while, and STS answers InvalidIdentityToken when it could
// not fetch the issuer's keys. After the window the denial is final (403),
// which SDKs do not retry.
const deniedRetryWindow = 2 * time.Minute

// deniedWindow returns cloud's denied-retry window.
func (b *Broker) deniedWindow(cloud exchange.Cloud) time.Duration {
	if i := b.cloudIndex(cloud); i >= 0 && b.cfg.Clouds[i].DeniedRetryWindow > 0 {
		return b.cfg.Clouds[i].DeniedRetryWindow
	}
	return deniedRetryWindow
}

// maxDeniedBackoff caps the backoff between fetches during the window.
const maxDeniedBackoff = 30 * time.Second

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
	case cfg.TokenExpiration < 10*time.Minute:
		return nil, fmt.Errorf("broker: token expiration %s is below the 10m the API server accepts for a TokenRequest", cfg.TokenExpiration)
	case cfg.RequestTimeout < 0, cfg.FetchTimeout < 0, cfg.PodFetchInterval < 0, cfg.PodFetchBurst < 0:
		return nil, errors.New("broker: timeouts and limits must not be negative")
	case cfg.UpstreamQPS < 0 || cfg.UpstreamBurst < 1:
		return nil, fmt.Errorf("broker: upstream rate %v/s burst %d must be positive", cfg.UpstreamQPS, cfg.UpstreamBurst)
	case cfg.SessionDuration < 2*FreshnessFloor:
		return nil, fmt.Errorf("broker: session duration %s leaves no room to refresh before the %s freshness floor; use at least %s",
			cfg.SessionDuration, FreshnessFloor, 2*FreshnessFloor)
	}
	// The watch keeps one field per cloud's identity annotation, then one
	// per tenant annotation.
	annotations := make([]string, len(cfg.Clouds))
	for i, c := range cfg.Clouds {
		switch {
		case c.Name == "":
			return nil, errors.New("broker: a cloud without a name")
		case slices.ContainsFunc(cfg.Clouds[:i], func(o Cloud) bool { return o.Name == c.Name }):
			return nil, fmt.Errorf("broker: cloud %s configured twice", c.Name)
		case c.Exchanger == nil && !c.TokenPerAudience:
			return nil, fmt.Errorf("broker: cloud %s has no exchanger", c.Name)
		case c.TokenPerAudience && c.AudiencePrefix == "":
			return nil, fmt.Errorf("broker: cloud %s hands out tokens for any audience: it needs an audience prefix", c.Name)
		case c.Audience == "" && !c.TokenPerAudience, c.Annotation == "":
			return nil, fmt.Errorf("broker: cloud %s needs a token audience and an annotation", c.Name)
		case slices.Contains(c.AllowedIdentities, ""):
			return nil, fmt.Errorf("broker: cloud %s: empty allowed-identity pattern", c.Name)
		case c.Lifetime != 0 && c.Lifetime < 2*FreshnessFloor:
			return nil, fmt.Errorf("broker: cloud %s: lifetime %s leaves no room to refresh before the %s freshness floor; use at least %s",
				c.Name, c.Lifetime, FreshnessFloor, 2*FreshnessFloor)
		case c.DeniedRetryWindow < 0:
			return nil, fmt.Errorf("broker: cloud %s: negative denied-retry window", c.Name)
		}
		for _, r := range c.Prefetch {
			if r.Cloud != c.Name || r.Identity != "" || r.Want == 0 {
				return nil, fmt.Errorf("broker: cloud %s: prefetch request %+v must be for this cloud, name a kind and no identity", c.Name, r)
			}
		}
		annotations[i] = c.Annotation
	}
	tenantField := make([]int, len(cfg.Clouds))
	for i, c := range cfg.Clouds {
		tenantField[i] = -1
		if c.TenantAnnotation != "" {
			tenantField[i] = len(annotations)
			annotations = append(annotations, c.TenantAnnotation)
		}
	}
	imagesField, ephemeralField := len(annotations), len(annotations)+1
	annotations = append(annotations, AnnotationAllowedImages, AnnotationAllowEphemeral)
	b := &Broker{
		imagesField: imagesField, ephemeralField: ephemeralField,
		cfg:         cfg,
		resolver:    cfg.Resolver,
		policy:      rolePolicy{allowDefault: cfg.AllowDefaultServiceAccount},
		clock:       cfg.Clock,
		log:         cfg.Logger,
		limiter:     rate.NewLimiter(rate.Limit(cfg.UpstreamQPS), cfg.UpstreamBurst),
		known:       make(map[types.UID]podresolve.Pod),
		pending:     make(map[types.UID]struct{}),
		asked:       make(map[types.UID][]Request),
		tenantField: tenantField,
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
	if b.metrics, err = newMetrics(cfg.Registerer, b.cache.Len); err != nil {
		return nil, fmt.Errorf("broker: registering metrics: %w", err)
	}
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
	cached, ok := b.cache.Get(key)
	if ok && cached.who == who && cached.expiration.Sub(b.clock.Now()) >= FreshnessFloor {
		b.metrics.cacheHits.Inc()
		return Answer{Pod: pod, Identity: who.identity, Credentials: cached.creds}, nil
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

// credentialsNotFresh is the path for a pod with no fresh credential
// cached: back off after a recent failure, else fetch, and fall back to a
// still valid cached credential while upstream fails. It is kept apart from
// Credentials so that the cache-hit path stays small (on a new connection's
// goroutine a larger frame costs a stack growth per request).
func (b *Broker) credentialsNotFresh(ctx context.Context, start time.Time, pod podresolve.Pod, ci int, who principal, key entryKey, cached *entry) (*exchange.Credentials, error) {
	usable := func(err error) bool {
		return cached != nil && cached.expiration.Sub(b.clock.Now()) >= staleServeFloor && !endsStaleServing(err)
	}
	if f, failing := b.failures.Get(key); failing && f.who == who && b.clock.Now().Before(f.until) {
		if usable(f.err) {
			b.metrics.cacheStale.Inc()
			return cached.creds, nil
		}
		return nil, f.current(b.clock.Now())
	}
	if b.dead.Contains(pod.UID) {
		return nil, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, errPodGone)
	}

	b.metrics.cacheMisses.Inc()
	// One deadline for the whole request, the time spent identifying the
	// caller included.
	ctx, cancel := context.WithTimeout(ctx, b.cfg.RequestTimeout-b.clock.Since(start))
	defer cancel()
	fresh, err := b.fetchShared(ctx, pod, ci, who, key, true)
	if err == nil {
		return fresh.creds, nil
	}
	if usable(err) {
		b.metrics.cacheStale.Inc()
		return cached.creds, nil
	}
	return nil, err
}

// allowPodFetch spends one of the pod's request-driven fetches.
func (b *Broker) allowPodFetch(uid types.UID) bool {
	lim, ok := b.podFetches.Get(uid)
	if !ok {
		lim = rate.NewLimiter(rate.Every(b.cfg.PodFetchInterval), b.cfg.PodFetchBurst)
		if prev, found, _ := b.podFetches.PeekOrAdd(uid, lim); found {
			lim = prev
		}
	}
	// On the broker's clock, like the rest of its time keeping.
	return lim.AllowN(b.clock.Now(), 1)
}

// cloudIndex returns the index of cloud in Config.Clouds, or -1.
func (b *Broker) cloudIndex(cloud exchange.Cloud) int {
	for i := range b.cfg.Clouds {
		if b.cfg.Clouds[i].Name == cloud {
			return i
		}
	}
	return -1
}

// identityFor applies the operator's policy and returns the cloud's index
// and the principal the pod's ServiceAccount names on it: its identity and
// tenant, both read from one version of the account. It reads the
// ServiceAccount watch and makes no API call.
func (b *Broker) identityFor(pod podresolve.Pod, req Request) (int, principal, error) {
	if err := b.policy.checkServiceAccount(pod.Namespace, pod.ServiceAccount); err != nil {
		return 0, principal{}, err
	}
	ci := b.cloudIndex(req.Cloud)
	if ci < 0 {
		return 0, principal{}, &Refusal{Code: CodeCloudNotServed,
			Message: fmt.Sprintf("this agent is not configured to serve %s credentials", req.Cloud)}
	}
	fields, err := b.accounts.fields(pod.Namespace, pod.ServiceAccount)
	if err != nil {
		return 0, principal{}, err
	}
	if fields != nil {
		if err := checkContainer(pod, fields[b.imagesField], fields[b.ephemeralField]); err != nil {
			return 0, principal{}, err
		}
	} else if pod.Container != nil && pod.Container.Kind == podresolve.ContainerEphemeral {
		return 0, principal{}, checkContainer(pod, "", "")
	}
	cloud := &b.cfg.Clouds[ci]
	var who principal
	if fields != nil {
		who.identity = fields[ci]
	}
	who.tenant = cloud.DefaultTenant
	if f := b.tenantField[ci]; f >= 0 && fields != nil && fields[f] != "" {
		who.tenant = fields[f]
	}
	if hasControl(who.identity) || hasControl(who.tenant) {
		return 0, principal{}, &Refusal{Code: CodeInvalidRole,
			Message: fmt.Sprintf("an annotation of ServiceAccount %s/%s that names this pod's %s identity (%s or its tenant) holds a control character; fix the annotation", pod.Namespace, pod.ServiceAccount, cloud.Name, cloud.Annotation)}
	}
	who = principal{identity: canonicalGUID(who.identity), tenant: canonicalGUID(who.tenant)}
	if err := b.policy.checkIdentity(cloud, pod.Namespace, pod.ServiceAccount, who.identity, req); err != nil {
		return 0, principal{}, err
	}
	return ci, who, nil
}

// fetchShared fetches once for all concurrent callers asking for the same
// pod and request. The fetch runs under its own timeout, detached from the
// first caller, so that a caller giving up neither fails the others nor
// wastes the upstream call: its result still lands in the cache.
//
// A fetch a request starts spends one of the pod's request-driven fetches
// (callers joining it spend nothing); background fetches spend none.
func (b *Broker) fetchShared(ctx context.Context, pod podresolve.Pod, ci int, who principal, key entryKey, requestDriven bool) (*entry, error) {
	flight := strings.Join([]string{string(pod.UID), string(key.req.Cloud), strconv.Itoa(int(key.req.Want)), who.identity, who.tenant, key.req.Scope}, "\x00")
	ch := b.inflight.DoChan(flight, func() (any, error) {
		// A caller that missed the cache just before the previous flight
		// for this key landed joins nothing: it finds the result here
		// rather than fetching again.
		if e, ok := b.cache.Peek(key); ok && requestDriven && e.who == who && e.expiration.Sub(b.clock.Now()) >= FreshnessFloor {
			return e, nil
		}
		if requestDriven && !b.allowPodFetch(pod.UID) {
			b.metrics.podFetchLimited.Inc()
			return nil, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, errPodFetchLimited)
		}
		fctx, cancel := context.WithTimeout(context.Background(), b.cfg.FetchTimeout)
		defer cancel()
		e, err := b.fetch(fctx, pod, ci, who, key.req)
		return e, b.record(pod, key, who, e, err)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*entry), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, errStillFetching)
	}
}

func (b *Broker) fetch(ctx context.Context, pod podresolve.Pod, ci int, who principal, req Request) (*entry, error) {
	if b.dead.Contains(pod.UID) {
		return nil, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, errPodGone)
	}
	if err := b.limiter.Wait(ctx); err != nil {
		return nil, fmt.Errorf("fetching for pod %s/%s: %w", pod.Namespace, pod.Name, errUpstreamBusy)
	}
	cloud := &b.cfg.Clouds[ci]
	if cloud.TokenPerAudience {
		return b.fetchPodToken(ctx, pod, who, req, cloud.Lifetime)
	}
	token, _, err := b.tokens.token(ctx, pod, cloud.Audience, 0)
	if err != nil {
		return nil, err
	}
	xreq := exchange.Request{
		Token:       token,
		Want:        req.Want,
		Role:        who.identity,
		Tenant:      who.tenant,
		SessionName: exchange.SessionName(pod.Namespace, pod.Name, string(pod.UID)),
		Duration:    cloud.Lifetime,
	}
	if req.Want == exchange.KindIDToken {
		xreq.Audience = req.Scope
	} else if req.Scope != "" {
		xreq.Scopes = strings.Fields(req.Scope)
	}
	start := b.clock.Now()
	creds, err := cloud.Exchanger.Exchange(ctx, xreq)
	b.metrics.observeUpstream(upstreamSTS, err, b.clock.Since(start))
	if err != nil {
		return nil, fmt.Errorf("exchanging token of pod %s/%s for %s identity %q: %w", pod.Namespace, pod.Name, cloud.Name, who.identity, err)
	}
	if err := checkCredentials(req.Want, creds); err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	e := &entry{pod: pod, who: who, creds: &creds, expiration: creds.Expiration, fetchedAt: b.clock.Now()}
	e.refreshAt = refreshTime(e)
	return e, nil
}

// fetchPodToken gets the pod-bound token for the request's audience: the
// credential is the token itself.
func (b *Broker) fetchPodToken(ctx context.Context, pod podresolve.Pod, who principal, req Request, lifetime time.Duration) (*entry, error) {
	token, exp, err := b.tokens.token(ctx, pod, req.Scope, lifetime)
	if err != nil {
		return nil, err
	}
	if exp.IsZero() {
		return nil, &errKubeAPI{err: fmt.Errorf("TokenRequest for %s/%s returned no expiry", pod.Namespace, pod.ServiceAccount)}
	}
	creds := &exchange.Credentials{Kind: exchange.KindIDToken, IDToken: token, Expiration: exp}
	e := &entry{pod: pod, who: who, creds: creds, expiration: exp, fetchedAt: b.clock.Now()}
	e.refreshAt = refreshTime(e)
	return e, nil
}

// checkCredentials refuses what an exchanger returned if it is not what
// was asked for or lacks a field every caller needs.
func checkCredentials(want exchange.Kind, c exchange.Credentials) error {
	if c.Kind != want {
		return fmt.Errorf("exchanger returned credentials of kind %d for a request of kind %d", c.Kind, want)
	}
	complete := !c.Expiration.IsZero()
	switch c.Kind {
	case exchange.KindAWS:
		complete = complete && c.AccessKeyID != "" && c.SecretAccessKey != "" && c.SessionToken != ""
	case exchange.KindAccessToken:
		complete = complete && c.AccessToken != ""
	case exchange.KindIDToken:
		complete = complete && c.IDToken != ""
	}
	if !complete {
		return errors.New("exchanger returned incomplete credentials")
	}
	return nil
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
	b.askedLocked(key)
	if b.cache.Add(key, e) {
		b.metrics.evictions.WithLabelValues(evictCapacity).Inc()
	}
	b.failures.Remove(key)
	b.queue.AddAfter(key, max(e.refreshAt.Sub(now), 0))
	return nil
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

func (b *Broker) recordFailure(pod podresolve.Pod, key entryKey, who principal, err error, now time.Time) error {
	if errors.Is(err, errPodGone) {
		b.markDead(pod)
		return err
	}
	prev, _ := b.failures.Peek(key)
	if prev.who != who {
		prev = fetchFailure{}
	}
	f := fetchFailure{who: who, err: err, failures: prev.failures + 1}
	var xe *exchange.Error
	var refusal *Refusal
	switch {
	case errors.As(err, &xe) && (xe.Kind == exchange.Denied || xe.Kind == exchange.InvalidToken):
		if xe.Kind == exchange.Denied {
			// The identity's trust policy no longer admits the pod: what
			// is cached for that identity must not be served on.
			b.evictIdentity(pod.UID, key.req.Cloud, who, evictDenied)
		}
		f.deny(prev, now, 2*time.Second, b.deniedWindow(key.req.Cloud))
	case errors.As(err, &refusal) && refusal.Code == CodeTokenRequestRefused && apierrors.IsForbidden(err):
		// A restarting API server answers 403 for a moment, before its
		// RBAC cache has synced; an admission denial is answered the same
		// way. Like an upstream denial, it is retried for a while first.
		f.deny(prev, now, time.Second, deniedRetryWindow)
	case errors.As(err, &refusal), errors.As(err, &xe) && !xe.Retryable():
		f.until = now.Add(negativeTTL)
	default:
		f.until = now.Add(backoff(f.failures, time.Second, maxTransientBackoff))
	}
	b.mu.Lock()
	if !b.gone.Contains(pod.UID) && !b.dead.Contains(pod.UID) {
		b.askedLocked(key)
		b.failures.Add(key, f)
	}
	b.mu.Unlock()
	return f.err
}

// deny records a denial: provisional (retryable, backing off from base)
// until window after the first of an unbroken run of them, final after.
// A provisional denial remembered past the window's end is answered as
// final from then on (fetchFailure.current).
func (f *fetchFailure) deny(prev fetchFailure, now time.Time, base, window time.Duration) {
	f.firstDenied = prev.firstDenied
	if f.firstDenied.IsZero() {
		f.firstDenied = now
	}
	if end := f.firstDenied.Add(window); now.Before(end) {
		f.err = &provisionalDenial{err: f.err}
		f.until = now.Add(backoff(f.failures, base, maxDeniedBackoff))
		f.windowEnd = end
		return
	}
	f.until = now.Add(negativeTTL)
}

// backoff doubles from base with every failure up to limit, with +-20%
// jitter, so that pods failing together (an outage) do not retry together.
func backoff(failures int, base, limit time.Duration) time.Duration {
	d := min(base<<min(failures-1, 16), limit)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// endsStaleServing reports whether err is an authoritative refusal that
// ends serving what was cached before it: the identity provider denied the
// identity. A transient failure, a provisional one included, does not:
// serving a still valid credential through an outage is what stale serving
// is for.
func endsStaleServing(err error) bool {
	var xe *exchange.Error
	return errors.As(err, &xe) && xe.Kind == exchange.Denied
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
