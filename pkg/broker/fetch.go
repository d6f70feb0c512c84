package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/types"

	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

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
	audience := cloud.Audience
	if cloud.TokenAudience != nil {
		audience = cloud.TokenAudience(req.Scope)
	}
	token, exp, err := b.tokens.token(ctx, pod, audience, cloud.TokenLifetime)
	if err != nil {
		return nil, err
	}
	xreq := exchange.Request{
		Token:           token,
		TokenExpiration: exp,
		Want:            req.Want,
		Role:            who.identity,
		Tenant:          who.tenant,
		Namespace:       pod.Namespace,
		Pod:             pod.Name,
		PodUID:          string(pod.UID),
		Duration:        cloud.Lifetime,
	}
	if req.Want == exchange.KindIDToken {
		xreq.Audience = req.Scope
	} else if req.Scope != "" {
		xreq.Scopes = strings.Fields(req.Scope)
	}
	start := b.clock.Now()
	creds, err := cloud.Exchanger.Exchange(ctx, xreq)
	b.metrics.observeUpstream(string(cloud.Name), err, b.clock.Since(start))
	if err != nil {
		return nil, fmt.Errorf("exchanging token of pod %s/%s for %s identity %q: %w", pod.Namespace, pod.Name, cloud.Name, who.identity,
			&cloudFailure{trust: cloud.TrustHint, audience: cloud.AudienceHint, err: err})
	}
	if err := checkCredentials(req.Want, creds); err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	e := &entry{pod: pod, who: who, creds: &creds, expiration: creds.Expiration, fetchedAt: b.clock.Now()}
	e.refreshAt = refreshTime(e)
	return e, nil
}

// checkCredentials refuses what an exchanger returned if it is not what
// was asked for or lacks a field every caller needs.
func checkCredentials(want exchange.Kind, c exchange.Credentials) error {
	if c.Kind != want {
		return fmt.Errorf("exchanger returned credentials of kind %d for a request of kind %d", c.Kind, want)
	}
	complete := c.Complete()
	if !complete {
		return errors.New("exchanger returned incomplete credentials")
	}
	return nil
}
