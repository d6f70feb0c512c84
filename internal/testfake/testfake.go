// Package testfake holds the fakes that several packages' tests used to
// write each for itself: resolvers that stand for pkg/podresolve, and the
// part of a fake broker that records what a surface reported. It imports
// neither pkg/broker nor a surface, so that their own tests can use it.
package testfake

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/credbroker/agent/pkg/podresolve"
)

// OnePod answers every address with Pod.
type OnePod struct{ Pod podresolve.Pod }

// Resolve returns r.Pod.
func (r OnePod) Resolve(context.Context, netip.Addr) (podresolve.Pod, error) { return r.Pod, nil }

// Resolver maps addresses to pods or errors, and other addresses to
// podresolve.ErrNotFound; tests change it to model pods coming and going.
// The zero value knows no pod. Its methods are safe for concurrent use.
type Resolver struct {
	mu   sync.Mutex
	pods map[netip.Addr]podresolve.Pod
	errs map[netip.Addr]error
}

// Resolve answers as the last Set or Fail for addr said; an error wins.
func (r *Resolver) Resolve(_ context.Context, addr netip.Addr) (podresolve.Pod, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err, ok := r.errs[addr]; ok {
		return podresolve.Pod{}, err
	}
	if p, ok := r.pods[addr]; ok {
		return p, nil
	}
	return podresolve.Pod{}, podresolve.ErrNotFound
}

// Set makes addr resolve to p.
func (r *Resolver) Set(addr string, p podresolve.Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pods == nil {
		r.pods = make(map[netip.Addr]podresolve.Pod)
	}
	r.pods[netip.MustParseAddr(addr)] = p
}

// Fail makes addr resolve to err.
func (r *Resolver) Fail(addr string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.errs == nil {
		r.errs = make(map[netip.Addr]error)
	}
	r.errs[netip.MustParseAddr(addr)] = err
}

// Reports records what a surface reports to its broker: the failures it
// logs and the status of every answer. F is the broker's failure type (a
// type parameter, so that pkg/broker's own tests can use it too). Embed it
// in a fake broker; its methods are safe for concurrent use.
type Reports[F any] struct {
	mu       sync.Mutex
	logged   []F
	observed []int
}

// LogFailure records f.
func (r *Reports[F]) LogFailure(_ context.Context, _ netip.Addr, _ podresolve.Pod, f F, _ error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logged = append(r.logged, f)
}

// ObserveRequest records the answer's status.
func (r *Reports[F]) ObserveRequest(code int, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.observed = append(r.observed, code)
}

// Logged returns the failures logged so far, in order.
func (r *Reports[F]) Logged() []F {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]F(nil), r.logged...)
}

// Observed returns the statuses observed so far, in order.
func (r *Reports[F]) Observed() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int(nil), r.observed...)
}
