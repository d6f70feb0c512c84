// Package testfake holds the fakes that several packages' tests used to
// write each for itself: resolvers that stand for pkg/podresolve, and a
// read of one metric from a registry. It imports neither pkg/broker nor a
// surface, so that their own tests can use it.
package testfake

import (
	"context"
	"net/netip"
	"sync"

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
