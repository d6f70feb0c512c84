package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/credbroker/agent/bench/loadgen"
)

// results is everything one suite run measured; it is written as
// results.json and rendered as docs/benchmarks.md.
type results struct {
	Date       time.Time         `json:"date"`
	CPU        string            `json:"cpu"`
	Cores      int               `json:"cores"`
	Kernel     string            `json:"kernel"`
	GoVersion  string            `json:"go_version"`
	Commit     string            `json:"commit"`
	LoadBefore string            `json:"loadavg_before"`
	LoadAfter  string            `json:"loadavg_after"`
	Options    map[string]string `json:"options"`
	Elapsed    time.Duration     `json:"elapsed_ns"`

	BodyBytes int `json:"body_bytes"`
	// Headline is the keep-alive cache-hit ratio the goals judge: a few
	// pods, per-pod limits lifted, interleaved rounds.
	Headline   *pair           `json:"headline,omitempty"`
	Pairs      []pair          `json:"closed_loop"`
	FloorPeak  float64         `json:"floor_peak"`
	Sweep      []sweepPoint    `json:"sweep"`
	Cold       []coldResult    `json:"cold_start"`
	Concurrent concResult      `json:"concurrent_first"`
	Memory     []memSample     `json:"memory"`
	Upstream   upstreamWindow  `json:"upstream"`
	Profiles   []profileResult `json:"profiles"`
	HeapTop    string          `json:"heap_top"`
	// AgentDefaults are the agent's flag defaults, from its help text.
	AgentDefaults map[string]string `json:"agent_defaults"`
	// GCPBodyBytes is the size of the agent's GCE metadata token answer,
	// which the GCP floor answers too.
	GCPBodyBytes int `json:"gcp_body_bytes,omitempty"`
}

func gitDescribe() string {
	out, err := exec.Command("git", "describe", "--tags", "--always", "--dirty").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// Goals from the benchmark issue.
const (
	goalThroughputRatio = 0.7
	goalHitRatio        = 0.95
	goalP99Ratio        = 2.0
	goalHeapPerPod      = 3072.0
	goalRSS250          = 27 << 20
)

// profileResult is one CPU profile of the agent under load.
type profileResult struct {
	Mode       loadgen.Mode `json:"mode"`
	Throughput float64      `json:"throughput"`
	Top        string       `json:"top"`
	Ours       string       `json:"ours"`
}

type goal struct {
	name, target, measured string
	met                    bool
	known                  bool
}

func (r *results) goals() []goal {
	var gs []goal
	if h := r.Headline; h != nil && len(h.Ratios) > 0 {
		m := median(h.Ratios)
		gs = append(gs, goal{"Cache-hit throughput (" + h.Name + ", per-pod limits lifted)", fmt.Sprintf("≥ %.2f× floor", goalHitRatio),
			fmt.Sprintf("%.3f× (median of %d interleaved rounds; %s)", m, len(h.Ratios), spread(h.Ratios)), m >= goalHitRatio, true})
	}
	if len(r.Pairs) > 0 && r.Pairs[0].Agent != nil && r.Pairs[0].Floor != nil {
		p := r.Pairs[0]
		ratio := p.Agent.Throughput / p.Floor.Throughput
		gs = append(gs, goal{"Cache-hit throughput (" + p.Name + ")", fmt.Sprintf("≥ %.1f× floor", goalThroughputRatio),
			fmt.Sprintf("%.2f× (%.0f vs %.0f req/s)", ratio, p.Agent.Throughput, p.Floor.Throughput), ratio >= goalThroughputRatio, true})
	}
	if pt := r.halfPoint(); pt != nil {
		ratio := float64(pt.Agent.Latency.P99) / float64(pt.Floor.Latency.P99)
		gs = append(gs, goal{fmt.Sprintf("p99 at half the floor's peak (%.0f req/s)", pt.Rate), fmt.Sprintf("≤ %.0f× floor", goalP99Ratio),
			fmt.Sprintf("%.2f× (%s vs %s)", ratio, ms(pt.Agent.Latency.P99), ms(pt.Floor.Latency.P99)), ratio <= goalP99Ratio, true})
	}
	if c := r.Concurrent; c.Requests > 0 {
		one := c.TokenRequests == 1 && c.STSCalls == 1 && c.STSPodCalls == 1
		gs = append(gs, goal{fmt.Sprintf("Upstream calls for %d simultaneous first requests", c.Requests), "exactly 1",
			fmt.Sprintf("%.0f TokenRequest, %.0f STS call (STS counted %d); %d of %d answered 200", c.TokenRequests, c.STSCalls, c.STSPodCalls, c.OK, c.Requests), one, true})
	}
	if per, ok := r.heapPerPod(); ok {
		gs = append(gs, goal{"Agent heap per indexed and cached pod", "≤ 3 KiB",
			fmt.Sprintf("%.0f bytes", per), per <= goalHeapPerPod, true})
	}
	for _, m := range r.Memory {
		if m.Pods == 250 && m.RSS > 0 {
			gs = append(gs, goal{"Agent RSS with 250 pods", "≤ 27 MiB",
				fmt.Sprintf("%.1f MiB", mib(m.RSS)), m.RSS <= goalRSS250, true})
		}
	}
	return gs
}

// halfPoint is the sweep point at half the floor's peak.
func (r *results) halfPoint() *sweepPoint {
	for i := range r.Sweep {
		p := &r.Sweep[i]
		if p.Fraction == 0.5 && p.Agent != nil && p.Floor != nil && p.Floor.Latency.P99 > 0 {
			return p
		}
	}
	return nil
}

// heapPerPod is the heap growth per pod between the smallest and the
// largest memory sample.
func (r *results) heapPerPod() (float64, bool) {
	if len(r.Memory) < 2 {
		return 0, false
	}
	lo, hi := r.Memory[0], r.Memory[len(r.Memory)-1]
	if hi.Cached <= lo.Cached {
		return 0, false
	}
	return float64(hi.HeapAlloc-lo.HeapAlloc) / float64(hi.Cached-lo.Cached), true
}

// spread describes xs by its middle half and its extremes.
func spread(xs []float64) string {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	return fmt.Sprintf("middle half %.3f–%.3f, all %.3f–%.3f", s[n/4], s[(3*n-1)/4], s[0], s[n-1])
}

func minMax(xs []float64) (lo, hi float64) {
	for i, x := range xs {
		if i == 0 || x < lo {
			lo = x
		}
		if i == 0 || x > hi {
			hi = x
		}
	}
	return lo, hi
}

func ms(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= 100*time.Millisecond:
		return fmt.Sprintf("%.0f ms", float64(d)/1e6)
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	}
}

