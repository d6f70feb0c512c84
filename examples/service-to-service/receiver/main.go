// Command receiver is the receiving side of the service-to-service example
// (docs/service-to-service.md): an HTTP service that accepts only callers
// presenting a ServiceAccount token minted for its audience, by an allowed
// ServiceAccount, and answers with who they are.
//
// In a pod it reads the API server's discovery and key set with its own
// ServiceAccount token (rest.InClusterConfig):
//
//	receiver --audience=orders.shop.svc --allow=system:serviceaccount:shop:frontend
//
// Outside a cluster, name the API server and credentials, or an issuer whose
// discovery is public:
//
//	receiver --api-server=https://127.0.0.1:6443 --token-file=t --ca-file=ca.crt ...
//	receiver --issuer=https://oidc.example/cluster-1 ...
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/rest"

	"github.com/credbroker/agent/pkg/verify"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "receiver:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		listen      = flag.String("listen", ":8080", "address to serve on")
		issuer      = flag.String("issuer", "", "issuer URL for public OIDC discovery (instead of the API server)")
		apiServer   = flag.String("api-server", "", "API server URL (default: in-cluster)")
		tokenFile   = flag.String("token-file", "", "bearer token file for --api-server")
		caFile      = flag.String("ca-file", "", "CA bundle for --api-server")
		tokenReview = flag.Bool("token-review", false, "also ask the API server's TokenReview (rejects tokens of deleted pods)")
		audiences   listFlag
		subjects    listFlag
	)
	flag.Var(&audiences, "audience", "accepted audience (repeatable; required)")
	flag.Var(&subjects, "allow", "allowed subject pattern system:serviceaccount:<ns>:<name>, globs allowed (repeatable; required)")
	flag.Parse()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))

	cfg := verify.Config{Audiences: audiences, Subjects: subjects, TokenReview: *tokenReview, Logger: log}
	switch {
	case *issuer != "":
		cfg.Issuer = *issuer
	case *apiServer != "":
		cfg.Kubernetes = &rest.Config{Host: *apiServer, BearerTokenFile: *tokenFile, TLSClientConfig: rest.TLSClientConfig{CAFile: *caFile}}
	default:
		kc, err := rest.InClusterConfig()
		if err != nil {
			return fmt.Errorf("not in a cluster and neither --issuer nor --api-server given: %w", err)
		}
		cfg.Kubernetes = kc
	}
	v, err := verify.New(cfg)
	if err != nil {
		return err
	}

	mux := http.NewServeMux()
	mux.Handle("/", v.Middleware(http.HandlerFunc(whoami)))
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := v.Ready(r.Context()); err != nil {
			http.Error(w, "key set not loaded", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	srv := &http.Server{
		Addr: *listen, Handler: mux,
		ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, IdleTimeout: 60 * time.Second,
		MaxHeaderBytes: 32 << 10,
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Info("serving", "addr", *listen)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// whoami answers with the caller's verified identity.
func whoami(w http.ResponseWriter, r *http.Request) {
	id, _ := verify.FromContext(r.Context())
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"namespace":      id.Namespace,
		"serviceAccount": id.ServiceAccount,
		"pod":            id.PodName,
		"podUID":         id.PodUID,
		"node":           id.NodeName,
		"reviewed":       id.Reviewed,
	})
}
