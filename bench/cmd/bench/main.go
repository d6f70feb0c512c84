// The bench command runs the agent's benchmark suite on this machine and
// writes docs/benchmarks.md: cache-hit throughput and latency against a floor
// server under the same generator, a latency-against-load sweep, an agent
// restart with every credential to fetch, simultaneous first requests, memory
// per pod, and what the agent asks of the API server and STS.
//
// It needs root (network namespaces, the link-local address), kube-apiserver
// and etcd from `make k8sbin`, bin/agent, and the floor binary. `make bench`
// builds what is missing and runs it. Every load run is bounded in requests
// and time, and all traffic stays on this machine: the agent and the floor
// listen on 169.254.170.23 (on lo), pods are network namespaces made here
// with addresses from 198.18.0.0/15, and STS and the control plane listen on
// 127.0.0.1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/credbroker/agent/bench/loadgen"
)

type options struct {
	outDir         string
	doc            string
	png            string
	agentBin       string
	floorBin       string
	pods           int
	podsHit        int
	rounds         int
	roundTime      time.Duration
	podsLarge      int
	podsMem        int
	concurrency    int
	reps           int
	sweepReps      int
	warmup         time.Duration
	runTime        time.Duration
	sweepTime      time.Duration
	sweepFractions []float64
	maxRequests    int64
	profile        bool
	timeout        time.Duration
	skip           map[string]bool
	agentEnv       []string
	attest         string // the agent's --attest
	soak           time.Duration
	soakSession    time.Duration
	// before is an earlier run's results, shown beside this one's.
	before *results
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		o         options
		fractions string
	)
	flag.StringVar(&o.outDir, "out", "bench/out", "directory for raw results, logs and profiles")
	flag.StringVar(&o.doc, "doc", "docs/benchmarks.md", "Markdown report to write")
	flag.StringVar(&o.png, "png", "docs/benchmarks-latency.png", "where the plot goes (drawn by bench/plot from <out>/sweep.json)")
	flag.StringVar(&o.agentBin, "agent", "bin/agent", "agent binary")
	flag.StringVar(&o.floorBin, "floor", "bin/bench-floor", "floor server binary")
	flag.IntVar(&o.pods, "pods", 250, "pods for the main scenarios (a large node)")
	flag.IntVar(&o.podsHit, "pods-hit", 40, "pods for the headline keep-alive cache-hit ratio (the first of the main scenarios' pods)")
	flag.IntVar(&o.rounds, "rounds", 15, "interleaved agent/floor rounds of the headline ratio (its median and spread are reported)")
	flag.DurationVar(&o.roundTime, "round-run", time.Second, "measured window of each server's run in a headline round (after -warmup)")
	flag.IntVar(&o.podsLarge, "pods-large", 1000, "pods for the large scenario")
	flag.IntVar(&o.podsMem, "pods-mem", 5000, "pods for the largest memory measurement (API only, no namespaces)")
	flag.IntVar(&o.concurrency, "c", 64, "requests in flight in closed-loop runs")
	flag.IntVar(&o.reps, "reps", 2, "repetitions of each closed-loop run per server (best kept)")
	flag.IntVar(&o.sweepReps, "sweep-reps", 6, "slices of each fixed-rate point per server, alternating with the other server and pooled")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "unrecorded warm-up before each run")
	flag.DurationVar(&o.runTime, "run", 4*time.Second, "measured window of each closed-loop run")
	flag.DurationVar(&o.sweepTime, "sweep-run", 1500*time.Millisecond, "measured window of each fixed-rate slice")
	flag.StringVar(&fractions, "sweep", "0.1,0.2,0.3,0.4,0.5,0.6,0.7", "offered rates as fractions of the floor's closed-loop peak")
	flag.Int64Var(&o.maxRequests, "max", 2_000_000, "most requests in one run")
	flag.BoolVar(&o.profile, "profile", true, "take a CPU profile of the agent under closed-loop load")
	flag.DurationVar(&o.timeout, "timeout", 14*time.Minute, "the whole suite's time limit")
	flag.DurationVar(&o.soak, "soak", 0, "instead of the suite, count upstream calls over this long a window with real refreshes (writes <out>/soak.json only)")
	flag.DurationVar(&o.soakSession, "soak-session", 30*time.Minute, "credential lifetime the agent asks for during -soak (the agent's minimum is 30m)")
	var skip, agentEnv, render, before string
	flag.StringVar(&render, "render", "", "only rewrite -doc from this results.json of an earlier run")
	flag.StringVar(&before, "before", "", "results.json of an earlier run (another agent build) whose headline figures the report shows beside this run's")
	flag.StringVar(&skip, "skip", "", "comma-separated scenarios to leave out: sweep, cold (which ends the run there), large (ends it after cold), mem; for quick experiments, the report then lacks them")
	flag.StringVar(&o.attest, "attest", "off", "the agent's --attest mode; netns gives every pod a sandbox process in a cgroup named after its UID, so the kernel can attest it")
	flag.StringVar(&agentEnv, "agent-env", "", "comma-separated VAR=value pairs for the agent's environment (e.g. GOGC=200), for experiments")
	flag.Parse()
	o.skip = map[string]bool{}
	for _, s := range strings.Split(skip, ",") {
		if s = strings.TrimSpace(s); s != "" {
			o.skip[s] = true
		}
	}
	for _, kv := range strings.Split(agentEnv, ",") {
		if kv = strings.TrimSpace(kv); kv != "" {
			o.agentEnv = append(o.agentEnv, kv)
		}
	}
	for _, f := range strings.Split(fractions, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || v <= 0 {
			return fmt.Errorf("bad -sweep fraction %q", f)
		}
		o.sweepFractions = append(o.sweepFractions, v)
	}
	if before != "" {
		o.before = &results{}
		if err := readResults(before, o.before); err != nil {
			return err
		}
	}
	if render != "" {
		b, err := os.ReadFile(render)
		if err != nil {
			return err
		}
		var res results
		if err := json.Unmarshal(b, &res); err != nil {
			return fmt.Errorf("reading %s: %w", render, err)
		}
		return os.WriteFile(o.doc, []byte(renderMarkdown(o, &res)), 0o644)
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: network namespaces and the link-local service address")
	}
	for _, p := range []*string{&o.agentBin, &o.floorBin, &o.outDir} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		*p = abs
	}
	for _, bin := range []string{o.agentBin, o.floorBin} {
		if _, err := os.Stat(bin); err != nil {
			return fmt.Errorf("%s missing (make build; go build -o bin/bench-floor ./bench/cmd/floor): %w", bin, err)
		}
	}

	if o.soak > 0 {
		o.timeout = o.soak + 8*time.Minute
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()

	if err := os.MkdirAll(o.outDir, 0o755); err != nil {
		return err
	}
	dir, err := os.MkdirTemp(o.outDir, "run-")
	if err != nil {
		return err
	}
	if o.soak > 0 {
		if o.soak > time.Hour {
			return errors.New("-soak is bounded to 1h")
		}
		sctx, scancel := context.WithTimeout(ctx, o.soak+5*time.Minute)
		defer scancel()
		_, err := soak(sctx, o, dir, o.soak, o.soakSession)
		if err == nil {
			os.RemoveAll(dir)
		}
		return err
	}
	res, err := suite(ctx, o, dir)
	if res != nil {
		if werr := writeResults(o, res); werr != nil {
			err = errors.Join(err, werr)
		}
	}
	if err == nil {
		// Logs and etcd data of a good run are of no further use.
		os.RemoveAll(dir)
	} else {
		fmt.Fprintf(os.Stderr, "bench: logs kept in %s\n", dir)
	}
	return err
}

