//go:build integration

// Package scale measures what a cluster's worth of agents costs the API
// server, instead of computing it: a few hundred real bin/agent processes,
// each serving its own simulated node (--node-name, the deployed RBAC:
// node-restricted by default), against one real kube-apiserver and etcd
// holding tens of thousands of pods. The figures come from the API server's
// own /metrics (apiserver_request_total, apiserver_response_sizes,
// apiserver_watch_events_*, apiserver_longrunning_requests,
// apiserver_registered_watchers, process_*), from /proc for memory, and
// from the verifying STS (integration/oidcsts) for AssumeRoleWithWebIdentity.
//
// No kubelet and no kwok: Node and Pod objects are written directly, pods
// with spec.nodeName and then phase Running and podIPs through the status
// subresource, as a kubelet would. The agents only watch, so nothing else
// is needed, and nothing else (node heartbeats, pod status churn) adds load
// that is not the agents'.
//
// cmd/scale runs it at full size (make scale); TestTiny runs a small one in
// the integration suite so that the tool keeps working.
package scale

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/oidcsts"
)

// Config sizes a run. Zero values take the defaults in brackets.
type Config struct {
	// Dir holds the control plane's data, kubeconfigs and every agent's log. Required.
	Dir string
	// Nodes is the number of simulated nodes, one agent each [250].
	Nodes int
	// PodsPerNode is the number of workload pods on each node [100] (at most 250).
	PodsPerNode int
	// Namespaces hold the workload [50]; each has ServiceAccountsPerNamespace
	// ServiceAccounts [10], over which its pods are spread.
	Namespaces                  int
	ServiceAccountsPerNamespace int
	// RoleShare is the share of ServiceAccounts (and so of pods) with a role
	// annotation [1: every pod is prefetched, the upper bound].
	RoleShare float64
	// RBAC is "node" (deploy/daemonset/rbac.yaml, --node-restricted=required)
	// or "broad" (plus the broad-rbac component, --node-restricted=off) ["node"].
	RBAC string
	// StartBatch agents are started at once when the cluster first comes up [25].
	StartBatch int
	// Steady is the steady-state window [90s].
	Steady time.Duration
	// Wave is the share of nodes whose agent is replaced at once in the
	// rollout wave (new agent started, ready, then the old one stopped, as
	// the DaemonSet does with maxSurge) [0.1].
	Wave float64
	// AgentBinary defaults to harness.AgentBinary().
	AgentBinary string
	// Logf reports progress [discard].
	Logf func(format string, args ...any) `json:"-"`
}

