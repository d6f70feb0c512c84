package broker

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/credbroker/agent/pkg/exchange"
)

// Carried is one cached credential as it crosses from an agent to its
// successor on the same node (package handoff carries it). It holds secrets:
// never log it, never write it to a file.
type Carried struct {
	PodUID         types.UID
	Namespace      string
	ServiceAccount string
	// Request is the cache key's request (its Identity always empty).
	Request Request
	// Identity and Tenant are the principal the exporting agent fetched
	// for. The importing agent trusts neither: it decides them again.
	Identity    string
	Tenant      string
	Credentials exchange.Credentials
	// FetchedAt is when the exporting agent fetched the credentials. It
	// only places the entry in its refresh cycle (an importer clamps it);
	// what is served is decided by Expiration, as for every entry.
	FetchedAt time.Time
}

// Reasons Import refuses an entry, for metric labels: a fixed set.
const (
	ImportMalformed   = "malformed"    // incomplete credentials, a kind other than asked, a key naming an identity
	ImportUnknownPod  = "unknown_pod"  // not a live pod of this agent's informer (gone, deleted, never here)
	ImportPodMismatch = "pod_mismatch" // the UID's namespace or ServiceAccount differs from this agent's view
	ImportPolicy      = "policy"       // this agent's policy refuses, or decides another principal or lifetime
	ImportStale       = "stale"        // too little lifetime left: this agent would refresh it at once
	ImportUnverified  = "unverified"   // the ServiceAccount is not in this agent's watch (yet)
	ImportCached      = "cached"       // this agent already holds a credential for the key
)

// ImportReasons lists every reason Import gives.
var ImportReasons = []string{ImportMalformed, ImportUnknownPod, ImportPodMismatch, ImportPolicy, ImportStale, ImportUnverified, ImportCached}

// ImportRefusal is why Import did not take an entry. Reason is one of the
// Import* constants; the text names no secret.
type ImportRefusal struct {
	Reason string
	detail string
}

func (r *ImportRefusal) Error() string {
	return "hand-off entry refused (" + r.Reason + "): " + r.detail
}

// importLifetime is the credential lifetime assumed for the freshness test
// of a cloud whose Lifetime is its exchanger's default.
const importLifetime = time.Hour

// Export returns what the broker holds for pods still on the node that has
// at least FreshnessFloor of lifetime left: what a successor may take. The
// result holds secrets; it is meant for package handoff only.
func (b *Broker) Export() []Carried {
	now := b.clock.Now()
	var out []Carried
	for _, key := range b.cache.Keys() {
		e, ok := b.cache.Peek(key)
		if !ok || e.expiration.Sub(now) < FreshnessFloor {
			continue
		}
		b.mu.Lock()
		_, known := b.known[key.uid]
		b.mu.Unlock()
		if !known || b.dead.Contains(key.uid) {
			continue
		}
		out = append(out, Carried{
			PodUID: key.uid, Namespace: e.pod.Namespace, ServiceAccount: e.pod.ServiceAccount,
			Request: key.req, Identity: e.who.identity, Tenant: e.who.tenant, Credentials: *e.creds, FetchedAt: e.fetchedAt,
		})
	}
	return out
}

