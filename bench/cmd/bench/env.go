package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/credbroker/agent/bench/loadgen"
	"github.com/credbroker/agent/integration/googlests"
	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/netns"
	"github.com/credbroker/agent/integration/oidcsts"
)

const (
	nodeName     = "bench-node"
	podNamespace = "bench"
	// serviceAccounts is how many ServiceAccounts the pods share, round
	// robin: a node runs many pods of few workloads.
	serviceAccounts = 10
	// nsPrefix names the benchmark's network namespaces (harness.Pods
	// appends -N).
	nsPrefix = "cbb"
	// agentAddr and floorAddr share the link-local service address, so both
	// servers are reached over the same path.
	agentAddr = "169.254.170.23:80"
	floorAddr = "169.254.170.23:8080"
	// floorGCPAddr is the floor for the GCP scenario, answering a body of
	// the size of the agent's GCE metadata token answer.
	floorGCPAddr = "169.254.170.23:8081"
	// gcpProjectID is the project the agent's GCE metadata surface reports.
	gcpProjectID = "credbroker-bench"
)

// env is the benchmark's world: a control plane, an STS, pods in network
// namespaces, the agent and the floor.
type env struct {
	dir             string
	agentBin        string
	floorBin        string
	agentEnv        []string
	agentArgs       []string // flags every agent gets (-attest)
	cp              *harness.ControlPlane
	apiHTTP         *http.Client
	sts             *oidcsts.Server
	gsts            *googlests.Server // Google STS for the GCP scenario
	agentKubeconfig string
	pods            *harness.Pods
	// neighSaved holds the neighbour-table limits to restore on close.
	neighSaved map[string]string
	// apiWatches is how many pod watches the API server has open before any
	// agent runs (its own informers hold some).
	apiWatches float64

	mu      sync.Mutex
	netPods []*harness.Pod      // pods with a network namespace, in creation order
	sources []loadgen.Dialer    // one per netPod, opened by name
	apiOnly int                 // pods that exist only in the API (memory scenario)
	uids    map[string]struct{} // every pod UID created
}

// podIP gives pod i an address in 198.18.0.0/15, the range RFC 2544 sets
// aside for benchmarks: nothing else on a machine uses it.
func podIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18 + byte(i>>16&1), byte(i >> 8), byte(i)})
}

func roleARN(i int) string { return fmt.Sprintf("arn:aws:iam::123456789012:role/bench-app-%d", i) }

func setupEnv(ctx context.Context, dir, agentBin, floorBin string) (_ *env, err error) {
	e := &env{dir: dir, agentBin: agentBin, floorBin: floorBin, uids: map[string]struct{}{}}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if err := netns.AddHostAddr(ctx, netns.ServiceAddr4); err != nil {
		return nil, err
	}
	if e.neighSaved, err = raiseNeighbourLimits(); err != nil {
		return nil, err
	}
	e.cp, err = harness.StartControlPlane(ctx, harness.ControlPlaneConfig{Dir: filepath.Join(dir, "cp")})
	if err != nil {
		return nil, fmt.Errorf("starting control plane: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.cp.CACert)
	e.apiHTTP = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}

	roles := map[string]string{}
	for i := range serviceAccounts {
		roles[roleARN(i)] = fmt.Sprintf("system:serviceaccount:%s:app-%d", podNamespace, i)
	}
	// No PodUID check: it would add one API GET per STS call to the counts
	// this benchmark reports as the agent's cost.
	e.sts, err = oidcsts.New(oidcsts.Config{
		Issuer:     e.cp.Issuer,
		HTTPClient: &http.Client{Timeout: 10 * time.Second, Transport: &harness.BearerTransport{Token: e.cp.AdminToken, Base: e.apiHTTP.Transport}},
		Roles:      roles,
	})
	if err != nil {
		return nil, err
	}
	if err := e.sts.Start("127.0.0.1:0"); err != nil {
		return nil, err
	}
	// Google STS for the GCP scenario: every ServiceAccount has a federated
	// principal, so the same pods get GCP tokens without impersonation.
	e.gsts, err = googlests.New(googlests.Config{
		Issuer:     e.cp.Issuer,
		HTTPClient: &http.Client{Timeout: 10 * time.Second, Transport: &harness.BearerTransport{Token: e.cp.AdminToken, Base: e.apiHTTP.Transport}},
	})
	if err != nil {
		return nil, err
	}
	if err := e.gsts.Start("127.0.0.1:0"); err != nil {
		return nil, err
	}
	for i := range serviceAccounts {
		if _, err := e.cp.CreateServiceAccount(ctx, podNamespace, fmt.Sprintf("app-%d", i), roleARN(i)); err != nil {
			return nil, err
		}
	}
	e.agentKubeconfig = filepath.Join(dir, "agent.kubeconfig")
	if err := e.cp.AgentKubeconfig(ctx, "", e.agentKubeconfig); err != nil {
		return nil, err
	}
	if e.pods, err = harness.NewPods(ctx, e.cp, nodeName, nsPrefix); err != nil {
		return nil, err
	}
	m, err := e.apiMetrics(ctx)
	if err != nil {
		return nil, err
	}
	e.apiWatches = m.get("apiserver_longrunning_requests", "resource", "pods", "verb", "WATCH")
	return e, nil
}

// addNetPods creates pods with network namespaces until there are n.
func (e *env) addNetPods(ctx context.Context, n int) error {
	e.mu.Lock()
	have := len(e.netPods)
	e.mu.Unlock()
	return parallel(ctx, n-have, 6, func(ctx context.Context, k int) error {
		i := have + k
		p, err := e.pods.Start(ctx, harness.PodSpec{
			Namespace:      podNamespace,
			Name:           fmt.Sprintf("net-%d", i),
			ServiceAccount: fmt.Sprintf("app-%d", i%serviceAccounts),
			IP:             podIP(i),
		})
		if err != nil {
			return err
		}
		src, err := loadgen.OpenNamespace(p.NS.Path())
		if err != nil {
			return err
		}
		e.mu.Lock()
		e.netPods = append(e.netPods, p)
		e.sources = append(e.sources, src)
		e.uids[string(p.Pod.UID)] = struct{}{}
		e.mu.Unlock()
		return nil
	})
}

// addAPIPods creates pods that exist only in the API, with addresses after
// the network pods' ones, until there are n pods in all. Nothing sends
// requests from them: they are there to be indexed and prefetched.
func (e *env) addAPIPods(ctx context.Context, n int) error {
	e.mu.Lock()
	base := len(e.netPods) + e.apiOnly
	e.mu.Unlock()
	return parallel(ctx, n-base, 8, func(ctx context.Context, k int) error {
		// Far above any network pod's index, so addresses never collide.
		i := 1<<15 + base + k
		p, err := e.cp.CreatePod(ctx, harness.PodSpec{
			Namespace:      podNamespace,
			Name:           fmt.Sprintf("api-%d", base+k),
			ServiceAccount: fmt.Sprintf("app-%d", i%serviceAccounts),
			NodeName:       nodeName,
			IP:             podIP(i),
		})
		if err != nil {
			return err
		}
		e.mu.Lock()
		e.apiOnly++
		e.uids[string(p.UID)] = struct{}{}
		e.mu.Unlock()
		return nil
	})
}

func (e *env) podCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.netPods) + e.apiOnly
}

