//go:build integration

// Package broker_test runs pkg/broker in the agent's own wiring (pkg/kube's
// client, the real pod resolver, the AWS and GCP exchangers) against a real
// kube-apiserver and verifying peers (oidcsts, googlests), for what only the
// API server can show: which objects it accepts and how its watch delivers
// them.
package broker_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/oidcsts"
	"github.com/credbroker/agent/integration/testenv"
	"github.com/credbroker/agent/pkg/broker"
	"github.com/credbroker/agent/pkg/exchange"
	"github.com/credbroker/agent/pkg/exchange/aws"
	"github.com/credbroker/agent/pkg/exchange/gcp"
	"github.com/credbroker/agent/pkg/kube"
	"github.com/credbroker/agent/pkg/podresolve"
)

const (
	node          = "node-annotations"
	ns            = "annot"
	gcpAnnotation = "iam.gke.io/gcp-service-account"
	cloudPlatform = "https://www.googleapis.com/auth/cloud-platform"
)

// Issue 18, item 5: the API server validates annotation keys and the total
// size, not what a value holds. A role annotation ending in
// "\x00<email>" once made the pod impersonate that Google service account
// with no GCP annotation at all, because the ServiceAccount watch packed
// every cloud's annotation into one NUL-separated string. Google here
// would let the pod impersonate the account, so only the broker stands
// between the pod and it.
func TestAnnotationHoldingNULNamesNoOtherCloudsIdentity(t *testing.T) {
	cp := testenv.StartControlPlane(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	sts, err := cp.StartSTS(ctx, harness.STSConfig{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sts.Close() })
	gsts, err := cp.StartGoogleSTS(ctx, harness.GoogleSTSConfig{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gsts.Close() })

	role := "arn:aws:iam::" + oidcsts.DefaultAccountID + ":role/app"
	other := "other@proj.iam.gserviceaccount.com"
	subject := "system:serviceaccount:" + ns + ":app"
	sts.TrustRole(role, subject)
	gsts.Allow(other, subject)
	if err := cp.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	for name, annotations := range map[string]map[string]string{
		"app":   {"eks.amazonaws.com/role-arn": role + "\x00" + other},
		"mixed": {gcpAnnotation: "x\x00" + other},
	} {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: annotations}}
		if _, err := cp.Client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating ServiceAccount %s: %v", name, err)
		}
		got, err := cp.Client.CoreV1().ServiceAccounts(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil || len(got.Annotations) != 1 || !equalMaps(got.Annotations, annotations) {
			t.Fatalf("the API server stored %q (%v), want the annotation with its NUL", got.Annotations, err)
		}
	}
	addrs := map[string]netip.Addr{"app": netip.MustParseAddr("10.244.14.10"), "mixed": netip.MustParseAddr("10.244.14.11")}
	for sa, ip := range addrs {
		if _, err := cp.CreatePod(ctx, harness.PodSpec{Namespace: ns, Name: sa + "-1", ServiceAccount: sa, NodeName: node, IP: ip}); err != nil {
			t.Fatal(err)
		}
	}

	awsX, err := aws.New(aws.Config{Endpoint: sts.URL()})
	if err != nil {
		t.Fatal(err)
	}
	gcpX, err := gcp.New(gcp.Config{Provider: gsts.Provider(), STSEndpoint: gsts.URL(), IAMCredentialsEndpoint: gsts.URL()})
	if err != nil {
		t.Fatal(err)
	}
	b := startBroker(t, cp, node,
		aws.Profile(aws.ProfileConfig{Exchanger: awsX}),
		broker.Cloud{Name: exchange.GCP, Exchanger: gcpX, Audience: gcp.TokenAudience(gsts.Provider()), Annotation: gcpAnnotation, IdentityOptional: true},
	)

	// The pod whose role annotation ends in NUL and an email: on GCP it is
	// its own federated principal, as every pod without the GCP annotation.
	ans, err := b.Credentials(ctx, addrs["app"], broker.Request{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Scope: cloudPlatform})
	if err != nil {
		t.Fatalf("GCP token of pod app-1: %v", err)
	}
	issued, ok := gsts.Lookup(ans.Credentials.AccessToken.Reveal())
	if !ok || ans.Identity != "" || issued.Email != "" || issued.Subject != subject || issued.PodName != "app-1" {
		t.Fatalf("pod app-1 got a token for identity %q; Google minted it for %+v; want its own federated principal, never %s", ans.Identity, issued, other)
	}
	// On AWS its annotation is no role: refused, before any upstream call.
	_, err = b.Credentials(ctx, addrs["app"], broker.Request{Cloud: exchange.AWS, Want: exchange.KindAWS})
	if f := broker.Classify(err); err == nil || f.Class != broker.Refused || f.Code != broker.CodeInvalidRole {
		t.Errorf("AWS credentials of pod app-1: %v (%+v), want refused %s", err, f, broker.CodeInvalidRole)
	}
	// A GCP annotation holding a NUL is refused too.
	_, err = b.Credentials(ctx, addrs["mixed"], broker.Request{Cloud: exchange.GCP, Want: exchange.KindAccessToken, Scope: cloudPlatform})
	if f := broker.Classify(err); err == nil || f.Code != broker.CodeInvalidRole {
		t.Errorf("GCP token of pod mixed-1: %v (%+v), want refused %s", err, f, broker.CodeInvalidRole)
	}
	if n := sts.Counts().AssumeRole; n != 0 {
		t.Errorf("the STS was asked %d times, want never", n)
	}
	if c := gsts.Counts(); c.GenerateAccessToken != 0 || c.Federated != 1 {
		t.Errorf("Google counted %+v, want one federated token and no impersonation", c)
	}
}

// startBroker runs the agent's own wiring for node against cp: pkg/kube's
// client, the real pod resolver and a broker serving clouds, until the
// test ends; it returns once both have synced.
func startBroker(t *testing.T, cp *harness.ControlPlane, node string, clouds ...broker.Cloud) *broker.Broker {
	t.Helper()
	client, err := kube.NewForConfig(cp.Config)
	if err != nil {
		t.Fatal(err)
	}
	resolver, err := podresolve.New(podresolve.Config{Pods: client.Pods(), NodeName: node,
		HostAddrs: func() ([]netip.Addr, error) { return nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Config{ServiceAccounts: client.ServiceAccounts(), Resolver: resolver, Clouds: clouds})
	if err != nil {
		t.Fatal(err)
	}
	resolver.AddListener(b)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- resolver.Run(ctx) }()
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; <-done })
	waitFor(t, "the resolver and the ServiceAccount watch to sync", func() bool { return resolver.HasSynced() && b.HasSynced() })
	return b
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// waitFor polls cond until it holds; the bound only stops a broken test
// from hanging.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
