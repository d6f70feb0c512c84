package guard

import (
	"cmp"
	"errors"
	"math"
	"net/http"
	"net/netip"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"
	"k8s.io/utils/clock"
)

// Rules are what one wire surface asks of the guard in front of it. Each
// surface owns its rules (pkg/api/<surface>.GuardRules): the guard's
// refusals must read like the surface's own errors, or its clients
// misread them (Node's gcp-metadata rejects any answer without
// Metadata-Flavor: Google; azidentity reads {"error","error_description"}),
// and only the surface knows which headers its clients send.
type Rules struct {
	// WriteError writes the guard's refusals in the surface's wire format.
	// Required.
	WriteError ErrorWriter
	// RequireAuthorization refuses requests that carry no (or an empty)
	// Authorization header with 401. Only for a surface whose clients can
	// send one: every AWS SDK sends the header when the workload sets
	// AWS_CONTAINER_AUTHORIZATION_TOKEN, and a server-side request forgery
	// inside a pod, which can choose a URL but not add headers, then cannot
	// reach the credentials. No Google or Azure client sends Authorization
	// to its metadata endpoint; those surfaces check their own headers
	// (Metadata-Flavor, X-IDENTITY-HEADER). The value is not checked: it
	// proves nothing about who calls.
	RequireAuthorization bool
}

// LimiterConfig configures a Limiter. Zero values take the defaults above.
type LimiterConfig struct {
	RequestQPS   float64            // per source address; default DefaultRequestQPS
	RequestBurst int                // default DefaultRequestBurst
	MaxAddrs     int                // table size; default DefaultMaxAddrs
	Clock        clock.PassiveClock // default: real clock
}

// Limiter is the request budget of each source address (a token bucket per
// address, in a bounded table). The Handlers of all the surfaces one agent
// serves share one Limiter: a pod has one budget, however many surfaces it
// calls.
type Limiter struct {
	limit rate.Limit
	burst int
	clock clock.PassiveClock
	addrs *lru.Cache[netip.Addr, *rate.Limiter]
}

// NewLimiter returns a Limiter.
func NewLimiter(cfg LimiterConfig) (*Limiter, error) {
	if cfg.RequestQPS < 0 || cfg.RequestBurst < 0 || cfg.MaxAddrs < 0 {
		return nil, errors.New("guard: negative request limit")
	}
	cfg.RequestQPS = cmp.Or(cfg.RequestQPS, DefaultRequestQPS)
	cfg.RequestBurst = cmp.Or(cfg.RequestBurst, DefaultRequestBurst)
	cfg.MaxAddrs = cmp.Or(cfg.MaxAddrs, DefaultMaxAddrs)
	addrs, err := lru.New[netip.Addr, *rate.Limiter](cfg.MaxAddrs)
	if err != nil {
		return nil, err
	}
	return &Limiter{limit: rate.Limit(cfg.RequestQPS), burst: cfg.RequestBurst, clock: realClock(cfg.Clock), addrs: addrs}, nil
}

// HandlerConfig configures a Handler. Zero values take the defaults above.
type HandlerConfig struct {
	Next  http.Handler // required
	Rules              // the guarded surface's; WriteError is required
	// Metrics are required.
	Metrics *Metrics
	// Limiter is the per-address request budget, shared with the other
	// surfaces' Handlers. Nil: the Handler makes its own from the fields
	// below, which must then be the only ones set.
	Limiter      *Limiter
	RequestQPS   float64            // per source address; default DefaultRequestQPS
	RequestBurst int                // default DefaultRequestBurst
	MaxAddrs     int                // rate-limiter table size; default DefaultMaxAddrs
	Clock        clock.PassiveClock // default: real clock
}

// Handler refuses, before the broker runs, what no SDK sends and what a pod
// should not be able to do to the others. Its accepting path does not
// allocate.
type Handler struct {
	next  http.Handler
	write ErrorWriter
	m     *Metrics
	authz bool
	limit *Limiter
}

