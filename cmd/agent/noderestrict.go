package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/rest"

	"github.com/credbroker/agent/pkg/kube"
)

// nodeRestrictMode is --node-restricted.
type nodeRestrictMode string

const (
	// nodeRestrictAuto acts as the node where the API server allows it and
	// falls back to the agent's own (broad) RBAC where it does not, saying so.
	nodeRestrictAuto nodeRestrictMode = "auto"
	// nodeRestrictRequired refuses to start without node restriction.
	nodeRestrictRequired nodeRestrictMode = "required"
	// nodeRestrictOff always acts as the agent's own ServiceAccount.
	nodeRestrictOff nodeRestrictMode = "off"
)

func (m *nodeRestrictMode) String() string { return string(*m) }

func (m *nodeRestrictMode) Set(s string) error {
	switch v := nodeRestrictMode(s); v {
	case nodeRestrictAuto, nodeRestrictRequired, nodeRestrictOff:
		*m = v
		return nil
	}
	return fmt.Errorf("%q is not one of auto, required, off", s)
}

func registerNodeRestrict(fs *flag.FlagSet, m *nodeRestrictMode) {
	*m = nodeRestrictAuto
	fs.Var(m, "node-restricted", "make TokenRequests, pod reads and Events as this node through constrained impersonation (Kubernetes 1.36+), so the API server limits the agent to this node's pods as it limits the kubelet: auto (where the API server allows it, else the agent's own RBAC), required (refuse to start without it) or off")
}

// nodeRestriction is the mode the agent runs in, said at start in the log,
// in credbroker_node_restricted and in /readyz.
type nodeRestriction struct {
	on     bool
	reason string // why not, when off
}

func (n nodeRestriction) detail(nodeName string) string {
	if n.on {
		return "node-restricted: on (TokenRequests, pod reads and Events as " + kube.NodeUser(nodeName) + ")"
	}
	return "node-restricted: off (" + n.reason + ")"
}

// errNodeRestrictionRequired is returned when --node-restricted=required
// and the API server does not allow it.
var errNodeRestrictionRequired = errors.New("--node-restricted=required, and the API server does not restrict the agent to its node")

// probeRetry bounds the wait between probes the API server did not answer.
var probeRetry = struct{ first, max time.Duration }{time.Second, 30 * time.Second}

// connectKube builds the agent's Kubernetes client in the configured mode.
// In auto and required mode it probes the API server first (kube.Probe);
// an API server that does not answer is waited for, never taken as a
// reason to run broader than configured.
func connectKube(ctx context.Context, cfg serveConfig, rc *rest.Config, log *slog.Logger) (*kube.Client, nodeRestriction, error) {
	if cfg.nodeRestricted == nodeRestrictOff {
		c, err := kube.NewForConfig(rc)
		if err != nil {
			return nil, nodeRestriction{}, fmt.Errorf("building Kubernetes client: %w", err)
		}
		log.Info("node-restricted: off; the agent acts as its own ServiceAccount", "flag", "--node-restricted=off")
		return c, nodeRestriction{reason: "--node-restricted=off"}, nil
	}
	nc, err := kube.NewNodeRestricted(rc, cfg.nodeName)
	if err != nil {
		return nil, nodeRestriction{}, fmt.Errorf("building Kubernetes client: %w", err)
	}
	wait := probeRetry.first
	for {
		id, err := nc.Probe(ctx)
		var un *kube.Unavailable
		switch {
		case err == nil:
			log.Info("node-restricted: the agent acts as its node for TokenRequests, pod reads and Events",
				"as", kube.NodeUser(cfg.nodeName), "identity", id.User, "node_uid", id.NodeUID)
			return nc, nodeRestriction{on: true}, nil
		case errors.As(err, &un) && cfg.nodeRestricted == nodeRestrictRequired:
			return nil, nodeRestriction{}, fmt.Errorf("%w: %w", errNodeRestrictionRequired, err)
		case errors.As(err, &un):
			log.Warn("node-restricted: unavailable; falling back to the agent's own RBAC (cluster-wide serviceaccounts/token create)",
				"reason", un.Reason, "api_error", errString(un.Err))
			c, cerr := kube.NewForConfig(rc)
			if cerr != nil {
				return nil, nodeRestriction{}, fmt.Errorf("building Kubernetes client: %w", cerr)
			}
			return c, nodeRestriction{reason: un.Reason}, nil
		}
		log.Warn("node-restricted: probing the API server failed; retrying", "error", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil, nodeRestriction{}, fmt.Errorf("probing the API server for node restriction: %w", err)
		case <-time.After(wait):
		}
		wait = min(2*wait, probeRetry.max)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// nodeRestrictedGauge is credbroker_node_restricted: 1 when the agent acts
// as its node, 0 when it uses its own RBAC.
func nodeRestrictedGauge(n nodeRestriction) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "credbroker_node_restricted",
		Help: "1 when TokenRequests, pod reads and Events are made as the agent's node (constrained impersonation), 0 when as the agent's own ServiceAccount.",
	})
	if n.on {
		g.Set(1)
	}
	return g
}
