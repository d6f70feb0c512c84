package harness

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// DefaultAgentListen is where pods expect the agent. Tests that may run
// next to other users of this machine (another test package, a benchmark,
// the demo) should rather take a free port on 169.254.170.23: the SDKs
// accept any port in AWS_CONTAINER_CREDENTIALS_FULL_URI.
const DefaultAgentListen = "169.254.170.23:80"

// AgentConfig configures StartAgent. Two agents can run at once if they
// listen on different addresses or ports.
type AgentConfig struct {
	// Binary is the agent executable. Default AgentBinary() (bin/agent).
	Binary string
	// Dir receives the log (logs/<Name>.log). Required.
	Dir string
	// Name names the process and its log. Default "agent".
	Name string
	// Kubeconfig is the agent's kubeconfig (see ControlPlane.AgentKubeconfig). Required.
	Kubeconfig string
	// NodeName is the node whose pods the agent serves. Required.
	NodeName string
	// Listen is the credentials API address. Default 169.254.170.23:80.
	// Port 0 means a free port on that host, picked afresh if another
	// process takes it before the agent binds it; Agent.Listen says which.
	Listen string
	// ExtraListen are further credentials API addresses (e.g. the IPv6
	// [fd00:ec2::23]:80), passed in the same --listen flag; port 0 here
	// means Listen's port.
	ExtraListen []string
	// STSEndpoint is the STS URL. Required.
	STSEndpoint string
	// STSRegion defaults to us-east-1.
	STSRegion string
	// LogLevel defaults to debug.
	LogLevel string
	// ExtraArgs are appended to the serve command's flags
	// (e.g. "--allowed-role-arn=arn:aws:iam::*:role/app-*").
	ExtraArgs []string
	// Env is added to the agent's environment, which otherwise holds only
	// PATH: no AWS_* variable of the test process leaks in.
	Env []string
	// ReadyTimeout bounds the wait for /readyz. Default 60s.
	ReadyTimeout time.Duration
}

// Agent is a running bin/agent serve.
type Agent struct {
	Process *Process
	// Listen is the credentials API address; URL is its /v1/credentials URL.
	Listen string
	URL    string
	// ProbeURL serves /healthz and /readyz; MetricsURL serves /metrics.
	ProbeURL   string
	MetricsURL string
	Config     AgentConfig
}

