package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/credbroker/agent/pkg/audit"
	"github.com/credbroker/agent/pkg/kube/auditclient"
)

// Exit codes of `agent audit`, for CI: findings at or above --fail-on are
// 1, anything that kept the audit from finishing is 2.
const (
	auditOK       = 0
	auditFindings = 1
	auditError    = 2
)

// auditConfig is everything `agent audit` is told on its command line.
type auditConfig struct {
	kubeconfig, context string
	output              string
	failOn              string
	auditLog            string
	pageSize            int64
	kubeQPS             float64
	kubeBurst           int
	logLevel            string
	allowedRoles        listFlag
	allowedRolesSet     bool
	partitions          listFlag
	partitionsSet       bool
	audit               audit.Config
}

func parseAuditFlags(args []string, stderr io.Writer) (auditConfig, error) {
	var c auditConfig
	fs := newFlagSet("audit", "Reads a cluster (read-only) and reports its identity misconfigurations; docs/audit.md lists the finding IDs.\nExit status: 0 no finding at or above --fail-on, 1 some, 2 error.", stderr)
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "path to a kubeconfig (default: $KUBECONFIG, ~/.kube/config, then the in-cluster config)")
	fs.StringVar(&c.context, "context", "", "kubeconfig context to use (default: its current context)")
	fs.StringVar(&c.audit.Namespace, "namespace", "", "audit only this namespace (default: all)")
	fs.StringVar(&c.audit.Namespace, "n", "", "shorthand for --namespace")
	fs.StringVar(&c.output, "o", "table", "output: table or json")
	fs.StringVar(&c.output, "output", "table", "output: table or json")
	fs.StringVar(&c.failOn, "fail-on", "low", "exit 1 when a finding is at or above this severity: low, medium, high, or none")
	fs.StringVar(&c.auditLog, "audit-log", "", "a Kubernetes audit log (JSON lines): report what each ServiceAccount was granted and did not use")
	fs.Var(&c.allowedRoles, "allowed-role-arn", "the agent's --allowed-role-arn patterns (repeatable); default: read from the agent's DaemonSet")
	fs.Var(&c.partitions, "sts-extra-arn-partitions", "the agent's --sts-extra-arn-partitions (repeatable): role ARNs in them are well formed; default: read from the agent's DaemonSet")
	fs.StringVar(&c.audit.RoleAnnotation, "role-annotation", "", "the agent's --role-annotation (default: from the agent's DaemonSet, else "+audit.DefaultRoleAnnotation+")")
	fs.StringVar(&c.audit.AgentNamespace, "agent-namespace", "credbroker-system", "namespace of the agent's DaemonSet")
	fs.StringVar(&c.audit.AgentDaemonSet, "agent-daemonset", "credbroker-agent", "name of the agent's DaemonSet")
	fs.Int64Var(&c.pageSize, "page-size", auditclient.DefaultPageSize, "objects per list request (memory grows with it)")
	fs.Float64Var(&c.kubeQPS, "kube-api-qps", 20, "client-side QPS limit towards the Kubernetes API")
	fs.IntVar(&c.kubeBurst, "kube-api-burst", 40, "client-side burst towards the Kubernetes API")
	fs.StringVar(&c.logLevel, "log-level", "warn", "debug, info, warn or error (logs go to stderr)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	fs.Visit(func(f *flag.Flag) {
		c.allowedRolesSet = c.allowedRolesSet || f.Name == "allowed-role-arn"
		c.partitionsSet = c.partitionsSet || f.Name == "sts-extra-arn-partitions"
	})
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "agent audit: unexpected arguments %q\n", fs.Args())
		return c, errUsage
	}
	if c.output != "table" && c.output != "json" {
		fmt.Fprintf(stderr, "agent audit: -o %q: want table or json\n", c.output)
		return c, errUsage
	}
	if c.failOn != "none" {
		if _, err := audit.ParseSeverity(c.failOn); err != nil {
			fmt.Fprintf(stderr, "agent audit: --fail-on: %v (or none)\n", err)
			return c, errUsage
		}
	}
	if c.pageSize <= 0 {
		fmt.Fprintf(stderr, "agent audit: --page-size %d must be positive\n", c.pageSize)
		return c, errUsage
	}
	if c.allowedRolesSet {
		// Non-nil, even if empty: the caller has said what the agent allows.
		c.audit.AllowedRoles = append([]string{}, c.allowedRoles...)
	}
	if c.partitionsSet {
		c.audit.ExtraPartitions = append([]string{}, c.partitions...)
	}
	return c, nil
}

// runAudit is `agent audit`; it returns the exit status.
func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseAuditFlags(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return auditOK
	case err != nil:
		return auditError
	}
	log, err := newLogger(stderr, cfg.logLevel, "text")
	if err != nil {
		fmt.Fprintf(stderr, "agent audit: %v\n", err)
		return auditError
	}
	fail := func(err error) int {
		log.Error("audit failed", "error", err)
		return auditError
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = cfg.kubeconfig
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: cfg.context}).ClientConfig()
	if err != nil {
		return fail(fmt.Errorf("loading Kubernetes client config: %w", err))
	}
	rc.QPS, rc.Burst = float32(cfg.kubeQPS), cfg.kubeBurst
	rc.UserAgent = "credbroker-agent-audit/" + version
	client, err := auditclient.NewClient(rc)
	if err != nil {
		return fail(err)
	}
	client.PageSize = cfg.pageSize
	if cfg.auditLog != "" {
		f, err := os.Open(cfg.auditLog)
		if err != nil {
			return fail(fmt.Errorf("opening audit log: %w", err))
		}
		defer f.Close()
		cfg.audit.AuditLog, cfg.audit.AuditLogName = f, cfg.auditLog
	}
	cfg.audit.Logger = log
	// The DaemonSet token check depends on it; unknown, it is run anyway.
	if v, err := client.ServerVersion(ctx); err == nil {
		cfg.audit.ServerVersion = v
	} else {
		log.Warn("API server version unknown", "error", err)
	}
	report, err := audit.Run(ctx, client, cfg.audit)
	if err != nil {
		return fail(err)
	}
	if cfg.output == "json" {
		err = report.WriteJSON(stdout)
	} else {
		err = report.WriteTable(stdout)
	}
	if err != nil {
		return fail(err)
	}
	if cfg.failOn == "none" {
		return auditOK
	}
	threshold, _ := audit.ParseSeverity(cfg.failOn) // checked by parseAuditFlags
	if report.Fails(threshold) {
		return auditFindings
	}
	return auditOK
}
