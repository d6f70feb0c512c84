package broker

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/utils/clock"

	"github.com/credbroker/agent/pkg/exchange"
)

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
