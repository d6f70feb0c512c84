package guard

import (
	"errors"
	"math"
	"net/http"
	"net/netip"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"
	"k8s.io/utils/clock"
)

// HandlerConfig configures a Handler. Zero values take the defaults above.
type HandlerConfig struct {
	Next         http.Handler // required
	WriteError   ErrorWriter  // required
	Metrics      *Metrics     // required
	RequestQPS   float64      // per source address; default DefaultRequestQPS
	RequestBurst int          // default DefaultRequestBurst
	// RequireAuthorization refuses requests that carry no (or an empty)
	// Authorization header with 401. Every AWS SDK sends the header when the
	// workload sets AWS_CONTAINER_AUTHORIZATION_TOKEN, and a server-side
	// request forgery inside a pod, which can choose a URL but not add
	// headers, then cannot reach the credentials. The value is not checked:
	// it proves nothing about who calls.
	RequireAuthorization bool
	MaxAddrs             int                // rate-limiter table size; default DefaultMaxAddrs
	Clock                clock.PassiveClock // default: real clock
}

// Handler refuses, before the broker runs, what no SDK sends and what a pod
// should not be able to do to the others. Its accepting path does not
// allocate.
type Handler struct {
	next     http.Handler
	write    ErrorWriter
	m        *Metrics
	limit    rate.Limit
	burst    int
	authz    bool
	clock    clock.PassiveClock
	limiters *lru.Cache[netip.Addr, *rate.Limiter]
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
	case cfg.RequestQPS < 0, cfg.RequestBurst < 0, cfg.MaxAddrs < 0:
		return nil, errors.New("guard: negative request limit")
	}
	if cfg.RequestQPS == 0 {
		cfg.RequestQPS = DefaultRequestQPS
	}
	if cfg.RequestBurst == 0 {
		cfg.RequestBurst = DefaultRequestBurst
	}
	if cfg.MaxAddrs == 0 {
		cfg.MaxAddrs = DefaultMaxAddrs
	}
	limiters, err := lru.New[netip.Addr, *rate.Limiter](cfg.MaxAddrs)
	if err != nil {
		return nil, err
	}
	return &Handler{next: cfg.Next, write: cfg.WriteError, m: cfg.Metrics,
		limit: rate.Limit(cfg.RequestQPS), burst: cfg.RequestBurst, authz: cfg.RequireAuthorization,
		clock: realClock(cfg.Clock), limiters: limiters}, nil
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
		if ok, wait := h.allow(peer.Addr().Unmap()); !ok {
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
func (h *Handler) allow(addr netip.Addr) (bool, time.Duration) {
	lim, ok := h.limiters.Get(addr)
	if !ok {
		// Two first requests may race here; PeekOrAdd keeps one bucket.
		fresh := rate.NewLimiter(h.limit, h.burst)
		if prev, found, _ := h.limiters.PeekOrAdd(addr, fresh); found {
			lim = prev
		} else {
			lim = fresh
		}
	}
	now := h.clock.Now()
	if lim.AllowN(now, 1) {
		return true, 0
	}
	// Time until a whole token is back; Retry-After rounds it up to seconds.
	missing := 1 - lim.TokensAt(now)
	wait := time.Duration(math.Ceil(missing / float64(h.limit) * float64(time.Second)))
	return false, max(wait, time.Second)
}