func readResults(path string, res *results) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, res); err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	return nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// suite runs every scenario in an order that reuses what the previous one
// built. It returns what it measured even when a later scenario fails.
func suite(ctx context.Context, o options, dir string) (_ *results, err error) {
	began := time.Now()
	res := newResults(o)
	// The agent's own build, which may not be this checkout's.
	if out, err := exec.CommandContext(ctx, o.agentBin, "version").Output(); err == nil {
		res.Commit = strings.TrimSpace(string(out))
	}
	b := &bench{opt: o, res: res, log: logf, defaults: flagDefaults(ctx, o.agentBin)}
	res.AgentDefaults = b.defaults

	logf("starting control plane and STS")
	e, err := setupEnv(ctx, dir, o.agentBin, o.floorBin)
	if err != nil {
		return nil, err
	}
	e.agentEnv = o.agentEnv
	e.agentArgs = []string{"--attest=" + o.attest}
	e.pods.Attestable = o.attest != "off"
	b.env = e
	defer func() {
		if b.agent != nil {
			b.agent.stop()
		}
		if b.floor != nil {
			b.floor.proc.Stop(5 * time.Second)
		}
		logf("removing network namespaces and the control plane")
		e.close()
		res.Elapsed = time.Since(began)
		res.LoadAfter = loadAvg()
	}()

	t := time.Now()
	first := min(o.podsHit, o.pods)
	if err := e.addNetPods(ctx, first); err != nil {
		return res, fmt.Errorf("creating %d pods: %w", first, err)
	}
	logf("created %d pods with network namespaces in %s", first, time.Since(t).Round(time.Millisecond))

	// Fetch fast while setting up: the load scenarios measure cache hits,
	// and the cold start below runs with the agent's defaults.
	fast := agentOptions{upstreamQPS: 1000, upstreamBurst: 1000, kubeQPS: 1000, kubeBurst: 1000, cacheSize: 2 * o.podsMem}
	if b.agent, err = e.startAgent(ctx, fast); err != nil {
		return res, err
	}
	if err := b.agent.waitCached(ctx, first, 2*time.Minute); err != nil {
		return res, err
	}
	// The first memory sample, before the node fills up: the heap per pod
	// is the growth from here to the last sample.
	if err := b.memory(ctx, first); err != nil {
		return res, err
	}
	t = time.Now()
	if err := e.addNetPods(ctx, o.pods); err != nil {
		return res, fmt.Errorf("creating %d pods: %w", o.pods, err)
	}
	logf("created pods up to %d with network namespaces in %s", o.pods, time.Since(t).Round(time.Millisecond))
	if err := b.agent.waitCached(ctx, o.pods, 2*time.Minute); err != nil {
		return res, err
	}
	code, body, err := getOnce(ctx, e.firstSources(1)[0], agentAddr, 5*time.Second)
	if err != nil || code != 200 {
		return res, fmt.Errorf("first credential request: status %d: %v", code, err)
	}
	res.BodyBytes = len(body)
	if err := b.startFloor(ctx, len(body)); err != nil {
		return res, err
	}
	logf("agent caches %d pods; answers are %d bytes, and so are the floor's", o.pods, len(body))
	if err := b.memory(ctx, o.pods); err != nil {
		return res, err
	}
	// GCP: the same pods' federated principals, one token each fetched
	// now (after the memory figure, which is AWS's), then cache hits only.
	if res.GCPBodyBytes, err = b.gcpWarm(ctx, o.pods); err != nil {
		return res, err
	}
	floorGCP, err := b.startFloorAt(ctx, "floor-gcp", floorGCPAddr, res.GCPBodyBytes)
	if floorGCP != nil {
		defer floorGCP.proc.Stop(5 * time.Second)
	}
	if err != nil {
		return res, err
	}
	logf("agent caches a GCP token for each of %d pods; GCE metadata token answers are %d bytes, and so are the GCP floor's", o.pods, res.GCPBodyBytes)

	s0, err := b.snapshot(ctx)
	if err != nil {
		return res, err
	}
	logf("headline: closed keep-alive loop, %d pods, %d in flight, %d interleaved rounds × %s", first, o.concurrency, o.rounds, o.roundTime)
	// Many short rounds: a neighbour's burst of a few seconds then spoils
	// a few rounds' ratios, which the median leaves out.
	hb := *b
	hb.opt.reps = o.rounds
	hb.opt.runTime = o.roundTime
	hp, err := hb.closedPair(ctx, fmt.Sprintf("%d pods, %s", first, loadgen.KeepAlive), first, loadgen.KeepAlive)
	if err != nil {
		return res, err
	}
	res.Headline = &hp
	logf("  agent/floor by round %s: median %.3f", joinRatios(hp.Ratios), median(hp.Ratios))
	logf("closed loop, %d pods, %d in flight, best of %d × %s", o.pods, o.concurrency, o.reps, o.runTime)
	for _, m := range []loadgen.Mode{loadgen.KeepAlive, loadgen.NewConn} {
		p, err := b.closedPair(ctx, fmt.Sprintf("%d pods, %s", o.pods, m), o.pods, m)
		if err != nil {
			return res, err
		}
		res.Pairs = append(res.Pairs, p)
	}
	res.FloorPeak = res.Pairs[0].Floor.Throughput
	logf("closed loop, GCP token (%s with Metadata-Flavor: Google), %d pods", gcpTokenPath, o.pods)
	gp, err := b.closedPairOf(ctx, fmt.Sprintf("%d pods, %s, GCP token", o.pods, loadgen.KeepAlive), o.pods, loadgen.KeepAlive,
		gcpTokenPath, gcpHeader, floorServerOf(floorGCP))
	if err != nil {
		return res, err
	}
	res.Pairs = append(res.Pairs, gp)
	if o.profile {
		if err := b.profile(ctx); err != nil {
			logf("profile failed: %v", err)
		}
	}
	if !o.skip["sweep"] {
		logf("fixed rates, fractions of the floor's peak %.0f/s", res.FloorPeak)
		if res.Sweep, err = b.sweep(ctx, o.pods, res.FloorPeak); err != nil {
			return res, err
		}
	}
	s1, err := b.snapshot(ctx)
	if err != nil {
		return res, err
	}
	res.Upstream = b.window(s0, s1, o.pods)

	// First with the agent's defaults, then lifting its upstream rate
	// limit, then also its Kubernetes client's, to show what bounds each.
	upstreamOnly := agentOptions{upstreamQPS: 1000, upstreamBurst: 1000, cacheSize: 2 * o.podsMem}
	coldRuns := []agentOptions{{cacheSize: 2 * o.podsMem}, upstreamOnly, fast}
	if o.skip["cold"] {
		coldRuns = nil
	}
	for _, ao := range coldRuns {
		logf("cold start: agent restart, %d pods to fetch, STS answering in 50ms, limits %s", o.pods, ao.limits(b.defaults))
		cr, err := b.coldStart(ctx, o.pods, 50*time.Millisecond, ao)
		if err != nil {
			return res, err
		}
		res.Cold = append(res.Cold, cr)
		logf("  every pod served %s after the agent started (ready after %s); first-request p50 %s p99 %s",
			cr.AllServed.Round(time.Millisecond), cr.Ready.Round(time.Millisecond),
			cr.FirstLatency.P50.Round(time.Millisecond), cr.FirstLatency.P99.Round(time.Millisecond))
	}
	if o.skip["cold"] {
		return res, nil
	}
	logf("100 simultaneous first requests from a new pod")
	if res.Concurrent, err = b.concurrentFirst(ctx, 100, 50*time.Millisecond); err != nil {
		return res, err
	}
	logf("  %d of %d ok; TokenRequests %.0f, STS calls %.0f (STS saw %d)", res.Concurrent.OK, res.Concurrent.Requests,
		res.Concurrent.TokenRequests, res.Concurrent.STSCalls, res.Concurrent.STSPodCalls)
	if o.skip["large"] {
		return res, nil
	}

	b.agent.stop()
	if b.agent, err = e.startAgent(ctx, fast); err != nil {
		return res, err
	}
	t = time.Now()
	if err := e.addNetPods(ctx, o.podsLarge); err != nil {
		return res, fmt.Errorf("creating %d pods: %w", o.podsLarge, err)
	}
	logf("created %d pods with network namespaces in %s", o.podsLarge, time.Since(t).Round(time.Millisecond))
	if err := b.agent.waitCached(ctx, e.podCount(), 3*time.Minute); err != nil {
		return res, err
	}
	if err := b.memory(ctx, e.podCount()); err != nil {
		return res, err
	}
	logf("closed loop, %d pods", o.podsLarge)
	for _, m := range []loadgen.Mode{loadgen.KeepAlive, loadgen.NewConn} {
		p, err := b.closedPair(ctx, fmt.Sprintf("%d pods, %s", o.podsLarge, m), o.podsLarge, m)
		if err != nil {
			return res, err
		}
		res.Pairs = append(res.Pairs, p)
	}

	if o.skip["mem"] {
		return res, nil
	}
	t = time.Now()
	if err := e.addAPIPods(ctx, o.podsMem); err != nil {
		return res, fmt.Errorf("creating pods up to %d: %w", o.podsMem, err)
	}
	logf("created pods up to %d in the API in %s", o.podsMem, time.Since(t).Round(time.Millisecond))
	if err := b.agent.waitCached(ctx, e.podCount(), 4*time.Minute); err != nil {
		return res, err
	}
	if err := b.memory(ctx, e.podCount()); err != nil {
		return res, err
	}
	if top, err := b.heapTop(ctx); err != nil {
		logf("heap profile failed: %v", err)
	} else {
		res.HeapTop = top
	}
	return res, nil
}

