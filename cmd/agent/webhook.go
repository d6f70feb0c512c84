package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/credbroker/agent/pkg/kube"
	"github.com/credbroker/agent/pkg/webhook"
)

// webhookConfig is everything `agent webhook` is told on its command line.
// The clouds' flags are the agent's own (same names, same defaults, set
// from the same chart values): a cloud is on for the webhook exactly when
// it is on for the agent, and the annotations are the agent's.
type webhookConfig struct {
	kubeconfig    string
	listen        string
	metricsListen string
	logLevel      string
	logFormat     string
	shutdownGrace time.Duration
	kubeQPS       float64
	kubeBurst     int

	configuration  string
	serviceName    string
	namespace      string
	ipSANs         listFlag
	certValidity   time.Duration
	publishDelay   time.Duration
	certFile       string
	keyFile        string
	admissionTime  time.Duration
	syncTimeout    time.Duration
	agentAddress   string
	awsAuthToken   string
	roleAnnotation string
	allowDefault   bool
	gcp            gcpConfig
	azure          azureConfig
}

func parseWebhookFlags(args []string, stderr io.Writer) (webhookConfig, error) {
	var c webhookConfig
	fs := newFlagSet("webhook", "A mutating admission webhook that adds each enabled cloud's SDK variables to pods whose ServiceAccount names an identity (docs/deploy.md).", stderr)
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "path to a kubeconfig; empty means the in-cluster config")
	fs.StringVar(&c.listen, "listen", ":9443", "host:port of the HTTPS admission endpoint (/mutate)")
	fs.StringVar(&c.metricsListen, "metrics-listen", ":2706", "host:port for /metrics, /healthz and /readyz")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "json", "json or text")
	fs.DurationVar(&c.shutdownGrace, "shutdown-grace", 10*time.Second, "how long in-flight admissions may take to finish after SIGTERM")
	fs.Float64Var(&c.kubeQPS, "kube-api-qps", 20, "client-side QPS limit towards the Kubernetes API")
	fs.IntVar(&c.kubeBurst, "kube-api-burst", 40, "client-side burst towards the Kubernetes API")
	fs.StringVar(&c.configuration, "webhook-configuration", "credbroker-webhook", "name of the MutatingWebhookConfiguration whose caBundle gets this webhook's CA")
	fs.StringVar(&c.serviceName, "service-name", "credbroker-webhook", "the webhook's Service; the certificate names <service>.<namespace>.svc")
	fs.StringVar(&c.namespace, "namespace", firstEnv("POD_NAMESPACE"), "the webhook's namespace (default $POD_NAMESPACE)")
	fs.Var(&c.ipSANs, "tls-ip-san", "IP addresses the certificate also names (an API server calling a URL such as https://127.0.0.1:9443); repeatable")
	fs.DurationVar(&c.certValidity, "cert-validity", 168*time.Hour, "lifetime of each self-issued CA and serving certificate; a new pair is made after two thirds of it")
	fs.DurationVar(&c.publishDelay, "ca-publish-delay", 10*time.Second, "how long a new CA sits in the caBundle before its certificate is served (API servers see the change through a watch)")
	fs.StringVar(&c.certFile, "tls-cert-file", "", "serve this certificate (e.g. cert-manager's) instead of a self-issued one; re-read when it changes")
	fs.StringVar(&c.keyFile, "tls-key-file", "", "key of --tls-cert-file")
	fs.DurationVar(&c.admissionTime, "admission-timeout", 5*time.Second, "the webhook configuration's timeoutSeconds: a ServiceAccount lookup ends at four fifths of it")
	fs.DurationVar(&c.syncTimeout, "sync-timeout", time.Minute, "how long to wait for the ServiceAccount watch's first list before serving anyway (lookups then GET)")
	fs.StringVar(&c.agentAddress, "agent-address", "169.254.170.23", "the agent's address the variables name (fd00:ec2::23 on IPv6-only clusters)")
	fs.StringVar(&c.awsAuthToken, "aws-authorization-token", "credbroker", "AWS_CONTAINER_AUTHORIZATION_TOKEN added with the AWS variables, so that the agent's --require-authorization can be turned on without restarting pods (not a secret); empty adds none")
	// The agent's flags, same names and defaults (webhook_test.go checks).
	fs.StringVar(&c.roleAnnotation, "role-annotation", "eks.amazonaws.com/role-arn", "ServiceAccount annotation naming the role (the agent's)")
	fs.BoolVar(&c.allowDefault, "allow-default-service-account", false, "wire pods of the default ServiceAccount too (the agent's)")
	c.gcp.register(fs)
	c.azure.register(fs)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "agent webhook: unexpected arguments %q\n", fs.Args())
		return c, errUsage
	}
	if err := c.gcp.validate(); err != nil {
		return c, err
	}
	if err := c.azure.validate(); err != nil {
		return c, err
	}
	if net.ParseIP(c.agentAddress) == nil {
		return c, fmt.Errorf("--agent-address %q is not an IP address", c.agentAddress)
	}
	if strings.ContainsAny(c.awsAuthToken, "\r\n") {
		return c, errors.New("--aws-authorization-token must not hold a newline: every AWS SDK rejects it")
	}
	for _, s := range c.ipSANs {
		if net.ParseIP(s) == nil {
			return c, fmt.Errorf("--tls-ip-san %q is not an IP address", s)
		}
	}
	if c.certFile == "" && c.namespace == "" {
		return c, errors.New("--namespace (or $POD_NAMESPACE) is required for the certificate's name")
	}
	return c, nil
}