func yes(b bool) string {
	if b {
		return "**met**"
	}
	return "**not met**"
}

func renderMarkdown(o options, r *results) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# Benchmarks\n\n")
	w("Written by `make bench` (bench/cmd/bench) on %s UTC, agent at `%s`; the suite took %s.\n",
		r.Date.Format("2006-01-02 15:04"), r.Commit, r.Elapsed.Round(time.Second))
	w("Machine: %s, %d cores, Linux %s, %s; load average %s before and %s after the run.\n",
		r.CPU, r.Cores, r.Kernel, r.GoVersion, r.LoadBefore, r.LoadAfter)
	w("Raw figures: `bench/out/results.json` of the run (not committed). Rerun with `sudo make bench`.\n\n")

	w("## Goals\n\n| goal | target | measured | |\n|---|---|---|---|\n")
	for _, g := range r.goals() {
		w("| %s | %s | %s | %s |\n", g.name, g.target, g.measured, yes(g.met))
	}
	w("\n")

	if o.before != nil {
		renderBefore(w, o.before, r)
	}

	if len(r.Sweep) > 0 {
		rel, err := filepath.Rel(filepath.Dir(o.doc), o.png)
		if err != nil {
			rel = o.png
		}
		w("## Latency against offered load\n\n![Latency percentiles against offered load, agent (solid) beside floor (dashed)](%s)\n\n", filepath.ToSlash(rel))
		w("Each point pools %s slices of %s per server at a fixed offered rate (fractions of the floor's closed-loop peak of %.0f req/s), "+
			"the slices alternating between agent and floor so that a neighbour's burst on this shared machine lands on both alike; "+
			"keep-alive connections from %d pods, at most 256 requests in flight. Latency counts from when a request was due, "+
			"so a server that falls behind shows its queue.\n\n", r.Options["sweep_reps"], r.Options["sweep_run"], r.FloorPeak, r.Pairs[0].Pods)
		w("| offered req/s | agent got | agent p50 | agent p99 | agent p99.9 | floor got | floor p50 | floor p99 | floor p99.9 | p99 agent/floor |\n")
		w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, p := range r.Sweep {
			if p.Agent == nil || p.Floor == nil {
				continue
			}
			a, f := p.Agent, p.Floor
			w("| %.0f (%.0f%%) | %.0f | %s | %s | %s | %.0f | %s | %s | %s | %.2f |\n", p.Rate, p.Fraction*100,
				a.Throughput, ms(a.Latency.P50), ms(a.Latency.P99), ms(a.Latency.P999),
				f.Throughput, ms(f.Latency.P50), ms(f.Latency.P99), ms(f.Latency.P999),
				float64(a.Latency.P99)/float64(max(f.Latency.P99, 1)))
		}
		w("\n")
	}

	w("## Cache-hit throughput, closed loop\n\n")
	w("%s requests in flight, each run %s after %s of warm-up; each server ran %s times, alternating with the other, "+
		"and its best run is shown (all runs' throughput in the last column). *newconn* opens a connection per request "+
		"and asks the server to close it, as an SDK without a connection pool does.\n\n",
		r.Options["concurrency"], r.Options["run"], r.Options["warmup"], r.Options["reps"])
	w("| scenario | agent req/s | floor req/s | agent/floor | agent p50 / p99 / p99.9 | floor p50 / p99 / p99.9 | p99 agent/floor | server CPU µs/req agent / floor | allocs/req agent / floor | generator CPU | errors | all runs agent; floor |\n")
	w("|---|---:|---:|---:|---|---|---:|---|---|---:|---|---|\n")
	pairs := r.Pairs
	if r.Headline != nil {
		pairs = append([]pair{*r.Headline}, pairs...)
	}
	for _, p := range pairs {
		a, f := p.Agent, p.Floor
		if a == nil || f == nil {
			continue
		}
		w("| %s | %.0f | %.0f | %.2f | %s / %s / %s | %s / %s / %s | %.2f | %.0f / %.0f | %.1f / %.1f | %.2f cores | %s; %s | %s; %s |\n",
			p.Name, a.Throughput, f.Throughput, a.Throughput/f.Throughput,
			ms(a.Latency.P50), ms(a.Latency.P99), ms(a.Latency.P999),
			ms(f.Latency.P50), ms(f.Latency.P99), ms(f.Latency.P999),
			float64(a.Latency.P99)/float64(max(f.Latency.P99, 1)),
			cpuPerReq(a), cpuPerReq(f), a.AllocsPerReq, f.AllocsPerReq,
			a.ClientCPU.Seconds()/a.Elapsed.Seconds(),
			errText(a), errText(f), joinRates(p.AgentRuns), joinRates(p.FloorRuns))
	}
	if h := r.Headline; h != nil && len(h.Ratios) > 0 {
		w("\nThe first row is the headline: the agent's pods all cached, load from %d of them, per-pod request and connection limits "+
			"lifted, %d rounds of one agent run and one floor run back to back (the order alternating), each %s after %s of warm-up. "+
			"Agent/floor by round: %s; median **%.3f**.\n", h.Pods, len(h.Ratios), r.Options["round_run"], r.Options["warmup"], joinRatios(h.Ratios), median(h.Ratios))
	}
	if p := r.Pairs[0]; p.Agent != nil && p.Floor != nil && p.Floor.OK > 0 && p.Agent.OK > 0 {
		a, f := cpuPerReq(p.Agent), cpuPerReq(p.Floor)
		w("\nPer cache hit (%s), the agent used %.0f µs of CPU and the floor %.0f µs: the agent's own work costs about %.0f µs "+
			"(%.0f%%) on top of what net/http and the kernel cost any server.\n", p.Name, a, f, a-f, 100*(a-f)/f)
	}
	w("\nThe generator runs on the same 2 cores as the server it measures: *generator CPU* is how much of them it used " +
		"during the agent's run, so the servers had what was left. Absolute figures are therefore lower than the servers " +
		"could do alone; the agent/floor ratios are what carries over to other machines.\n\n")

	if len(r.Cold) > 0 {
		c0 := r.Cold[0]
		w("## Cold start\n\n")
		w("The agent is restarted with %d pods on the node and nothing cached, STS answering every call after %s. "+
			"Every pod starts requesting the moment the agent process starts, retrying 100 ms after a refused "+
			"connection and 100 ms after an answer other than 200 (SDKs wait about 1 s). The first row keeps the agent's "+
			"default rate limits; the second lifts its upstream fetch limit (--upstream-qps, --upstream-burst), the third also "+
			"its Kubernetes client limit (--kube-api-qps, --kube-api-burst), to show what bounds each. The agent prefetches "+
			"the node's pods before it binds its listener (--startup-prefetch-wait %s), so early requests see a refused "+
			"connection rather than a slow answer.\n\n", c0.Pods, c0.STSLatency, r.AgentDefaults["startup-prefetch-wait"])
		w("| agent limits | ready (/readyz 200) | every pod served once | first request answered 200 | first-request latency p50 / p90 / p99 / max | refused connects | retries | TokenRequests | STS calls |\n")
		w("|---|---:|---:|---:|---|---:|---:|---:|---:|\n")
		for _, c := range r.Cold {
			l := c.FirstLatency
			w("| %s | %s | %s | %d of %d | %s / %s / %s / %s | %d | %d | %.0f | %d |\n", c.Limits, ms(c.Ready), ms(c.AllServed), c.FirstOK, c.Pods,
				ms(l.P50), ms(l.P90), ms(l.P99), ms(l.Max), c.Refused, c.Retries, c.TokenRequests, c.STSCalls)
		}
		w("\nFirst-request latency runs from a pod's first request that reached the agent to its first 200, retries included. " +
			"Times are from the agent process's start.")
		if last := r.Cold[len(r.Cold)-1]; last.AllServed > 0 {
			w(" With no rate limit binding, %d fetches of at least %s each took %s: about %.1f fetches in flight on average, "+
				"which is what bounds a restart once the limits are out of the way.", last.Pods, last.STSLatency, ms(last.AllServed),
				float64(last.Pods)*last.STSLatency.Seconds()/last.AllServed.Seconds())
		}
		w("\n\n")
	}

	if cc := r.Concurrent; cc.Requests > 0 {
		w("## Simultaneous first requests\n\n")
		w("%d requests from one new pod, sent at once before the pod exists in the API (the agent holds them until its "+
			"informer sees the pod), STS answering after %s.\n\n", cc.Requests, cc.STSLatency)
		w("| answered 200 | outcomes | TokenRequests (agent metric) | STS calls (agent metric) | STS calls for this pod (counted by STS) |\n|---:|---|---:|---:|---:|\n")
		w("| %d of %d | %s | %.0f | %.0f | %d |\n\n", cc.OK, cc.Requests, intOutcomes(cc.Outcomes), cc.TokenRequests, cc.STSCalls, cc.STSPodCalls)
	}

	if len(r.Memory) > 0 {
		w("## Memory\n\n")
		w("Pods are created on the integration control plane (kube-apiserver + etcd) with `spec.nodeName` set to the agent's node "+
			"and their IP in the status, as a kubelet would; the agent indexes them through its informer and prefetches their "+
			"credentials. The first %d have network namespaces and serve the load scenarios; the rest exist only in the API. "+
			"Measured after a forced GC (`/debug/pprof/heap?gc=1&debug=1`, the text form, which allocates no gzip writer in the agent after the collection), from the agent's own `/metrics`.\n\n", r.Pairs[len(r.Pairs)-1].Pods)
		w("| pods on the node | credentials cached | Go heap (alloc) | Go heap (in use spans) | RSS |\n|---:|---:|---:|---:|---:|\n")
		for _, m := range r.Memory {
			w("| %d | %d | %.1f MiB | %.1f MiB | %.1f MiB |\n", m.Pods, m.Cached, mib(m.HeapAlloc), mib(m.HeapInuse), mib(m.RSS))
		}
		if per, ok := r.heapPerPod(); ok {
			lo, hi := r.Memory[0], r.Memory[len(r.Memory)-1]
			w("\nPer pod, from %d to %d cached: **%.0f bytes of heap** and %.0f bytes of RSS.\n\n", lo.Cached, hi.Cached,
				per, float64(hi.RSS-lo.RSS)/float64(hi.Cached-lo.Cached))
		}
	}

	if r.HeapTop != "" {
		w("Largest holders of the agent's live heap with %d pods (`go tool pprof -sample_index=inuse_space -top`):\n\n```\n%s\n```\n\n",
			r.Memory[len(r.Memory)-1].Pods, r.HeapTop)
	}

	if u := r.Upstream; u.Window > 0 {
		w("## Upstream calls in steady state\n\n")
		w("Counted while the agent served the closed-loop and fixed-rate runs above from cache: %d pods, %d ServiceAccounts, "+
			"%.0f credential requests in %s.\n\n", u.Pods, u.ServiceAccounts, u.Requests, u.Window.Round(time.Second))
		w("| call | counted | per pod per hour |\n|---|---:|---:|\n")
		hours := u.Window.Hours()
		for _, k := range []string{"kubernetes_token", "kubernetes_serviceaccount", "aws"} {
			w("| agent metric `credbroker_upstream_calls_total{upstream=%q}` | %.0f | %.2f |\n", k, u.Agent[k], u.Agent[k]/float64(u.Pods)/hours)
		}
		for _, k := range []string{"TokenRequest (create serviceaccounts/token)", "GET serviceaccounts", "LIST pods", "WATCH pods (ended)"} {
			w("| API server `apiserver_request_total`: %s | %.0f | %.2f |\n", k, u.APIServer[k], u.APIServer[k]/float64(u.Pods)/hours)
		}
		w("| STS AssumeRoleWithWebIdentity (counted by STS) | %d | %.2f |\n", u.STSCalls, float64(u.STSCalls)/float64(u.Pods)/hours)
		w("\nPod watches the agent holds open (the API server's count at the end, less the ones it held before any agent ran): %.0f. The window is far shorter than a credential's refresh interval, so it shows "+
			"the calls that do not depend on refreshes; [upstream-cost.md](upstream-cost.md) adds the refreshes and scales "+
			"both to a 5,000-node cluster.\n\n", u.Watches)
	}

	if len(r.Profiles) > 0 {
		w("## Where the agent's CPU goes\n\n")
		for _, p := range r.Profiles {
			w("CPU profile of the agent (`--enable-pprof`, 5 s) during a closed %s run with %s in flight (%.0f req/s), "+
				"its own code by cumulative time (flat, flat%%, sum%%, cum, cum%%); the rest is net/http, the runtime and the kernel:\n\n```\n%s\n```\n\n",
				p.Mode, r.Options["concurrency"], p.Throughput, p.Ours)
		}
		w("<details><summary>Hottest functions overall (%s)</summary>\n\n```\n%s\n```\n\n</details>\n\n", r.Profiles[0].Mode, r.Profiles[0].Top)
	}

	w("## Method\n\n")
	w("- **Servers.** The agent (`bin/agent serve`, log level warn) listens on %s and the floor (`bench/cmd/floor`: net/http "+
		"returning a fixed credentials JSON of the agent's answer size, %d bytes, with the same kind of server timeouts) on %s. "+
		"Both addresses sit on `lo`, so both are reached over the same veth path.\n", agentAddr, r.BodyBytes, floorAddr)
	if r.GCPBodyBytes > 0 {
		w("- **GCP row.** The same pods GET `%s` with `Metadata-Flavor: Google`, as Google's clients do: each pod's "+
			"ServiceAccount has no Google service account, so the agent serves its federated principal's token "+
			"(integration/googlests as Google STS, one token per pod fetched before the run, cache hits only during it). "+
			"A second floor on %s answers a body of the same size, %d bytes.\n", gcpTokenPath, floorGCPAddr, r.GCPBodyBytes)
	}
	w("- **Pods.** Each simulated pod is a network namespace (integration/netns) with its own address from 198.18.0.0/15, " +
		"joined to the host by a veth pair, and a pod object on the control plane with that address. " +
		"The generator opens every connection inside the pod's namespace (setns on a locked OS thread, then dial), " +
		"so the agent sees the pod's address and resolves it as it would in a cluster.\n")
	w("- **Generator** (`bench/loadgen`, also `bench/cmd/loadgen`): request *i* goes to pod *i mod N*; keep-alive runs keep " +
		"connections per pod, newconn runs dial per request. Closed loop: a fixed number of requests in flight. Fixed rate: " +
		"requests released on schedule, latency counted from the due time. Percentiles are exact (every sample sorted). " +
		"Only 200 answers are timed; other outcomes are counted by status.\n")
	w("- **Upstreams.** kube-apiserver and etcd built from their Go modules (integration/k8sbin); STS is integration/oidcsts, " +
		"which verifies every token against the API server's keys and counts calls. The agent runs with --upstream-qps 1000 " +
		"while pods are set up, and with its defaults in the cold-start scenario.\n")
	w("- **Answer size.** integration/oidcsts issues session tokens shorter than AWS's, so answers here are %d bytes; "+
		"AWS session tokens typically run from several hundred to over a thousand characters. The agent caches one rendered "+
		"answer per pod, so with AWS the heap per pod grows by the difference, and both servers write a little more per request.\n", r.BodyBytes)
	w("- **Allocations per request** come from each server's own cumulative heap counters (the agent's `/metrics`, the floor's " +
		"`/stats`) over the whole run, divided by the requests it handled. **Server CPU** is the process's user+system time from " +
		"`/proc/PID/stat` over the measured window, divided by the requests answered in it.\n")
	return b.String()
}