func (c *Config) defaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Nodes, 250)
	def(&c.PodsPerNode, 100)
	def(&c.Namespaces, 50)
	def(&c.ServiceAccountsPerNamespace, 10)
	def(&c.StartBatch, 25)
	if c.RoleShare == 0 {
		c.RoleShare = 1
	}
	if c.RBAC == "" {
		c.RBAC = "node"
	}
	if c.Steady == 0 {
		c.Steady = 90 * time.Second
	}
	if c.Wave == 0 {
		c.Wave = 0.1
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// Result is everything measured; cmd/scale writes it as JSON.
type Result struct {
	Config Config
	// Pods is the number of workload pods, PrefetchPods those with a role.
	Pods, PrefetchPods, ServiceAccounts int
	SetupSeconds                        float64
	// APIServerRSSBeforeAgents is the API server's RSS with the cluster
	// seeded and no agent running.
	APIServerRSSBeforeAgents float64
	Start, Steady, Wave      Phase
	// ServiceAccountChange and PodChange are what one ServiceAccount
	// update, and one pod created, made Running and deleted on one node,
	// sent to watchers; the ...WithoutAgents ones were measured before any
	// agent ran (the API server's own informers watch too).
	ServiceAccountChange, PodChange                           Phase
	ServiceAccountChangeWithoutAgents, PodChangeWithoutAgents Phase
	// OpenWatchesWithoutAgents are the API server's own watches (its
	// informers), which Phase.OpenWatches leaves out.
	OpenWatchesWithoutAgents map[string]float64
	// PodWatchLists and PodLists isolate what a start's pod watch costs
	// the API server: Wave × Nodes streamed lists (a watch with
	// sendInitialEvents, as the agent's informer opens) of one node's pods,
	// one after the other, then as many LISTs (resourceVersion 0, as a
	// reflector lists when it cannot stream), made as the admin: no
	// TokenRequest, no agent. Phase.Agents counts the calls.
	PodWatchLists, PodLists Phase
	// APIServerPeakRSS is VmHWM at the end, EtcdRSS VmRSS.
	APIServerPeakRSS, EtcdRSS float64
}

// Phase is what the API server (and the STS) saw between two snapshots.
type Phase struct {
	Seconds float64
	// Agents started in the phase.
	Agents int
	// Requests by "VERB resource[/subresource]", from apiserver_request_total,
	// with " <code>" appended unless the answer was 2xx; long-running WATCH
	// requests are counted when they end.
	Requests map[string]float64
	// ListBytes and ListResponses by resource, from apiserver_response_sizes
	// (LIST only).
	ListBytes, ListResponses map[string]float64
	// WatchEvents and WatchEventBytes by kind, from apiserver_watch_events_*,
	// the initial events of a streamed list (sendInitialEvents) included.
	WatchEvents, WatchEventBytes map[string]float64
	// TokenRequests counts create serviceaccounts/token answered 201 (the
	// agent's start-up probe, answered 404, is not one); STSCalls
	// AssumeRoleWithWebIdentity calls the STS received.
	TokenRequests float64
	STSCalls      int64
	// STSPeakPerSecond is the largest count of STS calls in one second.
	STSPeakPerSecond float64
	// APIServerCPUSeconds is process_cpu_seconds_total's increase.
	APIServerCPUSeconds float64
	// InitEvents are objects the watch cache sent as a watch's initial
	// events (apiserver_init_events_total), by resource.
	InitEvents map[string]float64
	// CacheListFetched are objects the watch cache went through to answer
	// LISTs (apiserver_cache_list_fetched_objects_total), by "resource
	// index" ("" when no index served the LIST).
	CacheListFetched map[string]float64
	// At the end of the phase: open long-running WATCH requests by
	// resource, beyond the API server's own; the API server's RSS and the
	// agents' RSS.
	OpenWatches  map[string]float64
	APIServerRSS float64
	AgentRSS     Stats
}

// Stats summarises the agents' RSS in bytes.
type Stats struct {
	N                           int
	Min, Median, P90, Max, Mean float64
	Sum                         float64
}

const (
	agentNamespace = harness.AgentNamespace
	roleAnnotation = harness.RoleAnnotation
	audience       = "sts.amazonaws.com"
	// The deployed limit (daemonset.yaml: limits.memory 256Mi as GOMEMLIMIT).
	agentMemLimit = "268435456"
)

type run struct {
	cfg    Config
	cp     *harness.ControlPlane
	client kubernetes.Interface
	sts    *oidcsts.Server
	bin    string
	kc     []string // node index → kubeconfig

	baseWatches map[string]float64

	mu     sync.Mutex
	agents []*harness.Agent // node index → running agent
	gen    []int
}

// Run builds the cluster, runs the phases and stops everything.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg.defaults()
	if cfg.Dir == "" {
		return nil, fmt.Errorf("scale: Config.Dir is required")
	}
	if cfg.PodsPerNode > 250 {
		return nil, fmt.Errorf("scale: at most 250 pods per node (one /24 each)")
	}
	if cfg.RBAC != "node" && cfg.RBAC != "broad" {
		return nil, fmt.Errorf("scale: RBAC %q is neither node nor broad", cfg.RBAC)
	}
	r := &run{cfg: cfg, agents: make([]*harness.Agent, cfg.Nodes), gen: make([]int, cfg.Nodes)}
	var err error
	if r.bin = cfg.AgentBinary; r.bin == "" {
		if r.bin, err = harness.AgentBinary(); err != nil {
			return nil, err
		}
	}
	binDir, err := harness.K8sBinDir()
	if err != nil {
		return nil, err
	}
	res := &Result{Config: cfg}
	setupStart := time.Now()
	r.cp, err = harness.StartControlPlane(ctx, harness.ControlPlaneConfig{
		Dir: cfg.Dir, BinDir: binDir, AuthorizationModes: "Node,RBAC",
		ExtraAPIServerFlags: []string{"--enable-admission-plugins=NodeRestriction"},
		EtcdQuotaBytes:      8 << 30,
	})
	if err != nil {
		return nil, err
	}
	defer r.cp.Stop()
	defer r.stopAll()

	// Seeding is the slow part: the client limiter is lifted and many
	// requests kept in flight.
	rc := rest.CopyConfig(r.cp.Config)
	rc.QPS, rc.Burst = 5000, 10000
	rc.WarningHandler = rest.NoWarnings{}
	if r.client, err = kubernetes.NewForConfig(rc); err != nil {
		return nil, fmt.Errorf("creating client: %w", err)
	}
	if err := r.seed(ctx, res); err != nil {
		return nil, err
	}
	if err := r.startSTS(); err != nil {
		return nil, err
	}
	defer r.sts.Close()
	res.SetupSeconds = time.Since(setupStart).Seconds()
	cfg.Logf("seeded %d nodes, %d pods (%d with a role), %d ServiceAccounts in %s",
		cfg.Nodes, res.Pods, res.PrefetchPods, res.ServiceAccounts, time.Since(setupStart).Round(time.Second))
	res.APIServerRSSBeforeAgents = rss(r.cp.APIServerPID(), "VmRSS")
	m0, err := r.metrics(ctx)
	if err != nil {
		return nil, err
	}
	isWatch := func(l map[string]string) bool { return l["verb"] == "WATCH" }
	r.baseWatches = m0.by("apiserver_longrunning_requests", resourceKey(isWatch))
	res.OpenWatchesWithoutAgents = r.baseWatches
	if res.ServiceAccountChangeWithoutAgents, err = r.phase(ctx, r.saProbe("before")); err != nil {
		return nil, err
	}
	if res.PodChangeWithoutAgents, err = r.phase(ctx, r.podProbe("probe-before")); err != nil {
		return nil, err
	}

	perNode := res.PrefetchPods / cfg.Nodes

	// Start: every agent, StartBatch at a time, each ready and done
	// prefetching.
	all := make([]int, cfg.Nodes)
	for i := range all {
		all[i] = i
	}
	res.Start, err = r.phase(ctx, func(ctx context.Context) (int, error) {
		for lo := 0; lo < cfg.Nodes; lo += cfg.StartBatch {
			batch := all[lo:min(lo+cfg.StartBatch, cfg.Nodes)]
			if err := r.replace(ctx, batch); err != nil {
				return 0, err
			}
			cfg.Logf("started %d of %d agents", lo+len(batch), cfg.Nodes)
		}
		return cfg.Nodes, r.waitSTS(ctx, int64(res.PrefetchPods))
	})
	if err != nil {
		return nil, fmt.Errorf("starting the agents: %w", err)
	}

	// Steady state: nothing happens but what the agents do by themselves.
	cfg.Logf("steady state for %s", cfg.Steady)
	res.Steady, err = r.phase(ctx, func(ctx context.Context) (int, error) {
		select {
		case <-time.After(cfg.Steady):
			return 0, nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	})
	if err != nil {
		return nil, err
	}

	// One ServiceAccount changed: every agent's watch gets it. One pod
	// on node 0 created, Running and deleted: only that node's agent's.
	if res.ServiceAccountChange, err = r.phase(ctx, r.saProbe("after")); err != nil {
		return nil, err
	}
	if res.PodChange, err = r.phase(ctx, r.podProbe("probe-after")); err != nil {
		return nil, err
	}

	// A rollout wave: the agents of the first Wave × Nodes nodes replaced
	// at once, each new one started beside the old, which stops once the
	// new one is ready.
	k := int(math.Ceil(cfg.Wave * float64(cfg.Nodes)))
	k = min(max(k, 1), cfg.Nodes)
	cfg.Logf("rollout wave: %d agents", k)
	stsBefore := r.sts.Counts().AssumeRole
	res.Wave, err = r.phase(ctx, func(ctx context.Context) (int, error) {
		if err := r.replace(ctx, all[:k]); err != nil {
			return 0, err
		}
		return k, r.waitSTS(ctx, stsBefore+int64(k*perNode))
	})
	if err != nil {
		return nil, fmt.Errorf("rollout wave: %w", err)
	}
	if res.PodWatchLists, err = r.phase(ctx, r.podWatchLists(k, true)); err != nil {
		return nil, err
	}
	if res.PodLists, err = r.phase(ctx, r.podWatchLists(k, false)); err != nil {
		return nil, err
	}
	res.APIServerPeakRSS = rss(r.cp.APIServerPID(), "VmHWM")
	res.EtcdRSS = rss(r.cp.EtcdPID(), "VmRSS")
	return res, nil
}

// phase runs do between two snapshots of the API server's metrics and
// counts STS calls per second meanwhile.
func (r *run) phase(ctx context.Context, do func(ctx context.Context) (int, error)) (Phase, error) {
	before, err := r.metrics(ctx)
	if err != nil {
		return Phase{}, err
	}
	sts0 := r.sts.Counts().AssumeRole
	start := time.Now()
	var peak atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		last := sts0
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				n := r.sts.Counts().AssumeRole
				if d := n - last; d > peak.Load() {
					peak.Store(d)
				}
				last = n
			}
		}
	}()
	agents, err := do(ctx)
	close(stop)
	wg.Wait()
	if err != nil {
		return Phase{}, err
	}
	secs := time.Since(start).Seconds()
	after, err := r.metrics(ctx)
	if err != nil {
		return Phase{}, err
	}
	p := Phase{
		Seconds:  secs,
		Agents:   agents,
		STSCalls: r.sts.Counts().AssumeRole - sts0,
	}
	p.STSPeakPerSecond = float64(peak.Load())
	p.Requests = delta(after.by("apiserver_request_total", requestKey), before.by("apiserver_request_total", requestKey))
	isList := func(l map[string]string) bool { return l["verb"] == "LIST" }
	p.ListBytes = delta(after.by("apiserver_response_sizes_sum", resourceKey(isList)), before.by("apiserver_response_sizes_sum", resourceKey(isList)))
	p.ListResponses = delta(after.by("apiserver_response_sizes_count", resourceKey(isList)), before.by("apiserver_response_sizes_count", resourceKey(isList)))
	p.WatchEvents = delta(after.by("apiserver_watch_events_total", kindKey), before.by("apiserver_watch_events_total", kindKey))
	p.WatchEventBytes = delta(after.by("apiserver_watch_events_sizes_sum", kindKey), before.by("apiserver_watch_events_sizes_sum", kindKey))
	p.TokenRequests = p.Requests["POST serviceaccounts/token"]
	fetchKey := func(l map[string]string) string { return l["resource"] + " " + l["index"] }
	p.CacheListFetched = delta(after.by("apiserver_cache_list_fetched_objects_total", fetchKey), before.by("apiserver_cache_list_fetched_objects_total", fetchKey))
	p.InitEvents = delta(after.by("apiserver_init_events_total", resourceKey(all)), before.by("apiserver_init_events_total", resourceKey(all)))
	p.APIServerCPUSeconds = after.sum("process_cpu_seconds_total") - before.sum("process_cpu_seconds_total")
	isWatch := func(l map[string]string) bool { return l["verb"] == "WATCH" }
	p.OpenWatches = delta(after.by("apiserver_longrunning_requests", resourceKey(isWatch)), r.baseWatches)
	p.APIServerRSS = rss(r.cp.APIServerPID(), "VmRSS")
	p.AgentRSS = r.agentRSS()
	return p, nil
}

