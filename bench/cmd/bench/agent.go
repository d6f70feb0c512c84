package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/credbroker/agent/integration/harness"
)

// agentProc is one run of bin/agent serve.
type agentProc struct {
	proc       *harness.Process
	started    time.Time
	probeURL   string
	metricsURL string
	http       *http.Client
}

// agentOptions are the flags that differ between scenarios.
type agentOptions struct {
	upstreamQPS   float64 // 0: the agent's default
	upstreamBurst int     // 0: the agent's default
	cacheSize     int
}

func (e *env) startAgent(ctx context.Context, o agentOptions) (*agentProc, error) {
	probePort, err := harness.FreePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	metricsPort, err := harness.FreePort("127.0.0.1")
	if err != nil {
		return nil, err
	}
	args := []string{"serve",
		"--node-name", nodeName,
		"--kubeconfig", e.agentKubeconfig,
		"--listen", agentAddr,
		"--probe-listen", "127.0.0.1:" + strconv.Itoa(probePort),
		"--metrics-listen", "127.0.0.1:" + strconv.Itoa(metricsPort),
		"--sts-endpoint", e.sts.URL(),
		"--sts-region", "us-east-1",
		"--log-level", "warn",
		"--enable-pprof",
	}
	if o.cacheSize > 0 {
		args = append(args, "--cache-size", strconv.Itoa(o.cacheSize))
	}
	if o.upstreamQPS > 0 {
		args = append(args, "--upstream-qps", strconv.FormatFloat(o.upstreamQPS, 'f', -1, 64))
	}
	if o.upstreamBurst > 0 {
		args = append(args, "--upstream-burst", strconv.Itoa(o.upstreamBurst))
	}
	a := &agentProc{
		started:    time.Now(),
		probeURL:   fmt.Sprintf("http://127.0.0.1:%d", probePort),
		metricsURL: fmt.Sprintf("http://127.0.0.1:%d", metricsPort),
		http:       &http.Client{Timeout: 40 * time.Second},
	}
	a.proc, err = harness.StartProcess("agent", filepath.Join(e.dir, "logs/agent.log"), os.Environ(), e.agentBin, args...)
	if err != nil {
		return nil, err
	}
	return a, nil
}

func (a *agentProc) pid() int { return a.proc.Cmd.Process.Pid }

// waitReady polls /readyz until it answers 200.
func (a *agentProc) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.probeURL+"/readyz", nil)
		if resp, err := a.http.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-a.proc.Done():
			return fmt.Errorf("agent exited before it was ready; log tail:\n%s", a.proc.LogTail(20))
		case <-ctx.Done():
			return fmt.Errorf("agent not ready: %w; log tail:\n%s", ctx.Err(), a.proc.LogTail(20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

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
		case <-a.proc.Done():
			return fmt.Errorf("agent exited; log tail:\n%s", a.proc.LogTail(20))
		case <-ctx.Done():
			return fmt.Errorf("agent caches %.0f of %d pods: %w", have, n, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (a *agentProc) metrics(ctx context.Context) (metricSet, error) {
	return scrape(ctx, a.http, a.metricsURL+"/metrics", "")
}

// memory forces a garbage collection (pprof's heap endpoint with gc=1 runs
// one before writing the profile) and then reads the heap in use and the
// resident set size.
func (a *agentProc) memory(ctx context.Context) (memSample, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.metricsURL+"/debug/pprof/heap?gc=1", nil)
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
		s.RSS, _ = vmRSS(a.pid())
	}
	return s, nil
}

// profile fetches a CPU profile of d from the agent.
func (a *agentProc) profile(ctx context.Context, d time.Duration, path string) error {
	url := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", a.metricsURL, int(d.Seconds()))
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := a.http.Do(req)
	if err != nil {
		return fmt.Errorf("fetching CPU profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetching CPU profile: %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("writing CPU profile: %w", err)
	}
	return f.Close()
}

func (a *agentProc) stop() { a.proc.Stop(10 * time.Second) }

type memSample struct {
	Pods      int   `json:"pods"`
	Cached    int   `json:"cached"`
	HeapAlloc int64 `json:"heap_alloc_bytes"`
	HeapInuse int64 `json:"heap_inuse_bytes"`
	RSS       int64 `json:"rss_bytes"`
}

func vmRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS line")
}

// metricSet holds one scrape of a Prometheus text exposition: series name
// with its label set as written, and value.
type metricSet map[string]float64

// scrape reads a text exposition. bearer, when set, authenticates.
func scrape(ctx context.Context, c *http.Client, url, bearer string) (metricSet, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scraping %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scraping %s: %s", url, resp.Status)
	}
	m := metricSet{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}

// get sums every series of name whose labels include all of want, each
// written as name="value".
func (m metricSet) get(name string, want ...string) float64 {
	var sum float64
	for series, v := range m {
		base, labels, _ := strings.Cut(series, "{")
		if base != name {
			continue
		}
		ok := true
		for _, w := range want {
			// Anchored at a label boundary: resource="pods" must not
			// match subresource="pods".
			if !strings.HasPrefix(labels, w) && !strings.Contains(labels, ","+w) {
				ok = false
				break
			}
		}
		if ok {
			sum += v
		}
	}
	return sum
}

// delta is the change of a counter between two scrapes.
func delta(before, after metricSet, name string, want ...string) float64 {
	return after.get(name, want...) - before.get(name, want...)
}