// clouds are the webhook's enabled clouds: AWS always, as in the agent;
// GCP and Azure when the agent's flags turn them on.
func (c webhookConfig) clouds() []webhook.Cloud {
	out := []webhook.Cloud{webhook.AWS(c.roleAnnotation, c.agentAddress, c.awsAuthToken)}
	if c.gcp.enabled() {
		out = append(out, webhook.GCP(strings.TrimSpace(c.gcp.annotation), c.agentAddress))
	}
	if c.azure.enabled() {
		out = append(out, webhook.Azure(c.azure.clientAnnotation, c.agentAddress, c.azure.identityHeader))
	}
	return out
}

func runWebhook(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, err := parseWebhookFlags(args, stderr)
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, cfg.logLevel, cfg.logFormat)
	if err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.kubeconfig)
	if err != nil {
		return fmt.Errorf("loading Kubernetes client config: %w", err)
	}
	rc.QPS, rc.Burst = float32(cfg.kubeQPS), cfg.kubeBurst
	rc.UserAgent = "credbroker-webhook/" + version
	client, err := kube.NewForConfig(rc)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := webhook.NewMetrics(reg)
	clouds := cfg.clouds()
	annotations := make([]string, 0, len(clouds))
	names := make([]string, 0, len(clouds))
	for _, c := range clouds {
		annotations, names = append(annotations, c.Annotation), append(names, c.Name)
	}
	sas, err := webhook.NewServiceAccounts(client, annotations, metrics)
	if err != nil {
		return err
	}
	handler, err := webhook.NewHandler(webhook.Config{
		Clouds: clouds, ServiceAccounts: sas, AllowDefaultServiceAccount: cfg.allowDefault,
		AdmissionTimeout: cfg.admissionTime, Metrics: metrics, Logger: log.With("component", "admission"),
	})
	if err != nil {
		return err
	}
	var ips []net.IP
	for _, s := range cfg.ipSANs {
		ips = append(ips, net.ParseIP(s))
	}
	certs, err := webhook.NewCerts(webhook.CertConfig{
		DNSNames: []string{cfg.serviceName, cfg.serviceName + "." + cfg.namespace, cfg.serviceName + "." + cfg.namespace + ".svc"},
		IPs:      ips, Validity: cfg.certValidity, PublishDelay: cfg.publishDelay,
		WebhookConfiguration: cfg.configuration, Client: client,
		CertFile: cfg.certFile, KeyFile: cfg.keyFile,
		Metrics: metrics, Logger: log.With("component", "certificates"),
	})
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("admission listener: %w", err)
	}
	mln, err := net.Listen("tcp", cfg.metricsListen)
	if err != nil {
		ln.Close()
		return fmt.Errorf("metrics listener: %w", err)
	}
	var draining atomic.Bool
	mux := http.NewServeMux()
	mux.Handle("/mutate", handler)
	srv := &http.Server{
		Handler: mux,
		// API servers speak TLS 1.3; the certificate is the rotation's.
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.GetCertificate},
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       cfg.admissionTime + 5*time.Second,
		WriteTimeout:      cfg.admissionTime + 5*time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	mmux := http.NewServeMux()
	mmux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mmux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mmux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		// Ready once the API servers trust the certificate served: before,
		// a Service would route admissions that fail TLS and are then
		// ignored, a pod started without its variables.
		switch {
		case draining.Load():
			http.Error(w, "draining", http.StatusServiceUnavailable)
		case !certs.Ready():
			http.Error(w, "certificate not published yet", http.StatusServiceUnavailable)
		case !sas.HasSynced():
			http.Error(w, "ServiceAccounts not listed yet", http.StatusServiceUnavailable)
		default:
			_, _ = io.WriteString(w, "ok\n")
		}
	})
	msrv := &http.Server{Handler: mmux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return sas.Run(gctx) })
	g.Go(func() error { return certs.Run(gctx) })
	g.Go(func() error {
		if err := msrv.Serve(mln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("metrics server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if !sas.WaitForSync(gctx, cfg.syncTimeout) && gctx.Err() == nil {
			log.Warn("ServiceAccounts not listed in time; serving with live lookups", "timeout", cfg.syncTimeout)
		}
		if gctx.Err() != nil {
			return nil
		}
		log.Info("serving admissions", "listen", ln.Addr().String(), "metrics", mln.Addr().String(), "clouds", names)
		if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("admission server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		draining.Store(true)
		sctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownGrace)
		defer cancel()
		err := srv.Shutdown(sctx)
		ln.Close()
		_ = msrv.Shutdown(sctx)
		return err
	})
	return g.Wait()
}