// saProbe changes one ServiceAccount (a label) and waits until the watch
// events it causes have all been sent.
func (r *run) saProbe(value string) func(context.Context) (int, error) {
	return func(ctx context.Context) (int, error) {
		before, err := r.metrics(ctx)
		if err != nil {
			return 0, err
		}
		patch := []byte(`{"metadata":{"labels":{"scale-probe":"` + value + `"}}}`)
		if _, err := r.client.CoreV1().ServiceAccounts(nsName(0)).Patch(ctx, saName(0), types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return 0, fmt.Errorf("patching a ServiceAccount: %w", err)
		}
		return 0, r.waitEvents(ctx, before, "ServiceAccount")
	}
}

// podProbe creates a pod on node 0, makes it Running and deletes it, and
// waits until the watch events it causes have all been sent.
func (r *run) podProbe(prefix string) func(context.Context) (int, error) {
	return func(ctx context.Context) (int, error) {
		before, err := r.metrics(ctx)
		if err != nil {
			return 0, err
		}
		p := r.pod(0, 250, prefix)
		if err := r.createPod(ctx, p); err != nil {
			return 0, err
		}
		zero := int64(0)
		if err := r.client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			return 0, fmt.Errorf("deleting the probe pod: %w", err)
		}
		return 0, r.waitEvents(ctx, before, "Pod")
	}
}