// heapTop profiles the agent's live heap (after a GC) and renders its
// largest holders.
func (b *bench) heapTop(ctx context.Context) (string, error) {
	path := filepath.Join(b.opt.outDir, "agent-heap.pprof")
	if err := b.agent.fetch(ctx, "/debug/pprof/heap?gc=1", path); err != nil {
		return "", err
	}
	return pprofTop(ctx, path, 20, "-sample_index=inuse_space")
}

func (b *bench) memory(ctx context.Context, pods int) error {
	m, err := b.agent.memory(ctx)
	if err != nil {
		return err
	}
	m.Pods = pods
	if raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", b.agent.pid())); err == nil {
		os.WriteFile(filepath.Join(b.opt.outDir, fmt.Sprintf("agent-smaps-%d.txt", pods)), raw, 0o644)
	}
	// A heap profile of each sample, for seeing what grows with the pods.
	if err := b.agent.fetch(ctx, "/debug/pprof/heap", filepath.Join(b.opt.outDir, fmt.Sprintf("agent-heap-%d.pprof", pods))); err != nil {
		logf("heap profile failed: %v", err)
	}
	b.res.Memory = append(b.res.Memory, m)
	logf("  memory with %d pods (%d cached): heap %.1f MiB, RSS %.1f MiB (anon %.1f, file %.1f; Go sys %.1f, heap idle %.1f, released %.1f)", pods, m.Cached, mib(m.HeapAlloc), mib(m.RSS), mib(m.RSSAnon), mib(m.RSSFile), mib(m.Sys), mib(m.HeapIdle), mib(m.HeapReleased))
	return nil
}