// StartAgent starts the agent and waits until /readyz answers 200. The
// probe and metrics listeners get free ports on 127.0.0.1.
func StartAgent(ctx context.Context, cfg AgentConfig) (*Agent, error) {
	var err error
	if cfg.Binary == "" {
		if cfg.Binary, err = AgentBinary(); err != nil {
			return nil, err
		}
	}
	if cfg.Dir == "" || cfg.Kubeconfig == "" || cfg.NodeName == "" || cfg.STSEndpoint == "" {
		return nil, fmt.Errorf("harness: AgentConfig needs Dir, Kubeconfig, NodeName and STSEndpoint")
	}
	if cfg.Name == "" {
		cfg.Name = "agent"
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultAgentListen
	}
	if cfg.STSRegion == "" {
		cfg.STSRegion = "us-east-1"
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "debug"
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 60 * time.Second
	}
	listenHost, listenPort, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("harness: AgentConfig.Listen %q: %w", cfg.Listen, err)
	}
	hosts := []string{"127.0.0.1", "127.0.0.1"}
	if listenPort == "0" {
		hosts = append(hosts, listenHost)
	}
	a := &Agent{Config: cfg}
	env := append([]string{"PATH=" + os.Getenv("PATH")}, cfg.Env...)
	err = withFreshPorts(hosts, func(ports []int) (*Process, error) {
		probe, metrics := ports[0], ports[1]
		a.Listen = cfg.Listen
		if listenPort == "0" {
			a.Listen = net.JoinHostPort(listenHost, strconv.Itoa(ports[2]))
		}
		a.URL = "http://" + a.Listen + "/v1/credentials"
		_, port, _ := net.SplitHostPort(a.Listen)
		listen := []string{a.Listen}
		for _, l := range cfg.ExtraListen {
			if h, p, err := net.SplitHostPort(l); err == nil && p == "0" {
				l = net.JoinHostPort(h, port)
			}
			listen = append(listen, l)
		}
		a.ProbeURL = "http://127.0.0.1:" + strconv.Itoa(probe)
		a.MetricsURL = "http://127.0.0.1:" + strconv.Itoa(metrics) + "/metrics"
		args := append([]string{"serve",
			"--node-name=" + cfg.NodeName,
			"--kubeconfig=" + cfg.Kubeconfig,
			"--listen=" + strings.Join(listen, ","),
			"--probe-listen=127.0.0.1:" + strconv.Itoa(probe),
			"--metrics-listen=127.0.0.1:" + strconv.Itoa(metrics),
			"--sts-endpoint=" + cfg.STSEndpoint,
			"--sts-region=" + cfg.STSRegion,
			"--log-format=json",
			"--log-level=" + cfg.LogLevel,
			// The harness's pods are network namespaces with no pod cgroup,
			// so the kernel could place no connection in any pod. Tests of
			// attestation pass --attest=netns in ExtraArgs (the last one
			// wins) and put their pods' processes in pod<uid> cgroups.
			"--attest=off",
		}, cfg.ExtraArgs...)
		p, err := StartProcess(cfg.Name, filepath.Join(cfg.Dir, "logs", cfg.Name+".log"), env, cfg.Binary, args...)
		if err != nil {
			return nil, err
		}
		a.Process = p
		if err := a.waitReady(ctx, cfg.ReadyTimeout); err != nil {
			a.Stop()
			return p, err
		}
		return p, nil
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

func (a *Agent) waitReady(ctx context.Context, timeout time.Duration) error {
	return waitFor(ctx, a.Process, timeout, 100*time.Millisecond, func(ctx context.Context) (bool, string) {
		code, err := a.probe(ctx, "/readyz")
		if err != nil {
			return false, err.Error()
		}
		return code == http.StatusOK, strconv.Itoa(code)
	})
}

// Ready reports the status code of /readyz.
func (a *Agent) Ready(ctx context.Context) (int, error) { return a.probe(ctx, "/readyz") }

func (a *Agent) probe(ctx context.Context, path string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.ProbeURL+path, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// Stop sends SIGTERM and waits up to 30 s (the agent drains), then kills.
func (a *Agent) Stop() { a.Process.Stop(30 * time.Second) }

// LogTail returns the last n lines of the agent's log.
func (a *Agent) LogTail(n int) string { return a.Process.LogTail(n) }

// Metrics returns the agent's /metrics text.
func (a *Agent) Metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.MetricsURL, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("fetching metrics: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return "", fmt.Errorf("reading metrics: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("fetching metrics: %s", resp.Status)
	}
	return string(b), nil
}

// MetricSum returns the sum of all samples of the metric name whose labels
// include every pair in labels (a label given as "" must be absent or
// empty). A metric that is not exposed sums to 0.
func MetricSum(text, name string, labels map[string]string) float64 {
	var sum float64
	EachMetricSample(text, func(n string) bool { return n == name }, func(_ string, got map[string]string, v float64) {
		for k, want := range labels {
			if got[k] != want {
				return
			}
		}
		sum += v
	})
	return sum
}

// EachMetricSample calls each with every sample of a Prometheus
// text-format exposition whose metric name keep accepts.
func EachMetricSample(text string, keep func(name string) bool, each func(name string, labels map[string]string, value float64)) {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		series, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		name, lbls, _ := strings.Cut(series, "{")
		if !keep(name) {
			continue
		}
		// A timestamp may follow the value.
		value, _, _ = strings.Cut(strings.TrimSpace(value), " ")
		if f, err := strconv.ParseFloat(value, 64); err == nil {
			each(name, ParseMetricLabels(strings.TrimSuffix(lbls, "}")), f)
		}
	}
}

// ParseMetricLabels parses the label set of a Prometheus text-format line
// (what stands between its braces, the closing one removed), unescaping
// values.
func ParseMetricLabels(s string) map[string]string {
	m := map[string]string{}
	for s != "" {
		k, rest, ok := strings.Cut(s, `="`)
		if !ok {
			break
		}
		var v strings.Builder
		i := 0
		for ; i < len(rest); i++ {
			if rest[i] == '\\' && i+1 < len(rest) {
				i++
				v.WriteByte(rest[i])
				continue
			}
			if rest[i] == '"' {
				break
			}
			v.WriteByte(rest[i])
		}
		m[strings.TrimSpace(k)] = v.String()
		s = strings.TrimPrefix(strings.TrimSpace(rest[min(i+1, len(rest)):]), ",")
	}
	return m
}