// podWatchLists receives the pods of n nodes, one node after the other,
// by streamed list (a watch until the initial-events-end bookmark) or by
// LIST.
func (r *run) podWatchLists(n int, stream bool) func(context.Context) (int, error) {
	return func(ctx context.Context) (int, error) {
		for i := range n {
			sel := "spec.nodeName=" + nodeName(i%r.cfg.Nodes)
			if !stream {
				if _, err := r.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: "0"}); err != nil {
					return 0, fmt.Errorf("listing pods: %w", err)
				}
				continue
			}
			w, err := r.client.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{FieldSelector: sel, SendInitialEvents: ptr(true),
				ResourceVersionMatch: metav1.ResourceVersionMatchNotOlderThan, AllowWatchBookmarks: true})
			if err != nil {
				return 0, fmt.Errorf("watching pods: %w", err)
			}
			if err := untilInitialEventsEnd(ctx, w); err != nil {
				return 0, err
			}
		}
		return n, nil
	}
}

func untilInitialEventsEnd(ctx context.Context, w watch.Interface) error {
	defer w.Stop()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return fmt.Errorf("pod watch closed before its initial events ended")
			}
			if ev.Type != watch.Bookmark {
				continue
			}
			if p, ok := ev.Object.(*corev1.Pod); ok && p.Annotations[metav1.InitialEventsAnnotationKey] == "true" {
				return nil
			}
		case <-ctx.Done():
			return fmt.Errorf("waiting for the initial events of a pod watch: %w", ctx.Err())
		}
	}
}

