// Package nodetaint removes a startup taint from the agent's own node once
// the agent serves credentials.
//
// A node that registers with a NoSchedule taint (kubelet
// --register-with-taints) gets no workload pods until the taint goes; the
// agent's DaemonSet tolerates every taint, so it starts there first and,
// with --remove-startup-taint=<key>, removes the taint when its listeners
// are up. Workloads then never start on a node whose agent cannot answer
// them yet.
//
// The agent may patch only its own node, only to remove taints: RBAC grants
// nodes get and patch, and a ValidatingAdmissionPolicy
// (deploy/daemonset/startup-taint) compares the node's name with the
// authentication.kubernetes.io/node-name claim of the agent's pod-bound
// token.
package nodetaint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
)

// Config configures Remove.
type Config struct {
	// Nodes talks to the API server as the agent.
	Nodes NodeClient
	// NodeName is the agent's own node.
	NodeName string
	// Key is the taint's key; every taint with this key goes, whatever its
	// value and effect.
	Key string
	// Log receives progress and retries. Default: discard.
	Log *slog.Logger
	// Backoff between failed attempts. Default 200ms doubling to 30s.
	Backoff wait.Backoff
}

// Remove removes every taint with cfg.Key from the node, retrying failures
// (API server down, a concurrent update of the node) with backoff until it
// succeeds or ctx ends. A node without the taint is left alone.
func Remove(ctx context.Context, cfg Config) error {
	if cfg.Nodes == nil || cfg.NodeName == "" || cfg.Key == "" {
		return errors.New("nodetaint: Nodes, NodeName and Key are required")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := cfg.Backoff
	if b.Duration == 0 {
		b = wait.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.2, Steps: 1 << 30, Cap: 30 * time.Second}
	}
	var last error
	err := wait.ExponentialBackoffWithContext(ctx, b, func(ctx context.Context) (bool, error) {
		removed, err := removeOnce(ctx, cfg.Nodes, cfg.NodeName, cfg.Key)
		if err != nil {
			last = err
			log.WarnContext(ctx, "removing the startup taint failed; retrying", "node", cfg.NodeName, "taint", cfg.Key, "err", err)
			return false, nil
		}
		if removed {
			log.InfoContext(ctx, "removed the startup taint", "node", cfg.NodeName, "taint", cfg.Key)
		}
		return true, nil
	})
	if err != nil {
		if last != nil {
			return fmt.Errorf("removing taint %s from node %s: %w (last error: %w)", cfg.Key, cfg.NodeName, err, last)
		}
		return fmt.Errorf("removing taint %s from node %s: %w", cfg.Key, cfg.NodeName, err)
	}
	return nil
}

type patchOp struct {
	Op    string         `json:"op"`
	Path  string         `json:"path"`
	Value []corev1.Taint `json:"value"`
}

// NodeClient reads and patches nodes. pkg/kube's Client.Nodes() is one.
type NodeClient interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Node, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*corev1.Node, error)
}

// removeOnce reads the node and, if it carries the taint, replaces its
// taint list with the list less that key. The JSON patch tests the list it
// read first, so a taint another controller added in between is not lost:
// the patch fails instead, and the next attempt reads again.
func removeOnce(ctx context.Context, c NodeClient, node, key string) (bool, error) {
	n, err := c.Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("getting node: %w", err)
	}
	old := n.Spec.Taints
	keep := make([]corev1.Taint, 0, len(old))
	for _, t := range old {
		if t.Key != key {
			keep = append(keep, t)
		}
	}
	if len(keep) == len(old) {
		return false, nil
	}
	patch, err := json.Marshal([]patchOp{
		{Op: "test", Path: "/spec/taints", Value: old},
		{Op: "replace", Path: "/spec/taints", Value: keep},
	})
	if err != nil {
		return false, err
	}
	if _, err := c.Patch(ctx, node, types.JSONPatchType, patch, metav1.PatchOptions{}); err != nil {
		return false, fmt.Errorf("patching node: %w", err)
	}
	return true, nil
}
