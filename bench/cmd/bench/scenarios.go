package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/credbroker/agent/bench/loadgen"
	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/netns"
	"github.com/credbroker/agent/integration/oidcsts"
)

// bench runs the scenarios against one env and collects the results.
type bench struct {
	env   *env
	opt   options
	agent *agentProc
	floor *floorProc
	res   *results
	log   func(format string, args ...any)
	// defaults are the agent's flag defaults, from its help text.
	defaults map[string]string
}

// floorProc is the floor server process.
type floorProc struct {
	proc     *harness.Process
	addr     string
	statsURL string
}

func (b *bench) startFloor(ctx context.Context, size int) error {
	f, err := b.startFloorAt(ctx, "floor", floorAddr, size)
	b.floor = f
	return err
}

// startFloorAt starts a floor server on addr answering size bytes.
func (b *bench) startFloorAt(ctx context.Context, name, addr string, size int) (*floorProc, error) {
	port, err := harness.FreePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	p, err := harness.StartProcess(name, filepath.Join(b.env.dir, "logs/"+name+".log"), nil, b.env.floorBin,
		"-listen", addr, "-size", fmt.Sprint(size), "-stats-listen", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return nil, err
	}
	f := &floorProc{proc: p, addr: addr, statsURL: fmt.Sprintf("http://127.0.0.1:%d/stats", port)}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return f, nil
		}
		if time.Now().After(deadline) {
			return f, fmt.Errorf("%s not listening on %s: %w; log:\n%s", name, addr, err, p.LogTail(10))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// server names one side of a comparison.
type server struct {
	name  string
	addr  string
	pid   int
	stats func(ctx context.Context) (mallocs, bytes float64, err error)
}

func (b *bench) agentServer() server {
	a := b.agent
	return server{name: "agent", addr: agentAddr, pid: a.pid(), stats: func(ctx context.Context) (float64, float64, error) {
		m, err := a.metrics(ctx)
		if err != nil {
			return 0, 0, err
		}
		return m.get("go_memstats_mallocs_total"), m.get("go_memstats_alloc_bytes_total"), nil
	}}
}

func (b *bench) floorServer() server { return floorServerOf(b.floor) }

func floorServerOf(f *floorProc) server {
	return server{name: "floor", addr: f.addr, pid: f.proc.Cmd.Process.Pid, stats: func(ctx context.Context) (float64, float64, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.statsURL, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, 0, err
		}
		defer resp.Body.Close()
		var mallocs, bytes float64
		_, err = fmt.Fscan(resp.Body, &mallocs, &bytes)
		return mallocs, bytes, err
	}}
}

// measured is one load run against one server.
type measured struct {
	*loadgen.Result
	// AllocsPerReq and BytesPerReq are the server's heap allocations per
	// request over the run, warm-up included (from its own counters).
	AllocsPerReq float64 `json:"allocs_per_request"`
	BytesPerReq  float64 `json:"alloc_bytes_per_request"`
}

func (b *bench) load(ctx context.Context, s server, cfg loadgen.Config) (*measured, error) {
	cfg.Addr = s.addr
	cfg.ServerPID = s.pid
	m0, by0, _ := s.stats(ctx)
	res, err := loadgen.Run(ctx, cfg)
	if err != nil {
		return nil, err
	}
	m1, by1, err := s.stats(ctx)
	r := &measured{Result: res}
	// Every request of the run, warm-up included, caused the allocations.
	if err == nil && res.Total > 0 {
		r.AllocsPerReq = (m1 - m0) / float64(res.Total)
		r.BytesPerReq = (by1 - by0) / float64(res.Total)
	}
	return r, nil
}

// pair is the agent and the floor under the same load.
type pair struct {
	Name  string       `json:"name"`
	Pods  int          `json:"pods"`
	Mode  loadgen.Mode `json:"mode"`
	Agent *measured    `json:"agent"`
	Floor *measured    `json:"floor"`
	// Every repetition's throughput, to show the spread.
	AgentRuns []float64 `json:"agent_runs"`
	FloorRuns []float64 `json:"floor_runs"`
	// Ratios are agent/floor throughput of each round (one run of each
	// server, back to back): a neighbour's burst shifts a round's two runs
	// alike, so the median of these is steadier than a ratio of bests.
	Ratios []float64 `json:"ratios"`
}

// closedPair runs a closed loop against the agent and the floor, reps times
// each, alternating so that a noisy neighbour hits both alike, and keeps
// each side's best run.
func (b *bench) closedPair(ctx context.Context, name string, pods int, mode loadgen.Mode) (pair, error) {
	return b.closedPairOf(ctx, name, pods, mode, "", nil, b.floorServer())
}

