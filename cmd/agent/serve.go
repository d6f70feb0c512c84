package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"

	"github.com/credbroker/agent/pkg/api"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/kube"
	"github.com/credbroker/agent/pkg/nodetaint"
	"github.com/credbroker/agent/pkg/podresolve"
	"github.com/credbroker/agent/pkg/reuseport"
)

// cloudFlags is one cloud's flags (its own file): their registration and
// checks, whether the cloud is on, and its description for the broker.
// others are the clouds built before it, in the order of
// serveConfig.clouds.
type cloudFlags interface {
	register(fs *flag.FlagSet)
	validate() error
	enabled() bool
	build(ctx context.Context, rc *rest.Config, others []broker.Cloud) (broker.Cloud, error)
	// route is the cloud's wire surface over b, behind a request guard
	// with that surface's rules.
	route(b tracedBroker, grd *guards) (api.Route, error)
}

// clouds lists every cloud's flags. Pod tokens come last: the other
// clouds' audiences are reserved from them.
func (c *serveConfig) clouds() []cloudFlags {
	return []cloudFlags{&c.awsConfig, &c.gcp, &c.azure, &c.podToken}
}

// serveConfig is everything `agent serve` is told on its command line.
type serveConfig struct {
	nodeName      string
	kubeconfig    string
	listen        listFlag
	probeListen   string
	metricsListen string
	enablePprof   bool
	logLevel      string
	logFormat     string
	shutdownGrace time.Duration
	kubeQPS       float64
	kubeBurst     int
	broker        broker.Config
	// awsConfig is embedded, not named, so that its fields read as the
	// serve config's own (c.stsRegion), as they did before it had a file
	// of its own.
	awsConfig
	gcp        gcpConfig
	azure      azureConfig
	podToken   podTokenConfig
	waitForPod time.Duration
	// startupPrefetchWait bounds how long a starting agent prefetches the
	// node's pods before it binds its credential listeners.
	startupPrefetchWait time.Duration
	guard               guardConfig
	// removeStartupTaint is a taint key to remove from the node once the
	// credential listeners serve (pkg/nodetaint); empty: none.
	removeStartupTaint string
	recordEvents       bool
	attest             attestConfig
	nodeRestricted     nodeRestrictMode
	handoff            handoffConfig
}

const defaultListen = "169.254.170.23:80,[fd00:ec2::23]:80"

