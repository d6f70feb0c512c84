//go:build integration

package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/netns"
	"github.com/credbroker/agent/integration/oidcsts"
)

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }

func netipMust(s string) netip.Addr { return netip.MustParseAddr(s) }

// createToken makes a TokenRequest for namespace/sa as the client's identity
// and discards the token.
func createToken(ctx context.Context, c kubernetes.Interface, namespace, sa string, auds []string, ref *authenticationv1.BoundObjectReference) error {
	secs := int64(600)
	_, err := c.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: auds, BoundObjectRef: ref, ExpirationSeconds: &secs},
	}, metav1.CreateOptions{})
	return err
}

// deniedByPolicy reports whether err is the admission policy's denial, as
// opposed to RBAC's (also 403) or any other failure. The API server names the
// denying policy in the message; there is no structured field for it.
func deniedByPolicy(err error) bool {
	var se apierrors.APIStatus
	if !errors.As(err, &se) {
		return false
	}
	st := se.Status()
	return apierrors.IsForbidden(err) && strings.Contains(st.Message, "ValidatingAdmissionPolicy '"+policyName+"'")
}

// freeServiceAddr returns 169.254.170.23:<port> with a port free at the
// moment. Tests in other packages run agents on 169.254.170.23:80 at the
// same time; with SO_REUSEPORT a second agent on that port would silently
// share its traffic, so these tests keep to a port of their own.
func freeServiceAddr() (string, error) {
	port, err := harness.FreePort(netns.ServiceAddr4.String())
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(netns.ServiceAddr4.String(), strconv.Itoa(port)), nil
}

// redact keeps credential bodies out of test logs.
func redact(body []byte) string {
	if bytes.Contains(body, []byte("SecretAccessKey")) {
		return "<credentials redacted>"
	}
	return string(body)
}

// appRole is the role the ServiceAccount team/app names in these tests.
const appRole = "arn:aws:iam::123456789012:role/app"

// startAppRole creates the ServiceAccount team/app annotated with appRole
// and an STS that trusts it for that role.
func startAppRole(ctx context.Context, t *testing.T, cp *harness.ControlPlane) *oidcsts.Server {
	t.Helper()
	if _, err := cp.CreateServiceAccount(ctx, "team", "app", appRole); err != nil {
		t.Fatal(err)
	}
	sts, err := cp.StartSTS(ctx, harness.STSConfig{Roles: map[string]string{appRole: "system:serviceaccount:team:app"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sts.Close() })
	return sts
}

// startAppPod starts team/web (ServiceAccount app) at ip on the test node,
// in network namespaces named after prefix (one per test, so that tests
// running at once keep apart), removed at the test's end.
func startAppPod(ctx context.Context, t *testing.T, cp *harness.ControlPlane, prefix, ip string) *harness.Pod {
	t.Helper()
	ps, err := harness.NewPods(ctx, cp, testNodeName, prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ps.Close(context.Background()) })
	p, err := ps.Start(ctx, harness.PodSpec{Namespace: "team", Name: "web", ServiceAccount: "app", IP: netipMust(ip)})
	if err != nil {
		t.Fatal(err)
	}
	return p
}
