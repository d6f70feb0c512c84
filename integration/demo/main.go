// Command demo shows the credential broker end to end on one machine, no
// cluster needed: it starts etcd and kube-apiserver, moto (standing in for
// AWS STS), the agent, and one pod simulated in a network namespace, then
// runs the AWS CLI inside the pod, which gets its credentials from the agent
// and calls sts get-caller-identity. Every step is printed. It builds what
// is missing (kube-apiserver and etcd, bin/agent) and removes everything it
// started on exit, also on Ctrl-C.
//
// Run it as root: `make demo`, or `go run ./integration/demo` from the work
// tree. With -wait it keeps everything running until Ctrl-C, so that you
// can try commands inside the pod yourself.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/netns"
)

const (
	nodeName  = "demo-node"
	namespace = "demo"
	saName    = "app"
	podName   = "app"
	roleName  = "demo-app"
	nsPrefix  = "cbdemo"
)

func main() {
	wait := flag.Bool("wait", false, "keep everything running until Ctrl-C")
	keepDir := flag.Bool("keep", false, "keep the work directory (logs, kubeconfigs) after exit")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := run(ctx, *wait, *keepDir)
	if err != nil && ctx.Err() != nil {
		fmt.Println("\n==> interrupted; everything was cleaned up")
		os.Exit(130)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "\ndemo failed:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }
func note(format string, args ...any) { fmt.Printf("    "+format+"\n", args...) }

func run(ctx context.Context, wait, keepDir bool) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the demo must run as root (it creates network namespaces and puts 169.254.170.23 on lo)")
	}
	root, err := harness.RepoRoot()
	if err != nil {
		return err
	}

	step("checking what needs building")
	binDir, err := ensureK8sBin(ctx, root)
	if err != nil {
		return err
	}
	note("kube-apiserver and etcd: %s", binDir)
	agentBin, err := ensureAgent(ctx, root)
	if err != nil {
		return err
	}
	note("agent: %s", agentBin)
	for _, c := range []string{"moto_server", "aws", "ip", "kubectl"} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("%s is not on PATH: %w", c, err)
		}
	}

	dir, err := os.MkdirTemp("", "credbroker-demo-")
	if err != nil {
		return err
	}
	defer func() {
		if keepDir {
			fmt.Printf("    work directory kept: %s\n", dir)
			return
		}
		os.RemoveAll(dir)
	}()
	// Cleanups run in reverse order, also after an error or Ctrl-C.
	var cleanups []func()
	defer func() {
		step("cleaning up")
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		note("stopped all processes, removed the pod's network namespace")
	}()

	step("putting the agent's link-local address 169.254.170.23 on lo")
	note("on a real node the agent's init container does this; pods reach it through their default route")
	if err := netns.AddHostAddr(ctx, netns.ServiceAddr4); err != nil {
		return err
	}

	step("starting etcd and kube-apiserver (no scheduler, no kubelet: the demo plays their parts)")
	cp, err := harness.StartControlPlane(ctx, harness.ControlPlaneConfig{Dir: dir, BinDir: binDir})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, cp.Stop)
	note("API server:          %s", cp.URL)
	note("token issuer (OIDC): %s/.well-known/openid-configuration", cp.Issuer)
	note("admin kubeconfig:    %s", cp.AdminKubeconfig)

	step("starting moto on %s (it plays AWS STS; the agent needs no AWS credentials)", netns.ServiceAddr4)
	moto, err := harness.StartMoto(ctx, harness.MotoConfig{Dir: dir, Host: netns.ServiceAddr4.String()})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, moto.Stop)
	role, err := moto.CreateRole(ctx, roleName)
	if err != nil {
		return err
	}
	note("STS endpoint: %s; IAM role %s", moto.URL, role)

	step("giving the agent its identity: deploy/daemonset/rbac.yaml")
	kc := filepath.Join(dir, "agent.kubeconfig")
	if err := cp.AgentKubeconfig(ctx, filepath.Join(root, "deploy/daemonset/rbac.yaml"), kc); err != nil {
		return err
	}
	// The demo's token is bound to no pod, so the agent cannot act as a
	// node and falls back to the broad RBAC, which AgentKubeconfig adds.
	note("ServiceAccount %s/%s may: list/watch serviceaccounts; and, from deploy/daemonset/broad-rbac (the agent's token here is bound to no pod, so it cannot act as its node): get/list/watch pods, create serviceaccounts/token, create/patch events",
		harness.AgentNamespace, harness.AgentServiceAccount)

	listen := harness.DefaultAgentListen
	if l, err := net.Listen("tcp", listen); err != nil {
		port, perr := harness.FreePort(netns.ServiceAddr4.String())
		if perr != nil {
			return perr
		}
		listen = net.JoinHostPort(netns.ServiceAddr4.String(), strconv.Itoa(port))
		note("port 80 is taken (%v); using %s instead", err, listen)
	} else {
		l.Close()
	}
	step("starting the agent on %s for node %s", listen, nodeName)
	agent, err := harness.StartAgent(ctx, harness.AgentConfig{
		Binary: agentBin, Dir: dir, Kubeconfig: kc, NodeName: nodeName,
		Listen: listen, STSEndpoint: moto.URL, LogLevel: "info",
	})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, agent.Stop)
	note("bin/agent %s", strings.Join(agent.Process.Cmd.Args[1:], " "))
	note("ready (%s/readyz); log: %s", agent.ProbeURL, agent.Process.LogPath)

	step("creating ServiceAccount %s/%s with the role annotation", namespace, saName)
	if _, err := cp.CreateServiceAccount(ctx, namespace, saName, role); err != nil {
		return err
	}
	out, err := cp.Kubectl(ctx, "get", "serviceaccount", "-n", namespace, saName, "-o", "jsonpath={.metadata.annotations}")
	if err != nil {
		return err
	}
	note("annotations: %s", out)

	ip := netip.MustParseAddr("10.244.0.10")
	step("creating pod %s/%s on %s with IP %s", namespace, podName, nodeName, ip)
	note("a network namespace with a veth pair stands in for the container, so its traffic really comes from %s", ip)
	pods, err := harness.NewPods(ctx, cp, nodeName, nsPrefix)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { pods.Close(context.Background()) })
	pod, err := pods.Start(ctx, harness.PodSpec{Namespace: namespace, Name: podName, ServiceAccount: saName, IP: ip})
	if err != nil {
		return err
	}
	note("network namespace: %s", pod.NS.Name())

	credsURL := "http://" + listen + "/v1/credentials"
	if listen == harness.DefaultAgentListen {
		credsURL = harness.DefaultCredentialsURL
	}
	home, err := os.MkdirTemp(dir, "home-")
	if err != nil {
		return err
	}
	env := harness.PodEnv(home, credsURL, map[string]string{"AWS_ENDPOINT_URL": moto.URL})
	step("the pod's environment: one variable for credentials, nothing else")
	for _, e := range env {
		if strings.HasPrefix(e, "AWS_") {
			note("%s", e)
		}
	}
	note("(no access keys, no token file, no ~/.aws: HOME is an empty directory)")

	step("inside the pod: GET %s (what every AWS SDK does with that variable)", credsURL)
	if err := showCredentials(ctx, pod, credsURL); err != nil {
		return err
	}

	step("inside the pod: aws sts get-caller-identity")
	cmd := pod.Exec(ctx, env, "aws", "sts", "get-caller-identity")
	cmd.Stdout, cmd.Stderr = indent(os.Stdout), indent(os.Stderr)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("aws sts get-caller-identity in the pod: %w", err)
	}
	note("the pod is now %s: the role named on its ServiceAccount, nothing else", "assumed-role/"+roleName)

	step("what the agent logged (JSON; never a token or a key)")
	for _, l := range strings.Split(agent.LogTail(6), "\n") {
		note("%s", l)
	}

	if wait {
		step("everything keeps running; press Ctrl-C to stop and clean up. Try:")
		note("ip netns exec %s env -i %s aws sts get-caller-identity", pod.NS.Name(), shellEnv(env))
		note("kubectl --kubeconfig %s get pods -A", cp.AdminKubeconfig)
		<-ctx.Done()
		return nil
	}
	return nil
}

