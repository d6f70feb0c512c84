// The loadgen command sends GET requests to a credentials endpoint from many
// network namespaces, one per simulated pod, and reports throughput, latency
// percentiles and outcomes by status. It needs root (setns) when -netns is
// given.
//
//	loadgen -addr 169.254.170.23:80 -netns 'bench-pod-*' -mode keepalive -c 64 -d 10s
//	loadgen -addr 169.254.170.23:80 -netns 'bench-pod-*' -rate 5000 -c 256 -d 10s -json
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/credbroker/agent/bench/loadgen"
)

type headers []string

func (h *headers) String() string     { return strings.Join(*h, ", ") }
func (h *headers) Set(v string) error { *h = append(*h, v); return nil }

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		cfg     loadgen.Config
		hdr     headers
		netns   = flag.String("netns", "", "glob of network namespace names under /var/run/netns, one per simulated pod (empty: this namespace)")
		mode    = flag.String("mode", "keepalive", "keepalive, or newconn for one connection per request")
		asJSON  = flag.Bool("json", false, "print the result as JSON")
		maxPods = flag.Int("pods", 0, "use at most this many of the matched namespaces (0: all)")
	)
	flag.StringVar(&cfg.Addr, "addr", "169.254.170.23:80", "server address, host:port")
	flag.StringVar(&cfg.Path, "path", "/v1/credentials", "request path")
	flag.Var(&hdr, "H", "extra request header line \"Name: value\" (repeatable)")
	flag.IntVar(&cfg.Concurrency, "c", 32, "requests in flight (closed loop), or most in flight (fixed rate)")
	flag.Float64Var(&cfg.Rate, "rate", 0, "offered requests per second; 0 runs a closed loop")
	flag.DurationVar(&cfg.Warmup, "warmup", time.Second, "unrecorded warm-up before the window")
	flag.DurationVar(&cfg.Duration, "d", 10*time.Second, "measured window")
	flag.Int64Var(&cfg.MaxRequests, "max", 5_000_000, "most requests to send, warm-up included")
	flag.DurationVar(&cfg.Timeout, "timeout", 2*time.Second, "per-request timeout")
	flag.IntVar(&cfg.ServerPID, "pid", 0, "server process whose CPU time to report")
	flag.Parse()
	if cfg.Duration > 10*time.Minute {
		return errors.New("-d over 10m: this tool is for bounded runs")
	}

	m, err := loadgen.ParseMode(*mode)
	if err != nil {
		return err
	}
	cfg.Mode = m
	cfg.Header = hdr
	if *netns != "" {
		srcs, err := loadgen.OpenNamespaces(*netns)
		if err != nil {
			return err
		}
		if len(srcs) == 0 {
			return fmt.Errorf("no network namespace matches %q", *netns)
		}
		if *maxPods > 0 && len(srcs) > *maxPods {
			srcs = srcs[:*maxPods]
		}
		for _, s := range srcs {
			cfg.Sources = append(cfg.Sources, s)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := loadgen.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	printResult(res)
	return nil
}

func printResult(r *loadgen.Result) {
	load := "closed loop"
	if r.Rate > 0 {
		load = fmt.Sprintf("offered %.0f/s", r.Rate)
	}
	fmt.Printf("%s, %s, %d in flight, %d sources, %s window\n", r.Mode, load, r.Concurrency, r.Sources, r.Elapsed.Round(time.Millisecond))
	fmt.Printf("throughput  %.0f ok/s (%d sent, %d ok, %d unsent)\n", r.Throughput, r.Sent, r.OK, r.Unsent)
	l := r.Latency
	fmt.Printf("latency     p50 %s  p90 %s  p99 %s  p99.9 %s  max %s\n", us(l.P50), us(l.P90), us(l.P99), us(l.P999), us(l.Max))
	keys := make([]string, 0, len(r.Outcomes))
	for k := range r.Outcomes {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	fmt.Print("outcomes   ")
	for _, k := range keys {
		fmt.Printf(" %s:%d", k, r.Outcomes[k])
	}
	fmt.Println()
	fmt.Printf("cpu         loadgen %.2fs", r.ClientCPU.Seconds())
	if r.ServerCPU > 0 {
		fmt.Printf("  server %.2fs", r.ServerCPU.Seconds())
	}
	fmt.Printf(" over %.2fs\n", r.Elapsed.Seconds())
}

func us(d time.Duration) string { return fmt.Sprintf("%.0fµs", float64(d)/1e3) }