// replace starts a new agent for each node given, waits until it is ready,
// and then stops the node's old agent (if any), as a DaemonSet rollout with
// maxSurge does. The nodes are replaced concurrently.
func (r *run) replace(ctx context.Context, nodes []int) error {
	var g errgroup.Group
	for _, i := range nodes {
		g.Go(func() error {
			r.mu.Lock()
			r.gen[i]++
			gen := r.gen[i]
			old := r.agents[i]
			r.mu.Unlock()
			a, err := r.startAgent(ctx, i, gen)
			if err != nil {
				return err
			}
			r.mu.Lock()
			r.agents[i] = a
			r.mu.Unlock()
			if old != nil {
				old.Stop()
			}
			return nil
		})
	}
	return g.Wait()
}

func (r *run) startAgent(ctx context.Context, i, gen int) (*harness.Agent, error) {
	mode := "required"
	if r.cfg.RBAC == "broad" {
		mode = "off"
	}
	var err error
	// FreePort can lose a race with another agent starting at the same
	// moment; a second try takes other ports.
	for try := 0; try < 3; try++ {
		var port int
		if port, err = harness.FreePort("127.0.0.1"); err != nil {
			return nil, err
		}
		var a *harness.Agent
		a, err = harness.StartAgent(ctx, harness.AgentConfig{
			Binary: r.bin, Dir: r.cfg.Dir, Name: fmt.Sprintf("agent-%s-%d", nodeName(i), gen),
			Kubeconfig: r.kc[i], NodeName: nodeName(i),
			Listen:      net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
			STSEndpoint: r.sts.URL(), LogLevel: "info",
			ExtraArgs:    []string{"--node-restricted=" + mode, "--audience=" + audience},
			Env:          []string{"GOMEMLIMIT=" + agentMemLimit},
			ReadyTimeout: 5 * time.Minute,
		})
		if err == nil {
			return a, nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, fmt.Errorf("agent for %s: %w", nodeName(i), err)
}

func (r *run) stopAll() {
	r.mu.Lock()
	agents := append([]*harness.Agent(nil), r.agents...)
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, a := range agents {
		if a != nil {
			wg.Add(1)
			go func() { defer wg.Done(); a.Stop() }()
		}
	}
	wg.Wait()
}

func (r *run) agentRSS() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	var v []float64
	for _, a := range r.agents {
		if a != nil && a.Process.Cmd.Process != nil {
			if b := rss(a.Process.Cmd.Process.Pid, "VmRSS"); b > 0 {
				v = append(v, b)
			}
		}
	}
	return stats(v)
}

// waitSTS waits until the STS has received n AssumeRoleWithWebIdentity
// calls in all: the agents have prefetched every pod with a role.
func (r *run) waitSTS(ctx context.Context, n int64) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	for r.sts.Counts().AssumeRole < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("STS calls %d of %d: %w", r.sts.Counts().AssumeRole, n, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

// waitEvents waits until watchers have been sent events of kind since
// before, and then no more for a second: watch events go out
// asynchronously, to however many watchers there are.
func (r *run) waitEvents(ctx context.Context, before snapshot, kind string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	b := before.by("apiserver_watch_events_total", kindKey)[kind]
	last, since := 0.0, time.Now()
	for {
		m, err := r.metrics(ctx)
		if err != nil {
			return err
		}
		got := m.by("apiserver_watch_events_total", kindKey)[kind] - b
		if got != last {
			last, since = got, time.Now()
		} else if got > 0 && time.Since(since) >= time.Second {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s watch events: %v: %w", kind, got, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (r *run) startSTS() error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(r.cp.CACert)
	roles := map[string]string{}
	for ns := range r.cfg.Namespaces {
		for sa := range r.cfg.ServiceAccountsPerNamespace {
			if arn := r.role(ns, sa); arn != "" {
				roles[arn] = "system:serviceaccount:" + nsName(ns) + ":" + saName(sa)
			}
		}
	}
	// As AWS STS: it fetches the issuer's keys and asks the API server
	// nothing else (no PodUID check), so the API server's figures are the
	// agents' alone.
	s, err := oidcsts.New(oidcsts.Config{
		Issuer: r.cp.Issuer, Audience: audience, Roles: roles,
		HTTPClient: &http.Client{Timeout: 10 * time.Second, Transport: &harness.BearerTransport{Token: r.cp.AdminToken,
			Base: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}},
	})
	if err != nil {
		return err
	}
	if err := s.Start("127.0.0.1:0"); err != nil {
		return err
	}
	r.sts = s
	return nil
}

// --- the cluster's objects

func nodeName(i int) string { return fmt.Sprintf("node-%04d", i) }
func nsName(i int) string   { return fmt.Sprintf("team-%02d", i) }
func saName(i int) string   { return fmt.Sprintf("app-%02d", i) }

// role is the role ARN of ServiceAccount sa in namespace ns, "" for the
// share without one.
func (r *run) role(ns, sa int) string {
	idx := ns*r.cfg.ServiceAccountsPerNamespace + sa
	total := r.cfg.Namespaces * r.cfg.ServiceAccountsPerNamespace
	if float64(idx) >= r.cfg.RoleShare*float64(total) {
		return ""
	}
	return fmt.Sprintf("arn:aws:iam::%s:role/%s-%s", oidcsts.DefaultAccountID, nsName(ns), saName(sa))
}

func (r *run) seed(ctx context.Context, res *Result) error {
	root, err := harness.RepoRoot()
	if err != nil {
		return err
	}
	if err := r.cp.EnsureNamespace(ctx, agentNamespace); err != nil {
		return err
	}
	files := []string{"deploy/daemonset/rbac.yaml"}
	if r.cfg.RBAC == "broad" {
		files = append(files, "deploy/daemonset/broad-rbac/rbac.yaml")
	}
	for _, f := range files {
		if _, err := r.cp.Kubectl(ctx, "apply", "-f", filepath.Join(root, f)); err != nil {
			return err
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for ns := range r.cfg.Namespaces {
		if _, err := r.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsName(ns)}}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating namespace: %w", err)
		}
		for sa := range r.cfg.ServiceAccountsPerNamespace {
			g.Go(func() error { return r.createServiceAccount(gctx, ns, sa) })
			res.ServiceAccounts++
		}
	}
	r.kc = make([]string, r.cfg.Nodes)
	for i := range r.cfg.Nodes {
		g.Go(func() error { return r.createNode(gctx, i) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(32)
	var done atomic.Int64
	for i := range r.cfg.Nodes {
		for j := range r.cfg.PodsPerNode {
			p := r.pod(i, j, "app")
			if p.Annotations["scale/role"] == "yes" {
				res.PrefetchPods++
			}
			res.Pods++
			g.Go(func() error {
				if err := r.createPod(gctx, p); err != nil {
					return err
				}
				if n := done.Add(1); n%5000 == 0 {
					r.cfg.Logf("created %d pods", n)
				}
				return nil
			})
		}
	}
	return g.Wait()
}

// createServiceAccount writes one shaped like a GitOps tool's: labels,
// the last applied configuration, the role annotation.
func (r *run) createServiceAccount(ctx context.Context, ns, sa int) error {
	obj := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: nsName(ns), Name: saName(sa),
		Labels: map[string]string{"app.kubernetes.io/name": saName(sa), "app.kubernetes.io/part-of": nsName(ns), "app.kubernetes.io/managed-by": "argocd"},
		Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": fmt.Sprintf(
			`{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"annotations":{},"labels":{"app.kubernetes.io/name":%q},"name":%q,"namespace":%q}}`, saName(sa), saName(sa), nsName(ns))}}}
	if arn := r.role(ns, sa); arn != "" {
		obj.Annotations[roleAnnotation] = arn
	}
	if _, err := r.client.CoreV1().ServiceAccounts(obj.Namespace).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating ServiceAccount: %w", err)
	}
	return nil
}

// createNode writes node i, its agent's pod (hostNetwork, as the
// DaemonSet's) and a kubeconfig with a token bound to that pod, as the
// pod's projected token is: in node-restricted mode it names the node.
func (r *run) createNode(ctx context.Context, i int) error {
	name := nodeName(i)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}}}
	if _, err := r.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating node: %w", err)
	}
	hostIP := hostIP(i)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: agentNamespace, Name: "credbroker-agent-" + name},
		Spec: corev1.PodSpec{NodeName: name, ServiceAccountName: harness.AgentServiceAccount, HostNetwork: true,
			Containers: []corev1.Container{{Name: "app", Image: "ghcr.io/credbroker/agent"}}},
		Status: runningStatus(hostIP, hostIP, 1),
	}
	if err := r.createPod(ctx, p); err != nil {
		return err
	}
	pod, err := r.client.CoreV1().Pods(agentNamespace).Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading the agent pod: %w", err)
	}
	secs := int64(4 * 3600)
	tr, err := r.client.CoreV1().ServiceAccounts(agentNamespace).CreateToken(ctx, harness.AgentServiceAccount, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &secs,
			BoundObjectRef: &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("token for the agent on %s: %w", name, err)
	}
	kc := filepath.Join(r.cfg.Dir, "kubeconfigs", name)
	if err := os.MkdirAll(filepath.Dir(kc), 0o700); err != nil {
		return err
	}
	if err := r.cp.WriteKubeconfig(kc, harness.AgentServiceAccount, tr.Status.Token); err != nil {
		return err
	}
	r.kc[i] = kc
	return nil
}