func parseServeFlags(args []string, stderr io.Writer) (serveConfig, error) {
	var c serveConfig
	fs := flag.NewFlagSet("agent serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name; only its pods are watched (default $NODE_NAME)")
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "path to a kubeconfig; empty means the in-cluster config")
	fs.Var(&c.listen, "listen", "comma-separated host:port addresses to serve credentials on; addresses not configured on the node are skipped (default "+defaultListen+")")
	fs.StringVar(&c.probeListen, "probe-listen", "127.0.0.1:2703", "host:port for /healthz and /readyz")
	fs.StringVar(&c.metricsListen, "metrics-listen", ":2705", "host:port for Prometheus /metrics")
	fs.BoolVar(&c.enablePprof, "enable-pprof", false, "serve /debug/pprof on the metrics listener")
	fs.DurationVar(&c.broker.TokenExpiration, "token-expiration", broker.MinTokenExpiration, "lifetime of the pod-bound ServiceAccount token (the API minimum is 10m)")
	fs.IntVar(&c.broker.PodFetchBurst, "pod-fetch-burst", 10, "credential fetches one pod's requests may cause at once (cache misses); background refreshes are not counted")
	fs.DurationVar(&c.broker.PodFetchInterval, "pod-fetch-interval", 6*time.Second, "after --pod-fetch-burst, one more request-driven fetch per pod per this interval")
	fs.BoolVar(&c.broker.AllowDefaultServiceAccount, "allow-default-service-account", false, "serve pods that run as their namespace's default ServiceAccount")
	fs.IntVar(&c.broker.CacheSize, "cache-size", 4096, "maximum number of credentials cached (one per pod and request)")
	fs.Float64Var(&c.broker.UpstreamQPS, "upstream-qps", 50, "fetches per second (one TokenRequest and one STS call each) across all pods")
	fs.IntVar(&c.broker.UpstreamBurst, "upstream-burst", 100, "burst of fetches above --upstream-qps")
	fs.DurationVar(&c.broker.RequestTimeout, "request-timeout", 5*time.Second, "how long a request waits for credentials not yet cached")
	fs.DurationVar(&c.waitForPod, "wait-for-pod", podresolve.DefaultWaitForPod, "how long a request from an unknown address waits for its pod to appear")
	fs.DurationVar(&c.startupPrefetchWait, "startup-prefetch-wait", 10*time.Second, "at start, how long to prefetch credentials of the node's pods before serving")
	fs.BoolVar(&c.recordEvents, "record-events", true, "record a Warning Event on a pod whose request is refused (rate limited per pod by client-go's spam filter)")
	fs.StringVar(&c.removeStartupTaint, "remove-startup-taint", "", "taint key to remove from this node once credentials are served (the node registers with it, so workloads wait for the agent); needs the RBAC and admission policy in deploy/daemonset/startup-taint")
	fs.Float64Var(&c.kubeQPS, "kube-api-qps", 50, "client-side QPS limit towards the Kubernetes API")
	fs.IntVar(&c.kubeBurst, "kube-api-burst", 100, "client-side burst towards the Kubernetes API")
	fs.DurationVar(&c.shutdownGrace, "shutdown-grace", 20*time.Second, "how long in-flight requests may take to finish after SIGTERM")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "json", "json or text")
	for _, cf := range c.clouds() {
		cf.register(fs)
	}
	c.guard.register(fs)
	c.attest.register(fs)
	c.handoff.register(fs)
	registerNodeRestrict(fs, &c.nodeRestricted)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "agent serve: unexpected arguments %q\n", fs.Args())
		return c, errUsage
	}
	if len(c.listen) == 0 {
		_ = c.listen.Set(defaultListen)
	}
	for _, cf := range c.clouds() {
		if err := cf.validate(); err != nil {
			return c, err
		}
	}
	switch {
	case c.waitForPod >= c.broker.RequestTimeout:
		return c, fmt.Errorf("--wait-for-pod (%s) must be shorter than --request-timeout (%s): a request waits at most --request-timeout in all", c.waitForPod, c.broker.RequestTimeout)
	case c.broker.TokenExpiration < broker.MinTokenExpiration:
		return c, fmt.Errorf("--token-expiration %s is below the API server's minimum of %s", c.broker.TokenExpiration, broker.MinTokenExpiration)
	case c.nodeName == "":
		return c, errors.New("--node-name (or $NODE_NAME) is required")
	}
	if err := c.guard.validate(); err != nil {
		return c, err
	}
	if err := c.attest.validate(); err != nil {
		return c, err
	}
	if err := c.handoff.validate(); err != nil {
		return c, err
	}
	return c, nil
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, err := parseServeFlags(args, stderr)
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, cfg.logLevel, cfg.logFormat)
	if err != nil {
		return err
	}
	if w := cfg.gcp.lifetimeWarning(); w != "" {
		log.Warn(w)
	}
	rc, err := kubeRESTConfig(cfg)
	if err != nil {
		return err
	}
	client, nodeRestricted, err := connectKube(ctx, cfg, rc, log)
	if err != nil {
		return err
	}
	resolver, err := podresolve.New(podresolve.Config{
		Pods: client.Pods(), NodeName: cfg.nodeName, WaitForPod: cfg.waitForPod, Logger: log.With("component", "podresolve"),
		Containers: cfg.attest.mode == attestContainer,
	})
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(nodeRestrictedGauge(nodeRestricted))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "credbroker_pods_indexed", Help: "Live pods on this node indexed by address.",
	}, func() float64 { return float64(resolver.Len()) }))

	bcfg := cfg.broker
	bcfg.ServiceAccounts, bcfg.Resolver = client.ServiceAccounts(), resolver
	for _, cf := range cfg.clouds() {
		if !cf.enabled() {
			continue
		}
		c, err := cf.build(ctx, rc, bcfg.Clouds)
		if err != nil {
			return err
		}
		bcfg.Clouds = append(bcfg.Clouds, c)
	}
	grd, err := newGuards(cfg.guard, reg, log.Handler())
	if err != nil {
		return err
	}
	bcfg.Registerer, bcfg.Logger = reg, grd.brokerLogger()
	att, err := newAttestation(cfg.attest, resolver, reg, slog.New(grd.logs))
	if err != nil {
		return err
	}
	bcfg.Resolver = att.resolver(resolver)
	if cfg.recordEvents {
		// An agent whose RBAC lacks events says so once, not per refusal.
		sink, err := broker.NewQuietEventSink(client.EventSink(), log.With("component", "events"), reg, nil)
		if err != nil {
			return err
		}
		events := record.NewBroadcaster(record.WithContext(ctx))
		events.StartRecordingToSink(sink)
		defer events.Shutdown()
		bcfg.Events = events.NewRecorder(kube.Scheme(), corev1.EventSource{Component: "credbroker-agent", Host: cfg.nodeName})
	}
	brk, err := broker.New(bcfg)
	if err != nil {
		return err
	}
	resolver.AddListener(brk)
	handoffs, err := newHandoffs(cfg.handoff, reg, log)
	if err != nil {
		return err
	}
	if cfg.handoff.enabled() {
		// Until the predecessor's cache is taken: the prefetch then fetches
		// only what it did not bring.
		brk.HoldFetches()
	}

	// Probe and metrics listeners use SO_REUSEPORT like the credential
	// listeners: during a rolling update the old and the new agent run side
	// by side on the node.
	probeLn, err := reuseport.Listen(ctx, "tcp", cfg.probeListen)
	if err != nil {
		return fmt.Errorf("probe listener: %w", err)
	}
	metricsLn, err := reuseport.Listen(ctx, "tcp", cfg.metricsListen)
	if err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}

	var draining, serving atomic.Bool
	ready := func() bool { return !draining.Load() && serving.Load() }
	credHandler, err := surfaces(att.traced(brk), grd, cfg.clouds())
	if err != nil {
		return err
	}
	credServer := newCredentialServer(credHandler, log)
	credServer.ConnContext = att.connContext()
	probeServer := newOpsServer(att.probe(probeHandler(ready, nodeRestricted.detail(cfg.nodeName))))
	metricsMux := http.NewServeMux()
	metricsMux.Handle("/metrics", metricsHandler(reg))
	if cfg.enablePprof {
		metricsMux.HandleFunc("/debug/pprof/", pprof.Index)
		metricsMux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		metricsMux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		metricsMux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	metricsServer := newOpsServer(metricsMux)

	// The informer and the refresher run under their own context: on SIGTERM
	// they must keep working while in-flight requests drain.
	workCtx, stopWork := context.WithCancel(context.Background())
	defer stopWork()
	g, gctx := errgroup.WithContext(workCtx)
	g.Go(func() error { return resolver.Run(gctx) })
	g.Go(func() error { return brk.Run(gctx) })
	g.Go(func() error { return grd.logs.Run(gctx) })
	serveOn := func(srv *http.Server, ln net.Listener) {
		g.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serving on %s: %w", ln.Addr(), err)
			}
			return nil
		})
	}
	serveOn(probeServer, probeLn)
	serveOn(metricsServer, metricsLn)
	log.Info("agent starting", "version", version, "node", cfg.nodeName,
		"probe", probeLn.Addr().String(), "metrics", metricsLn.Addr().String())

	// The credential listeners are bound only once the pod informer has
	// synced and the pods already on the node have been prefetched (or
	// startupPrefetchWait has passed). During a rolling update the old agent
	// keeps answering on the shared SO_REUSEPORT address until then, so no
	// caller meets an agent that cannot identify it yet or has nothing cached.
	startCtx, cancelStart := context.WithCancel(gctx)
	defer cancelStart()
	defer context.AfterFunc(ctx, cancelStart)()
	synced := func() bool { return resolver.HasSynced() && brk.HasSynced() }
	// The hand-off needs both: its entries are checked against this
	// agent's own pods and ServiceAccounts.
	if waitUntil(startCtx, synced, 0) {
		handoffs.take(startCtx, brk)
	}
	brk.ReleaseFetches()
	if !awaitStartup(startCtx, synced, brk.Prefetched, cfg.startupPrefetchWait) {
		return shutdownBeforeServing(probeServer, metricsServer, stopWork, g, log)
	}
	// Start-up is the agent's allocation peak (the pod and ServiceAccount
	// lists decoded, a fetch per pod); hand what it no longer uses back to
	// the node now rather than over minutes of background scavenging.
	debug.FreeOSMemory()
	att.check(gctx)
	credListeners, err := listenAll(gctx, cfg.listen, log)
	if err != nil {
		stopWork()
		_ = probeServer.Close()
		_ = metricsServer.Close()
		_ = g.Wait()
		return err
	}
	for _, ln := range credListeners {
		serveOn(credServer, grd.listener(ln))
	}
	serving.Store(true)
	// From now on this agent answers its successor. The socket lives until
	// the work context ends, after the drain: the successor of a surge
	// rollout starts while this agent still serves (package handoff).
	if hln := handoffs.listen(brk); hln != nil {
		g.Go(func() error {
			// Not fatal either: the agent serves on without it.
			if err := hln.Serve(gctx); err != nil {
				log.Warn("hand-off socket stopped; the next rollout on this node prefetches", "error", err)
			}
			return nil
		})
	}
	addrs := make([]string, len(credListeners))
	for i, ln := range credListeners {
		addrs[i] = ln.Addr().String()
	}
	log.Info("serving credentials", "listen", addrs, "pods_indexed", resolver.Len())
	if cfg.removeStartupTaint != "" {
		// Not fatal: an agent that cannot untaint its node still serves the
		// pods already there; Remove retries until it succeeds or the
		// agent stops.
		g.Go(func() error {
			err := nodetaint.Remove(gctx, nodetaint.Config{Nodes: client.Nodes(), NodeName: cfg.nodeName, Key: cfg.removeStartupTaint, Log: log.With("component", "nodetaint")})
			if err != nil && gctx.Err() == nil {
				log.Error("startup taint not removed", "err", err)
			}
			return nil
		})
	}

	select {
	case <-ctx.Done():
		log.Info("signal received; draining")
	case <-gctx.Done():
		log.Error("a component stopped; shutting down")
	}
	draining.Store(true)
	// A fresh context: the signal context is already cancelled, and
	// Shutdown with it would drop in-flight requests instead of draining them.
	sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownGrace)
	defer cancel()
	// The probe listener goes first: during a surge rollout the probe port is
	// shared, and the new agent's kubelet probe must reach the new agent.
	_ = probeServer.Shutdown(sctx)
	if err := credServer.Shutdown(sctx); err != nil {
		log.Warn("draining credential requests", "error", err)
	}
	_ = metricsServer.Shutdown(sctx)
	stopWork()
	err = g.Wait()
	log.Info("agent stopped")
	return err
}

