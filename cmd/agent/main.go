// Command agent is the credbroker node agent. It runs on every node of a
// Kubernetes cluster and serves each pod the cloud credentials of its own
// ServiceAccount over the container-credentials HTTP API.
//
//	agent serve    serve credentials (the DaemonSet's main container)
//	agent init     put the link-local service addresses on the node (the init container)
//	agent audit    report the cluster's identity misconfigurations (read-only)
//	agent webhook  add the SDK variables to new pods (a mutating admission webhook)
//	agent version  print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	if err := raiseCapabilities(); err != nil {
		// Not fatal here: whatever needs a capability fails later with
		// its own error (binding port 80, reading fd tables), and says so.
		fmt.Fprintf(stderr, "agent: %v\n", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var err error
	switch args[0] {
	case "serve":
		err = serve(ctx, args[1:], stderr)
	case "audit":
		// Its own exit codes: 1 means findings, 2 an error (audit.go).
		return runAudit(ctx, args[1:], stdout, stderr)
	case "init":
		err = initNode(ctx, args[1:], stdout, stderr)
	case "webhook":
		err = runWebhook(ctx, args[1:], stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, version)
		return 0
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "agent: unknown command %q\n", args[0])
		usage(stderr)
		return 2
	}
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case err != nil:
		slog.New(slog.NewJSONHandler(stderr, nil)).Error("agent failed", "command", args[0], "error", err)
		return 1
	}
	return 0
}

var errUsage = errors.New("usage error")

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: agent <command> [flags]

commands:
  serve    serve per-pod credentials on the link-local address
  init     put the link-local service addresses on this node
  audit    report a cluster's identity misconfigurations (read-only; docs/audit.md)
  webhook  add the SDK variables to new pods (mutating admission webhook; docs/deploy.md)
  version  print the version

Run "agent <command> -h" for a command's flags.
`)
}

// newFlagSet returns the flag set of the subcommand name, which reports
// errors on stderr (run's exit status says the rest) and whose usage text
// opens with about and then lists the flags.
func newFlagSet(name, about string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("agent "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: agent %s [flags]\n\n%s\n\n", name, about)
		fs.PrintDefaults()
	}
	return fs
}