// closedPairOf is closedPair for requests of path (default
// /v1/credentials) with header lines, against the given floor.
func (b *bench) closedPairOf(ctx context.Context, name string, pods int, mode loadgen.Mode, path string, header []string, floor server) (pair, error) {
	p := pair{Name: name, Pods: pods, Mode: mode}
	cfg := loadgen.Config{
		Path:        path,
		Header:      header,
		Sources:     b.env.firstSources(pods),
		Mode:        mode,
		Concurrency: b.opt.concurrency,
		Warmup:      b.opt.warmup,
		Duration:    b.opt.runTime,
		MaxRequests: b.opt.maxRequests,
		Timeout:     2 * time.Second,
	}
	for i := range b.opt.reps {
		order := []server{b.agentServer(), floor}
		if i%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		var round [2]float64 // agent, floor
		for _, s := range order {
			r, err := b.load(ctx, s, cfg)
			if err != nil {
				return p, fmt.Errorf("%s against %s: %w", name, s.name, err)
			}
			b.log("  %-8s %-5s %8.0f req/s  p50 %6.0fµs  p99 %6.0fµs  errors %d  (%s)", mode, s.name, r.Throughput,
				us(r.Latency.P50), us(r.Latency.P99), r.Sent-r.OK, outcomes(r.Outcomes))
			if s.name == "agent" {
				round[0] = r.Throughput
				p.AgentRuns = append(p.AgentRuns, r.Throughput)
				if p.Agent == nil || r.Throughput > p.Agent.Throughput {
					p.Agent = r
				}
			} else {
				round[1] = r.Throughput
				p.FloorRuns = append(p.FloorRuns, r.Throughput)
				if p.Floor == nil || r.Throughput > p.Floor.Throughput {
					p.Floor = r
				}
			}
		}
		if round[1] > 0 {
			p.Ratios = append(p.Ratios, round[0]/round[1])
		}
	}
	return p, nil
}

// median of xs (0 for none), leaving xs as it is.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}

func joinRatios(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.3f", x)
	}
	return strings.Join(parts, ", ")
}

// sweepPoint is the agent and the floor at one offered rate.
type sweepPoint struct {
	Fraction float64   `json:"fraction_of_floor_peak"`
	Rate     float64   `json:"offered_rate"`
	Agent    *measured `json:"agent"`
	Floor    *measured `json:"floor"`
}

// sweep offers fixed rates, as fractions of the floor's closed-loop peak,
// to both servers over keep-alive connections. Each point is cut into short
// slices that alternate between the servers, and each server's slices are
// pooled: on a shared machine a neighbour's burst then lands on both alike,
// instead of on whichever server happened to run at that moment.
func (b *bench) sweep(ctx context.Context, pods int, floorPeak float64) ([]sweepPoint, error) {
	var pts []sweepPoint
	for i, f := range b.opt.sweepFractions {
		rate := f * floorPeak
		pt := sweepPoint{Fraction: f, Rate: rate}
		cfg := loadgen.Config{
			Sources:     b.env.firstSources(pods),
			Mode:        loadgen.KeepAlive,
			Concurrency: 256,
			Rate:        rate,
			Warmup:      300 * time.Millisecond,
			Duration:    b.opt.sweepTime,
			MaxRequests: b.opt.maxRequests,
			Timeout:     2 * time.Second,
			KeepSamples: true,
		}
		var agent, floor []*loadgen.Result
		var agentAllocs, floorAllocs [2]float64 // allocations, requests
		for slice := range b.opt.sweepReps {
			order := []server{b.agentServer(), b.floorServer()}
			if (i+slice)%2 == 1 {
				order[0], order[1] = order[1], order[0]
			}
			for _, s := range order {
				r, err := b.load(ctx, s, cfg)
				if err != nil {
					return pts, fmt.Errorf("sweep at %.0f/s against %s: %w", rate, s.name, err)
				}
				acc := &floorAllocs
				if s.name == "agent" {
					agent = append(agent, r.Result)
					acc = &agentAllocs
				} else {
					floor = append(floor, r.Result)
				}
				acc[0] += r.AllocsPerReq * float64(r.Total)
				acc[1] += float64(r.Total)
			}
		}
		pt.Agent = &measured{Result: loadgen.Merge(agent...), AllocsPerReq: agentAllocs[0] / max(agentAllocs[1], 1)}
		pt.Floor = &measured{Result: loadgen.Merge(floor...), AllocsPerReq: floorAllocs[0] / max(floorAllocs[1], 1)}
		for _, x := range []struct {
			name string
			r    *measured
		}{{"agent", pt.Agent}, {"floor", pt.Floor}} {
			b.log("  %5.0f%% %7.0f/s %-5s got %7.0f/s  p50 %6.0fµs  p99 %6.0fµs  p99.9 %6.0fµs  unsent %d errors %d", f*100, rate, x.name,
				x.r.Throughput, us(x.r.Latency.P50), us(x.r.Latency.P99), us(x.r.Latency.P999), x.r.Unsent, x.r.Sent-x.r.OK)
		}
		pts = append(pts, pt)
	}
	return pts, nil
}