// awaitStartup waits until the informers have synced, then until the
// node's pods are prefetched or prefetchWait has passed. It reports whether
// the agent may start serving: not when ctx ended (SIGTERM, a failed
// component) at any point of the wait, the prefetch wait included.
func awaitStartup(ctx context.Context, synced, prefetched func() bool, prefetchWait time.Duration) bool {
	if !waitUntil(ctx, synced, 0) {
		return false
	}
	waitUntil(ctx, prefetched, prefetchWait)
	return ctx.Err() == nil
}

// waitUntil polls cond until it holds or ctx ends; a positive limit bounds
// the wait. It reports whether cond held.
func waitUntil(ctx context.Context, cond func() bool, limit time.Duration) bool {
	if limit > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, limit)
		defer cancel()
	}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return cond()
		case <-t.C:
		}
	}
	return true
}

// shutdownBeforeServing stops an agent that was told to stop (or whose
// informer failed) before it ever bound a credential listener.
func shutdownBeforeServing(probe, metrics *http.Server, stopWork context.CancelFunc, g *errgroup.Group, log *slog.Logger) error {
	log.Info("stopping before serving")
	_ = probe.Close()
	_ = metrics.Close()
	stopWork()
	return g.Wait()
}

func kubeRESTConfig(cfg serveConfig) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if cfg.kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("loading Kubernetes client config: %w", err)
	}
	rc.QPS, rc.Burst = float32(cfg.kubeQPS), cfg.kubeBurst
	rc.UserAgent = "credbroker-agent/" + version
	// Protobuf halves the bytes of the pod watch compared with JSON.
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	return rc, nil
}

