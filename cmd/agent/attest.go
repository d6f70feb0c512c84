package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/credbroker/agent/pkg/attest"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/podresolve"
)

// Attestation modes (--attest).
const (
	attestNetns     = "netns"
	attestContainer = "container"
	attestOff       = "off"
)

// attestConfig is the command line of kernel attestation (pkg/attest).
type attestConfig struct {
	mode     string
	procRoot string
}

func (c *attestConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.mode, "attest", attestNetns,
		"netns: the node's kernel must show each connection in the network namespace of the pod it is served as (needs hostPID: true and no capability); "+
			"container: netns, and the container whose process holds the connection is named, for image rules, ephemeral containers and hostNetwork pods (needs hostPID: true and CAP_SYS_PTRACE); "+
			"off: the pod informer's addresses alone decide")
	fs.StringVar(&c.procRoot, "proc-root", attest.DefaultProcRoot, "where the host's procfs is mounted (for --attest=netns and container)")
}

func (c attestConfig) validate() error {
	switch c.mode {
	case attestNetns, attestContainer, attestOff:
	default:
		return fmt.Errorf("--attest=%q: want %s, %s or %s", c.mode, attestNetns, attestContainer, attestOff)
	}
	if c.procRoot == "" {
		return fmt.Errorf("--proc-root must not be empty")
	}
	return nil
}

// attestation is the agent's attester, or nil with --attest=off; every
// method is a no-op on nil.
type attestation struct {
	a    *attest.Attester
	mode string
}

// newAttestation decorates res with kernel attestation when it is on. log
// is the per-address limited logger (one line per attested connection).
func newAttestation(cfg attestConfig, res *podresolve.Resolver, reg prometheus.Registerer, log *slog.Logger) (*attestation, error) {
	if cfg.mode == attestOff {
		return nil, nil
	}
	acfg := attest.Config{Resolver: res, Pods: res, ProcRoot: cfg.procRoot, Registerer: reg,
		Logger: log.With("component", "attest"), AddrKey: broker.LogKeyRemoteAddr}
	if cfg.mode == attestContainer {
		acfg.Containers = res
	}
	a, err := attest.New(acfg)
	if err != nil {
		return nil, err
	}
	return &attestation{a: a, mode: cfg.mode}, nil
}

// resolver is what the broker resolves callers with.
func (at *attestation) resolver(res *podresolve.Resolver) broker.PodResolver {
	if at == nil {
		return res
	}
	return at.a
}

// connContext is the credential server's ConnContext: each connection's
// requests carry it, to be attested once.
func (at *attestation) connContext() func(context.Context, net.Conn) context.Context {
	if at == nil {
		return nil
	}
	return attest.WithConn
}

// check runs the start-up check, once the informer has synced: a node where
// attestation cannot work is said so now, not at the first request.
func (at *attestation) check(ctx context.Context) {
	if at != nil {
		at.a.Check(ctx)
	}
}

// probe answers /readyz with 503 and the reason while the start-up check
// says attestation cannot work here (every request would be refused).
func (at *attestation) probe(next http.Handler) http.Handler {
	if at == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" {
			if st := at.a.LastStatus(); st != nil && !st.Available {
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, "not ready: --attest="+at.mode+" cannot work on this node: "+st.Detail+"\n")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// tracedBroker is the broker as the wire surfaces see it: with attestation
// on, every credential it grants is logged once per connection against the
// connection's attestation (attest.Attester.Served), cache hits included.
type tracedBroker struct {
	*broker.Broker
	att *attest.Attester // nil: attestation off, nothing traced
}

// traced wraps b for the surfaces.
func (at *attestation) traced(b *broker.Broker) tracedBroker {
	if at == nil {
		return tracedBroker{Broker: b}
	}
	return tracedBroker{Broker: b, att: at.a}
}

// Serve is the broker's, traced.
func (t tracedBroker) Serve(ctx context.Context, addr netip.Addr, req broker.Request) (broker.Answer, *broker.Failure) {
	ans, f := t.Broker.Serve(ctx, addr, req)
	if f == nil && t.att != nil {
		t.att.Served(ctx, ans.Pod, string(req.Cloud), ans.Identity, req.Scope)
	}
	return ans, f
}