// profile takes CPU profiles of the agent during closed keep-alive and
// new-connection runs.
func (b *bench) profile(ctx context.Context) error {
	for _, mode := range []loadgen.Mode{loadgen.KeepAlive, loadgen.NewConn} {
		p, err := b.profileOne(ctx, mode)
		if err != nil {
			return err
		}
		b.res.Profiles = append(b.res.Profiles, p)
	}
	return nil
}

func (b *bench) profileOne(ctx context.Context, mode loadgen.Mode) (profileResult, error) {
	pr := profileResult{Mode: mode}
	path := filepath.Join(b.opt.outDir, "agent-cpu-"+mode.String()+".pprof")
	errc := make(chan error, 1)
	go func() { errc <- b.agent.profile(ctx, 5*time.Second, path) }()
	r, err := b.load(ctx, b.agentServer(), loadgen.Config{
		Sources:     b.env.firstSources(b.opt.pods),
		Mode:        mode,
		Concurrency: b.opt.concurrency,
		Duration:    6 * time.Second,
		MaxRequests: b.opt.maxRequests,
	})
	if perr := <-errc; perr != nil {
		return pr, perr
	}
	if err != nil {
		return pr, err
	}
	pr.Throughput = r.Throughput
	if pr.Top, err = pprofTop(ctx, path, 25); err != nil {
		return pr, err
	}
	// The agent's own functions, by cumulative share: what its code costs
	// beyond net/http and the kernel.
	cum, err := pprofTop(ctx, path, 400, "-cum")
	if err != nil {
		return pr, err
	}
	var ours []string
	for _, line := range strings.Split(cum, "\n") {
		if strings.Contains(line, "github.com/credbroker/agent/") && len(ours) < 15 {
			ours = append(ours, line)
		}
	}
	pr.Ours = strings.Join(ours, "\n")
	return pr, nil
}