// firstSources returns the dialers of the first n network pods.
func (e *env) firstSources(n int) []loadgen.Dialer {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]loadgen.Dialer(nil), e.sources[:n]...)
}

func (e *env) apiMetrics(ctx context.Context) (metricSet, error) {
	return scrape(ctx, e.apiHTTP, e.cp.URL+"/metrics", e.cp.AdminToken)
}

// close tears everything down. Namespaces go in parallel: one by one, a
// thousand take most of a minute.
func (e *env) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e.mu.Lock()
	pods := e.netPods
	e.netPods = nil
	e.mu.Unlock()
	if e.pods != nil {
		// -attest=netns pods' processes; none otherwise.
		e.pods.StopSandboxes()
	}
	_ = parallel(ctx, len(pods), 6, func(ctx context.Context, i int) error {
		return pods[i].NS.Close()
	})
	if e.pods != nil {
		_ = netns.Cleanup(ctx, nsPrefix)
	}
	if e.sts != nil {
		e.sts.Close()
	}
	if e.gsts != nil {
		e.gsts.Close()
	}
	if e.cp != nil {
		e.cp.Stop()
	}
	for path, v := range e.neighSaved {
		_ = os.WriteFile(path, []byte(v), 0o644)
	}
}

// raiseNeighbourLimits lifts the host's IPv4 neighbour (ARP) table limits.
// Every simulated pod is a neighbour of the host on its own veth link; past
// the default hard limit of 1024 entries the kernel drops neighbours
// ("neighbor table overflow") and connections from pods beyond that fail.
// Kubernetes nodes with many pods raise the same limits. It returns the old
// values, which close puts back.
func raiseNeighbourLimits() (map[string]string, error) {
	saved := map[string]string{}
	for name, v := range map[string]int{"gc_thresh1": 4096, "gc_thresh2": 8192, "gc_thresh3": 16384} {
		path := "/proc/sys/net/ipv4/neigh/default/" + name
		old, err := os.ReadFile(path)
		if err != nil {
			return saved, fmt.Errorf("reading %s: %w", path, err)
		}
		if cur, err := strconv.Atoi(strings.TrimSpace(string(old))); err == nil && cur >= v {
			continue
		}
		if err := os.WriteFile(path, []byte(strconv.Itoa(v)), 0o644); err != nil {
			return saved, fmt.Errorf("raising %s: %w", path, err)
		}
		saved[path] = string(old)
	}
	return saved, nil
}

// parallel runs fn(0..n-1) on at most workers goroutines and returns the
// first error; it stops handing out work after one.
func parallel(parent context.Context, n, workers int, fn func(ctx context.Context, i int) error) error {
	if n <= 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	next := make(chan int)
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for range min(workers, n) {
		wg.Go(func() {
			for i := range next {
				if err := fn(ctx, i); err != nil {
					once.Do(func() { first = err; cancel() })
				}
			}
		})
	}
loop:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break loop
		}
	}
	close(next)
	wg.Wait()
	if first == nil {
		return parent.Err()
	}
	return first
}