// surfaces routes each request to the wire surface of an enabled cloud
// that owns its path; the container-credentials API answers every other
// path. Each surface has its own request guard (its error format, its
// header rules; one budget per address).
func surfaces(b tracedBroker, grd *guards, clouds []cloudFlags) (http.Handler, error) {
	var routes []api.Route
	for _, c := range clouds {
		if !c.enabled() {
			continue
		}
		rt, err := c.route(b, grd)
		if err != nil {
			return nil, err
		}
		routes = append(routes, rt)
	}
	return api.Router(routes...), nil
}

// listenAll binds every address it can. An address the node does not have
// (no IPv6, or the init step has not put the address on yet) is skipped
// with a warning; the agent fails only if nothing could be bound.
func listenAll(ctx context.Context, addrs []string, log *slog.Logger) ([]net.Listener, error) {
	var lns []net.Listener
	var errs []error
	for _, a := range addrs {
		ln, err := reuseport.Listen(ctx, "tcp", a)
		switch {
		case err == nil:
			lns = append(lns, ln)
		case errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EAFNOSUPPORT):
			log.Warn("address not configured on this node; not listening on it", "address", a, "error", err)
			errs = append(errs, err)
		default:
			for _, ln := range lns {
				ln.Close()
			}
			return nil, fmt.Errorf("listening on %s: %w", a, err)
		}
	}
	if len(lns) == 0 {
		return nil, fmt.Errorf("could not listen on any of %s (run `agent init` first): %w", strings.Join(addrs, ","), errors.Join(errs...))
	}
	return lns, nil
}