func hostIP(i int) string { return fmt.Sprintf("172.16.%d.%d", i/250, i%250+1) }

// pod is workload pod j of node i: two containers, typical of a
// Deployment's pod, with a status as a kubelet writes it.
func (r *run) pod(i, j int, prefix string) *corev1.Pod {
	g := i*r.cfg.PodsPerNode + j
	ns := g % r.cfg.Namespaces
	sa := (g / r.cfg.Namespaces) % r.cfg.ServiceAccountsPerNamespace
	app := fmt.Sprintf("%s-%s-%d", prefix, saName(sa), g/(r.cfg.Namespaces*r.cfg.ServiceAccountsPerNamespace*10))
	ip := netip.AddrFrom4([4]byte{10, byte(128 + i/256), byte(i % 256), byte(j + 1)}).String()
	ctr := func(name string, port int32) corev1.Container {
		return corev1.Container{Name: name, Image: "registry.example/team/" + name + ":v1.2.3",
			Env: []corev1.EnvVar{{Name: "AWS_CONTAINER_CREDENTIALS_FULL_URI", Value: "http://169.254.170.23/v1/credentials"},
				{Name: "LOG_LEVEL", Value: "info"}, {Name: "PORT", Value: strconv.Itoa(int(port))}},
			Ports: []corev1.ContainerPort{{ContainerPort: port, Protocol: corev1.ProtocolTCP}},
			Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(port)}}},
		}
	}
	automount := false
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: nsName(ns), Name: fmt.Sprintf("%s-%05d", app, g),
			Labels: map[string]string{"app": app, "pod-template-hash": "5d8f7c9b6"}},
		Spec: corev1.PodSpec{NodeName: nodeName(i), ServiceAccountName: saName(sa), AutomountServiceAccountToken: &automount,
			Containers: []corev1.Container{ctr("app", 8080), ctr("sidecar", 9090)}},
		Status: runningStatus(ip, hostIP(i), 2),
	}
	if r.role(ns, sa) != "" {
		// Not written to the API: seed counts the pods to prefetch.
		p.Annotations = map[string]string{"scale/role": "yes"}
	}
	return p
}