// ensureK8sBin builds kube-apiserver and etcd unless they are cached.
func ensureK8sBin(ctx context.Context, root string) (string, error) {
	if dir, err := harness.K8sBinDir(); err == nil {
		return dir, nil
	}
	note("kube-apiserver and etcd are not built yet: building them from their Go modules (about 11 minutes once; cached afterwards)")
	cmd := exec.CommandContext(ctx, filepath.Join(root, "integration/k8sbin/build.sh"))
	cmd.Stderr = indent(os.Stderr)
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("building kube-apiserver and etcd: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// ensureAgent builds bin/agent with `make build` unless it exists.
func ensureAgent(ctx context.Context, root string) (string, error) {
	if p, err := harness.AgentBinary(); err == nil {
		return p, nil
	}
	note("bin/agent is missing: running make build")
	cmd := exec.CommandContext(ctx, "make", "-C", root, "build")
	cmd.Stdout, cmd.Stderr = indent(os.Stdout), indent(os.Stderr)
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("make build: %w", err)
	}
	return harness.AgentBinary()
}

// showCredentials fetches the credentials from inside the pod and prints
// them with the secrets hidden.
func showCredentials(ctx context.Context, pod *harness.Pod, url string) error {
	// Like the SDKs: a few tries a second apart.
	var (
		code int
		body []byte
		err  error
	)
	for try := 1; ; try++ {
		code, body, err = pod.Get(ctx, url)
		if err == nil && code == http.StatusOK {
			break
		}
		if err != nil {
			note("try %d: %v", try, err)
		} else {
			note("try %d: HTTP %d %s", try, code, body)
		}
		if try == 4 || ctx.Err() != nil {
			return fmt.Errorf("no credentials from the agent after %d tries", try)
		}
		time.Sleep(time.Second)
	}
	note("HTTP %d", code)
	var c map[string]string
	if err := json.Unmarshal(body, &c); err != nil {
		return fmt.Errorf("decoding the agent's answer: %w", err)
	}
	for _, k := range []string{"AccessKeyId", "SecretAccessKey", "Token", "Expiration", "AccountId"} {
		v := c[k]
		if k == "SecretAccessKey" || k == "Token" {
			v = fmt.Sprintf("(%d characters, not shown)", len(v))
		}
		note("%-16s %s", k+":", v)
	}
	if exp, err := time.Parse(time.RFC3339, c["Expiration"]); err == nil {
		note("valid for another %v; the agent refreshes it well before that", time.Until(exp).Round(time.Minute))
	}
	return nil
}

func shellEnv(env []string) string {
	var b strings.Builder
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		if k == "PATH" || strings.HasPrefix(k, "AWS_") || k == "HOME" || strings.HasPrefix(k, "PYENV") {
			fmt.Fprintf(&b, "%s=%q ", k, v)
		}
	}
	return strings.TrimSpace(b.String())
}

// indent prefixes every line written to w with four spaces.
func indent(w io.Writer) io.Writer { return &indenter{w: w, bol: true} }

type indenter struct {
	w   io.Writer
	bol bool
}

func (i *indenter) Write(p []byte) (int, error) {
	for _, b := range p {
		if i.bol {
			if _, err := i.w.Write([]byte("    ")); err != nil {
				return 0, err
			}
		}
		if _, err := i.w.Write([]byte{b}); err != nil {
			return 0, err
		}
		i.bol = b == '\n'
	}
	return len(p), nil
}