// NewHandler returns a Handler in front of cfg.Next.
func NewHandler(cfg HandlerConfig) (*Handler, error) {
	switch {
	case cfg.Next == nil:
		return nil, errors.New("guard: HandlerConfig.Next is required")
	case cfg.WriteError == nil:
		return nil, errors.New("guard: HandlerConfig.WriteError is required")
	case cfg.Metrics == nil:
		return nil, errNoMetrics
	case cfg.Limiter != nil && (cfg.RequestQPS != 0 || cfg.RequestBurst != 0 || cfg.MaxAddrs != 0 || cfg.Clock != nil):
		return nil, errors.New("guard: HandlerConfig sets both a shared Limiter and its own limits")
	}
	lim := cfg.Limiter
	if lim == nil {
		var err error
		if lim, err = NewLimiter(LimiterConfig{RequestQPS: cfg.RequestQPS, RequestBurst: cfg.RequestBurst,
			MaxAddrs: cfg.MaxAddrs, Clock: cfg.Clock}); err != nil {
			return nil, err
		}
	}
	return &Handler{next: cfg.Next, write: cfg.WriteError, m: cfg.Metrics, authz: cfg.RequireAuthorization, limit: lim}, nil
}

// forwardingHeaders are added by proxies. A proxy pod on the node (an
// egress proxy, a mesh gateway) that relays another pod's request would
// hand that pod its own identity, since identity is the connection's source
// address; IMDSv2 refuses such requests for the same reason. No SDK sends
// any of them. Keys are in canonical form, as net/http stores them.
var forwardingHeaders = [...]string{
	"X-Forwarded-For", "Forwarded", "Via", "X-Real-Ip", "X-Forwarded-Host", "X-Forwarded-Proto",
}

const (
	msgForwarded = "the request carries a proxy forwarding header (X-Forwarded-For, Forwarded, Via, X-Real-IP or X-Forwarded-Host/Proto): " +
		"credentials are served only to the pod that connects, never through a proxy"
	msgUnauthorized = "the request has no Authorization header; this agent requires one: " +
		"set AWS_CONTAINER_AUTHORIZATION_TOKEN to any value in the workload"
	msgRateLimited = "too many credential requests from this address; SDKs cache credentials, so retry later"
)

// ServeHTTP checks the rate first (the cheapest refusal for a hammering
// pod), then the headers, then hands the request on.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// An unparsable RemoteAddr is not limited here: the broker refuses it.
	if peer, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		if ok, wait := h.limit.allow(peer.Addr().Unmap()); !ok {
			h.m.rateLimited.Inc()
			h.write(w, http.StatusTooManyRequests, CodeRateLimited, msgRateLimited, wait)
			return
		}
	}
	for _, k := range forwardingHeaders {
		if _, ok := r.Header[k]; ok {
			h.m.forwarded.Inc()
			h.write(w, http.StatusBadRequest, CodeForwarded, msgForwarded, 0)
			return
		}
	}
	if h.authz {
		if v := r.Header["Authorization"]; len(v) == 0 || v[0] == "" {
			h.m.unauthorized.Inc()
			h.write(w, http.StatusUnauthorized, CodeUnauthorized, msgUnauthorized, 0)
			return
		}
	}
	h.next.ServeHTTP(w, r)
}

// allow takes a token from addr's bucket, or says how long until one is due.
func (l *Limiter) allow(addr netip.Addr) (bool, time.Duration) {
	lim, ok := l.addrs.Get(addr)
	if !ok {
		// Two first requests may race here; PeekOrAdd keeps one bucket.
		fresh := rate.NewLimiter(l.limit, l.burst)
		if prev, found, _ := l.addrs.PeekOrAdd(addr, fresh); found {
			lim = prev
		} else {
			lim = fresh
		}
	}
	now := l.clock.Now()
	if lim.AllowN(now, 1) {
		return true, 0
	}
	// Time until a whole token is back; Retry-After rounds it up to seconds.
	missing := 1 - lim.TokensAt(now)
	wait := time.Duration(math.Ceil(missing / float64(l.limit) * float64(time.Second)))
	return false, max(wait, time.Second)
}