// getOnce sends one GET over a new connection from d.
func getOnce(ctx context.Context, d loadgen.Dialer, addr string, timeout time.Duration) (int, []byte, error) {
	tr := &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	return harness.Get(ctx, &http.Client{Transport: tr, Timeout: timeout}, "http://"+addr+"/v1/credentials")
}

// The GCP scenario: pods GET the GCE metadata token of their ServiceAccount's
// federated principal, as Google's clients do.
const gcpTokenPath = "/computeMetadata/v1/instance/service-accounts/default/token"

var gcpHeader = []string{"Metadata-Flavor: Google"}

// gcpWarm makes the agent fetch and cache the GCP token of each of the
// first pods pods (federated principals are fetched on first request, not
// prefetched) and returns the size of an answer.
func (b *bench) gcpWarm(ctx context.Context, pods int) (int, error) {
	srcs := b.env.firstSources(pods)
	sizes := make([]int, len(srcs))
	err := parallel(ctx, len(srcs), 8, func(ctx context.Context, i int) error {
		deadline := time.Now().Add(time.Minute)
		for {
			tr := &http.Transport{DialContext: srcs[i].DialContext, DisableKeepAlives: true}
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+agentAddr+gcpTokenPath, nil)
			req.Header.Set("Metadata-Flavor", "Google")
			resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
			if err == nil {
				body, rerr := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
				resp.Body.Close()
				if rerr == nil && resp.StatusCode == http.StatusOK {
					sizes[i] = len(body)
					return nil
				}
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("GCP token for pod %d: %w", i, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
	if err != nil {
		return 0, err
	}
	for _, n := range sizes[1:] {
		if n != sizes[0] {
			// Same shape for every pod; the floor answers one size.
			return 0, fmt.Errorf("GCP token answers of %d and %d bytes", sizes[0], n)
		}
	}
	return sizes[0], nil
}

// limits describes the agent's rate limits for a report; defaults are read
// from the agent's own help text, so the report never states stale ones.
func (o agentOptions) limits(defaults map[string]string) string {
	def := func(flag string) string {
		if v, ok := defaults[flag]; ok {
			return v
		}
		return "?"
	}
	up := fmt.Sprintf("upstream %s/s burst %s (default)", def("upstream-qps"), def("upstream-burst"))
	kube := fmt.Sprintf("Kubernetes client %s/s burst %s (default)", def("kube-api-qps"), def("kube-api-burst"))
	if o.upstreamQPS > 0 {
		up = fmt.Sprintf("upstream %v/s burst %d", o.upstreamQPS, o.upstreamBurst)
	}
	if o.kubeQPS > 0 {
		kube = fmt.Sprintf("Kubernetes client %v/s burst %d", o.kubeQPS, o.kubeBurst)
	}
	return up + "; " + kube
}

// flagDefaults reads "(default X)" of every flag from `agent serve -h`.
func flagDefaults(ctx context.Context, agentBin string) map[string]string {
	out, _ := exec.CommandContext(ctx, agentBin, "serve", "-h").CombinedOutput()
	m := map[string]string{}
	var flag string
	for _, line := range strings.Split(string(out), "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "-") {
			flag = strings.TrimPrefix(strings.Fields(t)[0], "-")
			continue
		}
		if i := strings.LastIndex(t, "(default "); i >= 0 && flag != "" {
			m[flag] = strings.TrimSuffix(t[i+len("(default "):], ")")
		}
	}
	return m
}

// coldResult is what an agent restart with every credential to fetch costs.
type coldResult struct {
	Pods          int             `json:"pods"`
	STSLatency    time.Duration   `json:"sts_latency_ns"`
	Limits        string          `json:"limits"`
	Ready         time.Duration   `json:"ready_after_ns"`        // agent start to /readyz 200
	AllServed     time.Duration   `json:"all_served_after_ns"`   // agent start to the last pod's first 200
	FirstOK       int             `json:"first_request_ok"`      // pods whose first accepted request got 200
	FirstLatency  loadgen.Latency `json:"first_request_latency"` // first accepted request to first 200, per pod
	Retries       int             `json:"retries"`               // requests answered with something else than 200
	Refused       int             `json:"refused"`               // connection attempts before the agent listened
	TokenRequests float64         `json:"token_requests"`
	STSCalls      int64           `json:"sts_calls"`
}

// coldStart restarts the agent with every pod's credentials to fetch while
// STS takes stsLatency per call, with requests from every pod starting at
// the moment the agent is started. It leaves the new agent running.
func (b *bench) coldStart(ctx context.Context, pods int, stsLatency time.Duration, o agentOptions) (coldResult, error) {
	cr := coldResult{Pods: pods, STSLatency: stsLatency, Limits: o.limits(b.defaults)}
	b.agent.stop()
	if err := b.env.sts.SetFault(oidcsts.Fault{Latency: stsLatency}); err != nil {
		return cr, err
	}
	sts0 := b.env.sts.Counts()
	srcs := b.env.firstSources(pods)
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	started := time.Now()

	type podResult struct {
		first, ok       time.Time
		firstOK         bool
		retries, refuse int
	}
	results := make([]podResult, len(srcs))
	var wg sync.WaitGroup
	for i, src := range srcs {
		wg.Go(func() {
			r := &results[i]
			for ctx.Err() == nil {
				sent := time.Now()
				code, _, err := getOnce(ctx, src, agentAddr, 10*time.Second)
				if err != nil && r.first.IsZero() {
					// Not listening yet (or the request failed before the
					// agent answered): like an SDK, try again shortly.
					r.refuse++
					time.Sleep(100 * time.Millisecond)
					continue
				}
				if r.first.IsZero() {
					r.first = sent
					r.firstOK = code == http.StatusOK
				}
				if code == http.StatusOK {
					r.ok = time.Now()
					return
				}
				r.retries++
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	// The pods are already knocking; StartAgent returns once /readyz
	// answers 200 (it polls every 100 ms).
	a, err := b.env.startAgent(ctx, o)
	if err != nil {
		cancel()
		wg.Wait()
		return cr, err
	}
	b.agent = a
	cr.Ready = time.Since(started)
	wg.Wait()
	var lat []time.Duration
	for _, r := range results {
		if r.ok.IsZero() {
			return cr, fmt.Errorf("cold start: a pod was not served within the time limit")
		}
		cr.AllServed = max(cr.AllServed, r.ok.Sub(started))
		lat = append(lat, r.ok.Sub(r.first))
		if r.firstOK {
			cr.FirstOK++
		}
		cr.Retries += r.retries
		cr.Refused += r.refuse
	}
	cr.FirstLatency = loadgen.Summarise(lat)
	m, err := a.metrics(ctx)
	if err != nil {
		return cr, err
	}
	cr.TokenRequests = m.get("credbroker_upstream_calls_total", "upstream", "kubernetes_token")
	cr.STSCalls = b.env.sts.Counts().AssumeRole - sts0.AssumeRole
	return cr, nil
}

// concResult is N simultaneous first requests from one new pod.
type concResult struct {
	Requests      int            `json:"requests"`
	OK            int            `json:"ok"`
	Outcomes      map[string]int `json:"outcomes"`
	TokenRequests float64        `json:"token_requests"`
	STSCalls      float64        `json:"sts_calls"`
	STSPodCalls   int64          `json:"sts_calls_seen_by_sts"`
	STSLatency    time.Duration  `json:"sts_latency_ns"`
}

// concurrentFirst sends n requests at once from a pod the agent has never
// seen: they are in flight before the pod exists in the API, so all of them
// wait for it to appear and then for its first fetch.
func (b *bench) concurrentFirst(ctx context.Context, n int, stsLatency time.Duration) (concResult, error) {
	cr := concResult{Requests: n, Outcomes: map[string]int{}, STSLatency: stsLatency}
	if err := b.env.sts.SetFault(oidcsts.Fault{Latency: stsLatency}); err != nil {
		return cr, err
	}
	ns, err := netns.Create(ctx, netns.Spec{Name: nsPrefix + "one", IP: podIP(4000)})
	if err != nil {
		return cr, err
	}
	defer ns.Close()
	src, err := loadgen.OpenNamespace(ns.Path())
	if err != nil {
		return cr, err
	}
	defer src.Close()
	m0, err := b.agent.metrics(ctx)
	if err != nil {
		return cr, err
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		start = make(chan struct{})
	)
	for range n {
		wg.Go(func() {
			<-start
			code, _, err := getOnce(ctx, src, agentAddr, 10*time.Second)
			key := fmt.Sprint(code)
			if err != nil {
				key = "error"
			}
			mu.Lock()
			cr.Outcomes[key]++
			if code == http.StatusOK {
				cr.OK++
			}
			mu.Unlock()
		})
	}
	close(start)
	// The requests are now waiting for the pod (the agent holds an unknown
	// caller for up to --wait-for-pod); create it as a kubelet would.
	time.Sleep(100 * time.Millisecond)
	pod, err := b.env.cp.CreatePod(ctx, harness.PodSpec{
		Namespace: podNamespace, Name: "first-100", ServiceAccount: "app-0", NodeName: nodeName, IP: podIP(4000),
	})
	if err != nil {
		return cr, err
	}
	b.env.mu.Lock()
	b.env.apiOnly++
	b.env.mu.Unlock()
	wg.Wait()
	m1, err := b.agent.metrics(ctx)
	if err != nil {
		return cr, err
	}
	cr.TokenRequests = delta(m0, m1, "credbroker_upstream_calls_total", "upstream", "kubernetes_token")
	cr.STSCalls = delta(m0, m1, "credbroker_upstream_calls_total", "upstream", "aws")
	cr.STSPodCalls = b.env.sts.PodCalls(string(pod.UID))
	return cr, b.env.sts.SetFault(oidcsts.Fault{})
}

// upstreamWindow is what the agent asked of the API server and STS while
// it served cached credentials.
type upstreamWindow struct {
	Pods            int                `json:"pods"`
	ServiceAccounts int                `json:"service_accounts"`
	Window          time.Duration      `json:"window_ns"`
	Requests        float64            `json:"credential_requests"`
	Agent           map[string]float64 `json:"agent_upstream_calls"`
	APIServer       map[string]float64 `json:"apiserver_requests"`
	STSCalls        int64              `json:"sts_calls"`
	// Watches is the pod watches open at the end beyond those the API
	// server held before any agent started.
	Watches     float64  `json:"agent_pod_watches"`
	WatchSeries []string `json:"open_pod_watch_series"`
}

type snapshot struct {
	at    time.Time
	agent metricSet
	api   metricSet
	sts   oidcsts.Counts
}

func (b *bench) snapshot(ctx context.Context) (snapshot, error) {
	s := snapshot{at: time.Now(), sts: b.env.sts.Counts()}
	var err error
	if s.agent, err = b.agent.metrics(ctx); err != nil {
		return s, err
	}
	if s.api, err = b.env.apiMetrics(ctx); err != nil {
		return s, err
	}
	return s, nil
}

func (b *bench) window(s0, s1 snapshot, pods int) upstreamWindow {
	w := upstreamWindow{
		Pods:            pods,
		ServiceAccounts: serviceAccounts,
		Window:          s1.at.Sub(s0.at),
		Requests:        delta(s0.agent, s1.agent, "credbroker_requests_total"),
		Agent:           map[string]float64{},
		APIServer:       map[string]float64{},
		STSCalls:        s1.sts.AssumeRole - s0.sts.AssumeRole,
		Watches:         s1.api.get("apiserver_longrunning_requests", "resource", "pods", "verb", "WATCH") - b.env.apiWatches,
	}
	for _, line := range strings.Split(string(s1.api), "\n") {
		if strings.HasPrefix(line, "apiserver_longrunning_requests{") && strings.Contains(line, `resource="pods"`) {
			w.WatchSeries = append(w.WatchSeries, line)
		}
	}
	for _, u := range []string{"kubernetes_token", "kubernetes_serviceaccount", "aws"} {
		w.Agent[u] = delta(s0.agent, s1.agent, "credbroker_upstream_calls_total", "upstream", u)
	}
	for _, k := range []struct{ key, verb, resource, sub string }{
		{"TokenRequest (create serviceaccounts/token)", "POST", "serviceaccounts", "token"},
		{"GET serviceaccounts", "GET", "serviceaccounts", ""},
		{"LIST pods", "LIST", "pods", ""},
		{"WATCH pods (ended)", "WATCH", "pods", ""},
	} {
		w.APIServer[k.key] = delta(s0.api, s1.api, "apiserver_request_total",
			"verb", k.verb, "resource", k.resource, "subresource", k.sub)
	}
	return w
}

// pprofTop renders the hottest functions of a CPU profile.
func pprofTop(ctx context.Context, profile string, n int, extra ...string) (string, error) {
	args := append([]string{"tool", "pprof", "-top", fmt.Sprintf("-nodecount=%d", n)}, extra...)
	out, err := exec.CommandContext(ctx, "go", append(args, profile)...).Output()
	if err != nil {
		return "", fmt.Errorf("go tool pprof: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

func outcomes(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s:%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

func us(d time.Duration) float64 { return float64(d) / 1e3 }
