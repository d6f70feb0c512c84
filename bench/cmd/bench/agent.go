package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/credbroker/agent/integration/harness"
)

// agentProc is one run of bin/agent serve, started by the harness with the
// flags the DaemonSet uses plus the benchmark's.
type agentProc struct {
	*harness.Agent
	started time.Time
	// base is the metrics listener's root, where --enable-pprof serves
	// /debug/pprof.
	base string
	http *http.Client
}

// agentOptions are the flags that differ between scenarios.
type agentOptions struct {
	upstreamQPS   float64 // 0: the agent's default
	upstreamBurst int     // 0: the agent's default
	kubeQPS       float64 // 0: the agent's default
	kubeBurst     int     // 0: the agent's default
	cacheSize     int
	extra         []string // more flags
}

// startAgent starts the agent and returns once /readyz answers 200.
func (e *env) startAgent(ctx context.Context, o agentOptions) (*agentProc, error) {
	// The load generator drives thousands of requests a second from a few
	// pods, far past the per-pod request and connection limits. The guard stays on the hit
	// path (its cost is what is measured) with a limit the load never meets.
	args := []string{"--enable-pprof", "--pod-request-qps=1000000", "--pod-request-burst=1000000", "--pod-max-connections=100000"}
	if o.cacheSize > 0 {
		args = append(args, "--cache-size="+strconv.Itoa(o.cacheSize))
	}
	if o.upstreamQPS > 0 {
		args = append(args, "--upstream-qps="+strconv.FormatFloat(o.upstreamQPS, 'f', -1, 64))
	}
	if o.upstreamBurst > 0 {
		args = append(args, "--upstream-burst="+strconv.Itoa(o.upstreamBurst))
	}
	if o.kubeQPS > 0 {
		args = append(args, "--kube-api-qps="+strconv.FormatFloat(o.kubeQPS, 'f', -1, 64))
	}
	if o.kubeBurst > 0 {
		args = append(args, "--kube-api-burst="+strconv.Itoa(o.kubeBurst))
	}
	// GCP on, federated principals only: the GCP scenario's pods get their
	// tokens on first request, nothing is prefetched for them.
	args = append(args,
		"--gcp-workload-identity-provider="+e.gsts.Provider(),
		"--gcp-project-id="+gcpProjectID,
		"--gcp-sts-endpoint="+e.gsts.URL(),
		"--gcp-iamcredentials-endpoint="+e.gsts.URL())
	args = append(args, e.agentArgs...)
	args = append(args, o.extra...)
	started := time.Now()
	a, err := harness.StartAgent(ctx, harness.AgentConfig{
		Binary:      e.agentBin,
		Dir:         e.dir,
		Kubeconfig:  e.agentKubeconfig,
		NodeName:    nodeName,
		Listen:      agentAddr,
		STSEndpoint: e.sts.URL(),
		// Production level: the hot path must not pay for debug logging.
		LogLevel:  "warn",
		ExtraArgs: args,
		Env:       e.agentEnv,
	})
	if err != nil {
		return nil, err
	}
	return &agentProc{
		Agent:   a,
		started: started,
		base:    strings.TrimSuffix(a.MetricsURL, "/metrics"),
		http:    &http.Client{Timeout: 40 * time.Second},
	}, nil
}

func (a *agentProc) pid() int { return a.Process.Cmd.Process.Pid }

