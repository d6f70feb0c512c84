package broker

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"
)

// roleLookup answers "which role does this ServiceAccount name?" without
// watching ServiceAccounts: an agent on each of thousands of nodes watching
// every ServiceAccount of the cluster would cost the API server far more than
// an occasional GET for the few accounts a node's pods use.
//
// Entries are served fresh for ttl. Between ttl and 2*ttl an entry is still
// served while one background GET refreshes it, so that the request path
// never waits on the API server for a known account. After 2*ttl the caller
// waits for the GET. So a change of the annotation takes effect within 2*ttl.
type roleLookup struct {
	client     kubernetes.Interface
	annotation string
	ttl        time.Duration
	clock      clock.PassiveClock
	log        *slog.Logger
	metrics    *metrics

	entries  *lru.Cache[saKey, roleEntry]
	inflight singleflight.Group
	// refreshing bounds background refreshes to one per account.
	refreshing sync.Map // saKey -> struct{}
}

type saKey struct{ namespace, name string }

type roleEntry struct {
	role      string // "" when the account has no annotation or does not exist
	missing   bool   // the account does not exist
	fetchedAt time.Time
}

// roleCacheSize bounds the number of ServiceAccounts remembered. A node runs
// a few hundred pods at most, so this is generous.
const roleCacheSize = 4096

func newRoleLookup(client kubernetes.Interface, annotation string, ttl time.Duration, clk clock.PassiveClock, log *slog.Logger, m *metrics) *roleLookup {
	entries, _ := lru.New[saKey, roleEntry](roleCacheSize) // only fails for size <= 0
	return &roleLookup{client: client, annotation: annotation, ttl: ttl, clock: clk, log: log, metrics: m, entries: entries}
}

// Role returns the role the ServiceAccount names, or a *Refusal when it
// names none or does not exist.
func (l *roleLookup) Role(ctx context.Context, namespace, serviceAccount string) (string, error) {
	key := saKey{namespace, serviceAccount}
	e, ok := l.entries.Get(key)
	if ok {
		age := l.clock.Since(e.fetchedAt)
		if age > l.ttl && age <= 2*l.ttl {
			l.refreshInBackground(key)
		}
		if age <= 2*l.ttl {
			return l.answer(key, e)
		}
	}
	e, err := l.fetch(ctx, key)
	if err != nil {
		return "", err
	}
	return l.answer(key, e)
}

func (l *roleLookup) answer(key saKey, e roleEntry) (string, error) {
	switch {
	case e.missing:
		return "", &Refusal{Code: CodeServiceAccountMissing,
			Message: fmt.Sprintf("ServiceAccount %s/%s does not exist", key.namespace, key.name)}
	case e.role == "":
		return "", &Refusal{Code: CodeNoRole,
			Message: fmt.Sprintf("ServiceAccount %s/%s has no %s annotation naming the role to assume", key.namespace, key.name, l.annotation)}
	}
	return e.role, nil
}

func (l *roleLookup) refreshInBackground(key saKey) {
	if _, busy := l.refreshing.LoadOrStore(key, struct{}{}); busy {
		return
	}
	go func() {
		defer l.refreshing.Delete(key)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := l.fetch(ctx, key); err != nil {
			l.log.Warn("refreshing ServiceAccount role", "namespace", key.namespace, "serviceaccount", key.name, "error", err)
		}
	}()
}

// fetch GETs the account once for all concurrent callers. The shared call
// runs under its own timeout, not the first caller's context, so that one
// impatient caller does not fail the others.
func (l *roleLookup) fetch(ctx context.Context, key saKey) (roleEntry, error) {
	ch := l.inflight.DoChan(key.namespace+"/"+key.name, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		start := l.clock.Now()
		// ResourceVersion "0" lets the API server answer from its watch cache
		// without reaching etcd; a role annotation may be 2*ttl old anyway.
		sa, err := l.client.CoreV1().ServiceAccounts(key.namespace).Get(fctx, key.name, metav1.GetOptions{ResourceVersion: "0"})
		l.metrics.observeUpstream(upstreamServiceAccount, err, l.clock.Since(start))
		e := roleEntry{fetchedAt: l.clock.Now()}
		switch {
		case apierrors.IsNotFound(err):
			e.missing = true
		case err != nil:
			return roleEntry{}, &errKubeAPI{throttled: apierrors.IsTooManyRequests(err),
				err: fmt.Errorf("getting ServiceAccount %s/%s: %w", key.namespace, key.name, err)}
		default:
			e.role = strings.TrimSpace(sa.Annotations[l.annotation])
		}
		l.entries.Add(key, e)
		return e, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return roleEntry{}, r.Err
		}
		return r.Val.(roleEntry), nil
	case <-ctx.Done():
		return roleEntry{}, fmt.Errorf("waiting for ServiceAccount %s/%s: %w", key.namespace, key.name, errStillFetching)
	}
}

// rolePolicy is the operator's restriction on which roles may be assumed at
// all, so that a namespace admin cannot annotate a ServiceAccount with any
// role of the account.
type rolePolicy struct {
	allowDefault bool
	patterns     []string
}

// checkServiceAccount runs before any API call: the default ServiceAccount is
// refused without asking what role it names.
func (p rolePolicy) checkServiceAccount(namespace, serviceAccount string) error {
	if serviceAccount == "default" && !p.allowDefault {
		return &Refusal{Code: CodeDefaultServiceAccount,
			Message: fmt.Sprintf("pods on the default ServiceAccount of namespace %s get no credentials: give the workload its own ServiceAccount", namespace)}
	}
	return nil
}

func (p rolePolicy) checkRole(namespace, serviceAccount, role string) error {
	if len(p.patterns) == 0 {
		return nil
	}
	for _, pat := range p.patterns {
		if globMatch(pat, role) {
			return nil
		}
	}
	return &Refusal{Code: CodeRoleNotAllowed,
		Message: fmt.Sprintf("role %s named by ServiceAccount %s/%s is not allowed on this cluster (--allowed-role-arn)", role, namespace, serviceAccount)}
}

// globMatch matches s against pattern, where '*' matches any run of
// characters (including '/', which IAM role paths contain; path.Match would
// stop there) and '?' matches one character.
func globMatch(pattern, s string) bool {
	px, sx := 0, 0
	starPx, starSx := -1, 0
	for sx < len(s) {
		switch {
		case px < len(pattern) && (pattern[px] == '?' || pattern[px] == s[sx]):
			px++
			sx++
		case px < len(pattern) && pattern[px] == '*':
			starPx, starSx = px, sx
			px++
		case starPx >= 0:
			starSx++
			px, sx = starPx+1, starSx
		default:
			return false
		}
	}
	for px < len(pattern) && pattern[px] == '*' {
		px++
	}
	return px == len(pattern)
}
