//go:build integration

// Command scale runs integration/scale at full size (make scale): a few
// hundred agents against one API server holding tens of thousands of pods.
// It prints a table and writes the raw figures as JSON.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/credbroker/agent/integration/scale"
)

func main() {
	var cfg scale.Config
	flag.IntVar(&cfg.Nodes, "nodes", 250, "simulated nodes, one agent each")
	flag.IntVar(&cfg.PodsPerNode, "pods-per-node", 100, "workload pods per node (at most 250)")
	flag.IntVar(&cfg.Namespaces, "namespaces", 50, "workload namespaces")
	flag.IntVar(&cfg.ServiceAccountsPerNamespace, "serviceaccounts-per-namespace", 10, "ServiceAccounts per namespace")
	flag.Float64Var(&cfg.RoleShare, "role-share", 1, "share of ServiceAccounts (and pods) with a role")
	flag.StringVar(&cfg.RBAC, "rbac", "node", "node (node-restricted, as deployed) or broad")
	flag.IntVar(&cfg.StartBatch, "start-batch", 25, "agents started at once at first")
	flag.DurationVar(&cfg.Steady, "steady", 90*time.Second, "steady-state window")
	flag.Float64Var(&cfg.Wave, "wave", 0.1, "share of nodes whose agent is replaced at once in the rollout wave")
	out := flag.String("out", "bench/out/scale.json", "raw results")
	dir := flag.String("dir", "", "working directory (default: a new temporary one, removed at the end)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg.Dir = *dir
	if cfg.Dir == "" {
		d, err := os.MkdirTemp("", "credbroker-scale-")
		if err != nil {
			log.Fatal(err)
		}
		defer os.RemoveAll(d)
		cfg.Dir = d
	}
	cfg.Logf = func(format string, args ...any) { log.Printf(format, args...) }
	res, err := scale.Run(ctx, cfg)
	if err != nil {
		log.Print(err)
		stop()
		os.Exit(1)
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		log.Fatal(err)
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		log.Fatal(err)
	}
	scale.WriteTable(os.Stdout, res)
	fmt.Printf("\nraw results: %s\n", *out)
}