// newCredentialServer bounds everything a caller controls: how long it may
// take to send headers and body, how big the headers are, how long an idle
// keep-alive connection is kept.
func newCredentialServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 2 * time.Second,
		ReadTimeout:       5 * time.Second,
		// Longer than the broker's request timeout, so that a slow upstream
		// answer is still written.
		WriteTimeout:   15 * time.Second,
		IdleTimeout:    90 * time.Second,
		MaxHeaderBytes: 8 << 10,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

func newOpsServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      60 * time.Second, // pprof profiles take 30 s
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
}

// metricsHandler serves reg's metrics, never compressed. promhttp gzips
// for any scraper that accepts it, as Prometheus does, and a gzip writer
// holds about 1 MiB of compressor state, which its pool drops after the
// next garbage collections: on an agent whose live heap is a few MiB, each
// scrape would grow the heap by a fifth or more to save some 10 KB of
// traffic inside the cluster.
func metricsHandler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, DisableCompression: true})
}

// probeHandler serves /healthz and /readyz; details are lines /readyz
// adds after "ok" (the node-restricted mode).
func probeHandler(ready func() bool, details ...string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "not ready: pod informer not synced, or draining", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
		for _, d := range details {
			_, _ = io.WriteString(w, d+"\n")
		}
	})
	return mux
}
