package broker

import (
	"cmp"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/credbroker/agent/pkg/exchange"
)

// Cloud is one cloud whose credentials the broker serves, as its own
// package describes it (exchange.Profile): the broker reads its identity
// from the ServiceAccount, applies its policy and asks its exchanger,
// knowing no cloud by name.
type Cloud = exchange.Profile

// FreshnessFloor is the least lifetime a served credential has whenever a
// fresh one can be had. botocore refetches on every call below 15 minutes
// and fails below 10; every other SDK is more lenient.
const FreshnessFloor = 15 * time.Minute

// MinLifetime is the least credential lifetime a cloud may ask of its
// exchanger: below it a credential would fall under FreshnessFloor before
// a refresh could land.
const MinLifetime = 2 * FreshnessFloor

// MinTokenExpiration is the least lifetime the API server accepts for a
// TokenRequest, and the default.
const MinTokenExpiration = 10 * time.Minute

// staleServeFloor is the least lifetime of a credential served while
// upstream is failing: less than this and the caller could not even use it.
const staleServeFloor = time.Minute

// Config configures a Broker. Zero values take the documented defaults.
type Config struct {
	ServiceAccounts ServiceAccountClient // required: TokenRequest and the ServiceAccount watch
	Resolver        PodResolver          // required
	Clouds          []Cloud              // at least one

	TokenExpiration            time.Duration // TokenRequest lifetime; default and minimum MinTokenExpiration
	AllowDefaultServiceAccount bool
	CacheSize                  int // credentials cached in all; default 4096
	// PodCacheEntries bounds what one pod holds in the cache (and in the
	// failure memo): a pod asking for a thousand scope sets or audiences
	// evicts its own oldest, never its neighbours'. Default 16.
	PodCacheEntries int

	// UpstreamQPS and UpstreamBurst limit fetches (each one TokenRequest plus
	// one exchange) across all pods. Defaults 50 and 100: a node of 250 pods
	// is prefetched in about 3 s after a restart, and a whole cluster's
	// steady state stays far below the token services' per-account quotas
	// (docs/upstream-cost.md).
	UpstreamQPS   float64
	UpstreamBurst int
	// RequestTimeout bounds how long a request waits for a cache miss to be
	// filled; the fetch itself goes on and fills the cache. Default 5s.
	RequestTimeout time.Duration
	// FetchTimeout bounds one fetch. Default 15s.
	FetchTimeout time.Duration
	// Workers fetch for prefetches and refreshes. Default 16: a restarted
	// agent prefetches its node's pods before serving, and each fetch mostly
	// waits on the API server and the cloud's token service.
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
	c.PodCacheEntries = cmp.Or(c.PodCacheEntries, 16)
	setDefault(&c.TokenExpiration, MinTokenExpiration)
	setDefault(&c.PodFetchInterval, 6*time.Second)
	c.PodFetchBurst = cmp.Or(c.PodFetchBurst, 10)
	setDefault(&c.RequestTimeout, 5*time.Second)
	setDefault(&c.FetchTimeout, 15*time.Second)
	c.CacheSize = cmp.Or(c.CacheSize, 4096)
	c.UpstreamQPS = cmp.Or(c.UpstreamQPS, 50)
	c.UpstreamBurst = cmp.Or(c.UpstreamBurst, 100)
	c.Workers = cmp.Or(c.Workers, 16)
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