// Import takes one entry a predecessor handed over, if this broker would
// serve it itself: the pod is live in its own informer under that UID,
// namespace and ServiceAccount; its own policy, asked now, names the same
// principal on that cloud; the credentials are complete, of the kind asked
// for, not past the latest point at which this broker would have refreshed
// them (60% into their fresh span: refreshTime), and live no longer than
// its own lifetime allows. Nothing the predecessor decided is trusted. A
// taken entry is served and refreshed like one this broker fetched: its
// refresh falls where refreshTime would have put it, so a rollout does not
// bunch refreshes up. Import makes no API call; it returns an
// *ImportRefusal when it does not take the entry.
func (b *Broker) Import(c Carried) error {
	refuse := func(reason, format string, args ...any) error {
		return &ImportRefusal{Reason: reason, detail: fmt.Sprintf(format, args...)}
	}
	if c.Request.Identity != "" || c.Request == podSync {
		return refuse(ImportMalformed, "a cache key names no identity and a cloud")
	}
	if err := checkCredentials(c.Request.Want, c.Credentials); err != nil {
		return refuse(ImportMalformed, "%v", err)
	}
	b.mu.Lock()
	pod, known := b.known[c.PodUID]
	b.mu.Unlock()
	if !known || b.dead.Contains(c.PodUID) || b.gone.Contains(c.PodUID) {
		return refuse(ImportUnknownPod, "pod %s is not live on this node", c.PodUID)
	}
	if pod.Namespace != c.Namespace || pod.ServiceAccount != c.ServiceAccount {
		return refuse(ImportPodMismatch, "pod %s is %s/%s on ServiceAccount %s here", c.PodUID, pod.Namespace, pod.Name, pod.ServiceAccount)
	}
	ci, who, err := b.identityFor(pod, c.Request)
	switch {
	case isRefusal(err):
		return refuse(ImportPolicy, "pod %s/%s: %v", pod.Namespace, pod.Name, err)
	case err != nil:
		return refuse(ImportUnverified, "pod %s/%s: %v", pod.Namespace, pod.Name, err)
	case who != principal{identity: c.Identity, tenant: c.Tenant}:
		return refuse(ImportPolicy, "pod %s/%s: its ServiceAccount names another %s identity now", pod.Namespace, pod.Name, c.Request.Cloud)
	}
	now := b.clock.Now()
	lifetime := b.cfg.Clouds[ci].Lifetime
	left := c.Credentials.Expiration.Sub(now)
	if lifetime > 0 && left > lifetime+time.Minute {
		return refuse(ImportPolicy, "pod %s/%s: the credential outlives this agent's %s lifetime", pod.Namespace, pod.Name, lifetime)
	}
	if lifetime == 0 {
		lifetime = importLifetime
	}
	exp := c.Credentials.Expiration
	fetched := c.FetchedAt
	if fetched.IsZero() || exp.Sub(fetched) > lifetime+time.Minute {
		fetched = exp.Add(-lifetime)
	}
	if fetched.After(now) {
		fetched = now
	}
	// How far into its fresh span the credential is; refreshTime refreshes
	// between 40% and 60%.
	span := exp.Sub(fetched) - FreshnessFloor
	done := float64(now.Sub(fetched)) / float64(span)
	if span <= 0 || done > 0.6 {
		return refuse(ImportStale, "pod %s/%s: %s left, past its refresh point", pod.Namespace, pod.Name, left.Round(time.Second))
	}
	creds := c.Credentials
	e := &entry{pod: pod, who: who, creds: &creds, expiration: exp, fetchedAt: fetched}
	// Where refreshTime would have put it, among the points still ahead.
	from := max(0.4, done)
	e.refreshAt = fetched.Add(time.Duration(float64(span) * (from + (0.6-from)*rand.Float64())))
	key := entryKey{uid: pod.UID, req: c.Request}

	b.mu.Lock()
	defer b.mu.Unlock()
	if b.gone.Contains(pod.UID) || b.dead.Contains(pod.UID) {
		return refuse(ImportUnknownPod, "pod %s left the node", c.PodUID)
	}
	if _, ok := b.cache.Peek(key); ok {
		return refuse(ImportCached, "pod %s/%s", pod.Namespace, pod.Name)
	}
	b.storeLocked(key, e, now)
	return nil
}

// fetchGate holds Run's workers back while a hand-off is taken, so that
// the prefetch they start fetches only what it did not bring.
type fetchGate struct {
	once sync.Once
	ch   chan struct{} // nil: never held
}

// HoldFetches keeps Run from prefetching or refreshing until ReleaseFetches
// is called. Call it before Run, and call ReleaseFetches whatever happens:
// until then no pod on the node is fetched for.
func (b *Broker) HoldFetches() {
	if b.gate.ch == nil {
		b.gate.ch = make(chan struct{})
	}
}

// ReleaseFetches lets Run's workers start. It may be called more than once.
func (b *Broker) ReleaseFetches() {
	if b.gate.ch != nil {
		b.gate.once.Do(func() { close(b.gate.ch) })
	}
}

// fetchesReleased waits until fetches are not held, or ctx is done.
func (b *Broker) fetchesReleased(ctx context.Context) bool {
	if b.gate.ch == nil {
		return true
	}
	select {
	case <-b.gate.ch:
		return true
	case <-ctx.Done():
		return false
	}
}