// waitCached waits until the agent holds credentials for at least n pods.
func (a *agentProc) waitCached(ctx context.Context, n int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var have float64
	for {
		m, err := a.metrics(ctx)
		if err == nil {
			have = m.get("credbroker_cached_credentials")
			if have >= float64(n) {
				return nil
			}
		}
		select {
		case <-a.Process.Done():
			return fmt.Errorf("agent exited; log tail:\n%s", a.LogTail(20))
		case <-ctx.Done():
			return fmt.Errorf("agent caches %.0f of %d pods: %w", have, n, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (a *agentProc) metrics(ctx context.Context) (metricSet, error) {
	return scrape(ctx, a.http, a.MetricsURL, "")
}

// memory forces a garbage collection (pprof's heap endpoint with gc=1 runs
// one before writing the profile) and then reads the heap in use and the
// resident set size.
func (a *agentProc) memory(ctx context.Context) (memSample, error) {
	// debug=1 (the text form) forces the GC as the default form does but
	// writes no gzip stream: the default form allocates a gzip writer's
	// megabyte of compressor state in the agent right after the collection,
	// and the sample then counted the probe's own garbage in the heap and
	// RSS.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.base+"/debug/pprof/heap?gc=1&debug=1", nil)
	resp, err := a.http.Do(req)
	if err != nil {
		return memSample{}, fmt.Errorf("forcing a GC in the agent: %w", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	m, err := a.metrics(ctx)
	if err != nil {
		return memSample{}, err
	}
	s := memSample{
		HeapAlloc: int64(m.get("go_memstats_heap_alloc_bytes")),
		HeapInuse: int64(m.get("go_memstats_heap_inuse_bytes")),
		RSS:       int64(m.get("process_resident_memory_bytes")),
		Cached:    int(m.get("credbroker_cached_credentials")),
	}
	if s.RSS == 0 {
		s.RSS, _ = procStatus(a.pid(), "VmRSS")
	}
	// The split says whether a smaller RSS is a matter of the heap's
	// high-water mark (anonymous) or of the binary's pages (file).
	s.RSSAnon, _ = procStatus(a.pid(), "RssAnon")
	s.RSSFile, _ = procStatus(a.pid(), "RssFile")
	s.HeapIdle = int64(m.get("go_memstats_heap_idle_bytes"))
	s.HeapReleased = int64(m.get("go_memstats_heap_released_bytes"))
	s.Sys = int64(m.get("go_memstats_sys_bytes"))
	return s, nil
}

// profile fetches a CPU profile of d from the agent.
func (a *agentProc) profile(ctx context.Context, d time.Duration, path string) error {
	return a.fetch(ctx, fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(d.Seconds())), path)
}

// fetch saves what the metrics listener serves at path (pprof) to file.
func (a *agentProc) fetch(ctx context.Context, urlPath, path string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.base+urlPath, nil)
	resp, err := a.http.Do(req)
	if err != nil {
		return fmt.Errorf("fetching %s: %w", urlPath, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetching %s: %s", urlPath, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return f.Close()
}

func (a *agentProc) stop() { a.Stop() }

type memSample struct {
	Pods      int   `json:"pods"`
	Cached    int   `json:"cached"`
	HeapAlloc int64 `json:"heap_alloc_bytes"`
	HeapInuse int64 `json:"heap_inuse_bytes"`
	RSS       int64 `json:"rss_bytes"`
	// RSSAnon and RSSFile split RSS into anonymous memory and mapped file
	// pages (the binary's text and data).
	RSSAnon      int64 `json:"rss_anon_bytes"`
	RSSFile      int64 `json:"rss_file_bytes"`
	HeapIdle     int64 `json:"heap_idle_bytes"`
	HeapReleased int64 `json:"heap_released_bytes"`
	Sys          int64 `json:"sys_bytes"`
}

// procStatus reads one of the kB figures of /proc/<pid>/status.
func procStatus(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s line in /proc/%d/status", field, pid)
}

// metricSet is one scrape of a Prometheus text exposition.
type metricSet string

// scrape reads a text exposition. bearer, when set, authenticates.
func scrape(ctx context.Context, c *http.Client, url, bearer string) (metricSet, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", fmt.Errorf("scraping %s: %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return "", fmt.Errorf("scraping %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("scraping %s: %s", url, resp.Status)
	}
	return metricSet(b), nil
}

// get sums every series of name whose labels include the pairs given as
// "label", "value", ...
func (m metricSet) get(name string, labelValues ...string) float64 {
	want := make(map[string]string, len(labelValues)/2)
	for i := 0; i+1 < len(labelValues); i += 2 {
		want[labelValues[i]] = labelValues[i+1]
	}
	return harness.MetricSum(string(m), name, want)
}

// delta is the change of a counter between two scrapes.
func delta(before, after metricSet, name string, labelValues ...string) float64 {
	return after.get(name, labelValues...) - before.get(name, labelValues...)
}
