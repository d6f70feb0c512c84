// The floor command serves bench/floor's fixed credentials document until it
// is signalled. It prints "ready" on stdout once it listens, so a driver can
// wait for it without polling.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/credbroker/agent/bench/floor"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := flag.String("listen", "169.254.170.23:8080", "address to listen on")
	size := flag.Int("size", 1200, "response body size in bytes (match the agent's)")
	stats := flag.String("stats-listen", "", "if set, serve GET /stats there: heap allocations so far (objects and bytes)")
	flag.Parse()

	body, err := floor.Body(*size)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", *addr, err)
	}
	// The same server limits a production server would set; none of them
	// costs anything per request.
	srv := &http.Server{
		Handler:           floor.Handler(body),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    8 << 10,
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if *stats != "" {
		if err := serveStats(*stats); err != nil {
			return err
		}
	}
	fmt.Println("ready")
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving: %w", err)
	}
	return nil
}

// serveStats answers with the process's cumulative heap allocations, the
// same counters the agent exports as go_memstats_mallocs_total and
// go_memstats_alloc_bytes_total, so the benchmark can compare allocations
// per request. It runs on its own listener, off the measured path.
func serveStats(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		fmt.Fprintf(w, "%d %d\n", m.Mallocs, m.TotalAlloc)
	})
	go http.Serve(ln, mux)
	return nil
}