func writeResults(o options, res *results) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.outDir, "results.json"), b, 0o644); err != nil {
		return err
	}
	if len(res.Sweep) > 0 {
		if err := writeSweep(filepath.Join(o.outDir, "sweep.json"), res); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Dir(o.doc), 0o755); err != nil {
		return err
	}
	return os.WriteFile(o.doc, []byte(renderMarkdown(o, res)), 0o644)
}

func writeSweep(path string, res *results) error {
	type series struct {
		Name   string      `json:"name"`
		Points []*measured `json:"points"`
	}
	var agent, floor []*measured
	for _, p := range res.Sweep {
		agent = append(agent, p.Agent)
		floor = append(floor, p.Floor)
	}
	doc := struct {
		Title  string   `json:"title"`
		Series []series `json:"series"`
	}{
		Title:  fmt.Sprintf("Cache-hit latency against offered load: %d pods, keep-alive, %s", res.Pairs[0].Pods, res.Date.Format("2006-01-02")),
		Series: []series{{"agent", agent}, {"floor", floor}},
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func kernel() string {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return "unknown"
	}
	var sb strings.Builder
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}

func newResults(o options) *results {
	return &results{
		Date:       time.Now().UTC(),
		CPU:        cpuModel(),
		Cores:      runtime.NumCPU(),
		Kernel:     kernel(),
		GoVersion:  runtime.Version(),
		LoadBefore: loadAvg(),
		Commit:     gitDescribe(),
		Options: map[string]string{
			"concurrency": strconv.Itoa(o.concurrency),
			"reps":        strconv.Itoa(o.reps),
			"rounds":      strconv.Itoa(o.rounds),
			"round_run":   o.roundTime.String(),
			"sweep_reps":  strconv.Itoa(o.sweepReps),
			"warmup":      o.warmup.String(),
			"run":         o.runTime.String(),
			"sweep_run":   o.sweepTime.String(),
		},
	}
}
