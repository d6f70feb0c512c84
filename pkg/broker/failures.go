package broker

import (
	"errors"
	"math/rand/v2"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/podresolve"
)

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
// Clouds' IAM is eventually consistent: an identity or trust created
// seconds ago is denied for a while, and a token service may call a token
// invalid when it could not fetch the issuer's keys. After the window the denial is final (403),
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