func cpuPerReq(r *measured) float64 {
	if r.OK == 0 {
		return 0
	}
	return float64(r.ServerCPU.Microseconds()) / float64(r.OK)
}

func errText(r *measured) string {
	if n := r.Sent - r.OK; n > 0 {
		return fmt.Sprintf("%d (%s)", n, outcomes(r.Outcomes))
	}
	return "0"
}

func joinRates(v []float64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf("%.0f", x)
	}
	return strings.Join(parts, ", ")
}

func intOutcomes(m map[string]int) string {
	conv := make(map[string]int64, len(m))
	for k, v := range m {
		conv[k] = int64(v)
	}
	return outcomes(conv)
}

// renderBefore sets the goals' figures of an earlier run (another build of
// the agent, on the same machine) beside this run's. Each run's ratios are
// against the floor measured in that run.
func renderBefore(w func(string, ...any), b, r *results) {
	w("## Before and after\n\n")
	w("The same figures from an earlier run, agent at `%s` (%s UTC), beside this run's; throughput is a ratio to the floor "+
		"measured in the same run, so the two runs' machine load cancels out.\n\n", b.Commit, b.Date.Format("2006-01-02 15:04"))
	w("| figure | before (`%s`) | after (`%s`) |\n|---|---|---|\n", b.Commit, r.Commit)
	headline := func(x *results) string {
		h := x.Headline
		if h == nil || len(h.Ratios) == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.3f× (%d rounds; %s)", median(h.Ratios), len(h.Ratios), spread(h.Ratios))
	}
	w("| keep-alive cache hits, 40 pods, agent/floor (median of rounds) | %s | %s |\n", headline(b), headline(r))
	allocs := func(x *results) string {
		if x.Headline == nil || x.Headline.Agent == nil {
			return "n/a"
		}
		return fmt.Sprintf("%.1f (floor %.1f)", x.Headline.Agent.AllocsPerReq, x.Headline.Floor.AllocsPerReq)
	}
	w("| server allocations per request, all of net/http included | %s | %s |\n", allocs(b), allocs(r))
	cpu := func(x *results) string {
		if x.Headline == nil || x.Headline.Agent == nil {
			return "n/a"
		}
		return fmt.Sprintf("%.1f (floor %.1f)", cpuPerReq(x.Headline.Agent), cpuPerReq(x.Headline.Floor))
	}
	w("| server CPU µs per request (best round) | %s | %s |\n", cpu(b), cpu(r))
	heap := func(x *results) string {
		per, ok := x.heapPerPod()
		if !ok {
			return "n/a"
		}
		lo, hi := x.Memory[0], x.Memory[len(x.Memory)-1]
		return fmt.Sprintf("%.0f bytes (%d → %d pods)", per, lo.Cached, hi.Cached)
	}
	w("| heap per indexed and cached pod | %s | %s |\n", heap(b), heap(r))
	rss := func(x *results) string {
		for _, m := range x.Memory {
			if m.Pods == 250 {
				return fmt.Sprintf("%.1f MiB (anon %.1f, file %.1f)", mib(m.RSS), mib(m.RSSAnon), mib(m.RSSFile))
			}
		}
		return "n/a"
	}
	w("| RSS with 250 pods | %s | %s |\n\n", rss(b), rss(r))
}