func runningStatus(podIP, hostIP string, containers int) corev1.PodStatus {
	now := metav1.Now()
	st := corev1.PodStatus{Phase: corev1.PodRunning, HostIP: hostIP, HostIPs: []corev1.HostIP{{IP: hostIP}},
		PodIP: podIP, PodIPs: []corev1.PodIP{{IP: podIP}}, StartTime: &now, QOSClass: corev1.PodQOSBurstable}
	for _, c := range []corev1.PodConditionType{corev1.PodReadyToStartContainers, corev1.PodInitialized, corev1.PodReady, corev1.ContainersReady, corev1.PodScheduled} {
		st.Conditions = append(st.Conditions, corev1.PodCondition{Type: c, Status: corev1.ConditionTrue, LastTransitionTime: now})
	}
	for k := range containers {
		name := []string{"app", "sidecar"}[k%2]
		st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{Name: name, Ready: true, Started: ptr(true),
			Image: "registry.example/team/" + name + ":v1.2.3", ImageID: "registry.example/team/" + name + "@sha256:" + strings.Repeat("ab", 32),
			ContainerID: "containerd://" + strings.Repeat("cd", 32), State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}})
	}
	return st
}

func ptr[T any](v T) *T { return &v }

// createPod creates p and then writes its status, as a kubelet would.
func (r *run) createPod(ctx context.Context, p *corev1.Pod) error {
	status := p.Status
	obj := p.DeepCopy()
	obj.Annotations = nil
	obj.Status = corev1.PodStatus{}
	pods := r.client.CoreV1().Pods(p.Namespace)
	created, err := pods.Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	status.QOSClass = created.Status.QOSClass // set at creation, immutable
	created.Status = status
	if _, err := pods.UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("setting status of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// --- the API server's metrics

type sample struct {
	name   string
	labels map[string]string
	value  float64
}

type snapshot []sample

var wanted = []string{"apiserver_request_total", "apiserver_response_sizes_sum", "apiserver_response_sizes_count",
	"apiserver_watch_events_total", "apiserver_watch_events_sizes_sum", "apiserver_longrunning_requests",
	"apiserver_init_events_total", "apiserver_cache_list_fetched_objects_total", "process_cpu_seconds_total", "process_resident_memory_bytes"}

func (r *run) metrics(ctx context.Context) (snapshot, error) {
	b, err := r.cp.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the API server's metrics: %w", err)
	}
	return parseMetrics(b), nil
}

func parseMetrics(b []byte) snapshot {
	var s snapshot
	harness.EachMetricSample(string(b), func(name string) bool { return slices.Contains(wanted, name) },
		func(name string, labels map[string]string, v float64) {
			s = append(s, sample{name: name, labels: labels, value: v})
		})
	return s
}

func (s snapshot) sum(name string) float64 {
	var t float64
	for _, x := range s {
		if x.name == name {
			t += x.value
		}
	}
	return t
}

// by sums the samples of name by key; samples whose key is "" are left out.
func (s snapshot) by(name string, key func(map[string]string) string) map[string]float64 {
	m := map[string]float64{}
	for _, x := range s {
		if x.name != name {
			continue
		}
		if k := key(x.labels); k != "" {
			m[k] += x.value
		}
	}
	return m
}

// requestKey is "VERB resource[/subresource]"; requests for no resource
// (/metrics, /readyz, discovery) are left out.
func requestKey(l map[string]string) string {
	if l["resource"] == "" {
		return ""
	}
	k := l["verb"] + " " + l["resource"]
	if l["subresource"] != "" {
		k += "/" + l["subresource"]
	}
	if !strings.HasPrefix(l["code"], "2") {
		k += " " + l["code"]
	}
	return k
}

func all(map[string]string) bool { return true }

func resourceKey(match func(map[string]string) bool) func(map[string]string) string {
	return func(l map[string]string) string {
		if !match(l) {
			return ""
		}
		return l["resource"]
	}
}

// kindKey names what the watch metrics count: a kind in some Kubernetes
// versions, a resource in others.
func kindKey(l map[string]string) string {
	if l["kind"] != "" {
		return l["kind"]
	}
	switch l["resource"] {
	case "pods":
		return "Pod"
	case "serviceaccounts":
		return "ServiceAccount"
	}
	return l["resource"]
}

func delta(after, before map[string]float64) map[string]float64 {
	d := map[string]float64{}
	for k, v := range after {
		if x := v - before[k]; x != 0 {
			d[k] = x
		}
	}
	return d
}

// rss reads a memory line (VmRSS, VmHWM) of /proc/<pid>/status, in bytes.
func rss(pid int, field string) float64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			if err != nil {
				return 0
			}
			return kb * 1024
		}
	}
	return 0
}

func stats(v []float64) Stats {
	if len(v) == 0 {
		return Stats{}
	}
	sort.Float64s(v)
	s := Stats{N: len(v), Min: v[0], Max: v[len(v)-1], Median: v[len(v)/2], P90: v[min(len(v)-1, len(v)*9/10)]}
	for _, x := range v {
		s.Sum += x
	}
	s.Mean = s.Sum / float64(len(v))
	return s
}
