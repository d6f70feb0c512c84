//go:build integration

// Package node runs a real one-node Kubernetes cluster on this machine for
// the node suite: etcd and kube-apiserver (package harness) on the host, and
// kube-controller-manager, kube-scheduler, containerd (with runc and the CNI
// bridge plugin) and a kubelet inside a network namespace of their own, the
// way a kind node is a container. Images are imported from archives (make
// image, tools/image); nothing is pulled.
//
// # Addresses
//
//	10.244.65.2/32   the node's InternalIP, on eth0 of the node's namespace
//	                 (netns "cbnode"); the host end of the veth is 169.254.1.1
//	                 (netns.Gateway4), with a host route to 10.244.65.2
//	10.244.64.0/24   the pod CIDR on the node's cni0 bridge (gateway .1);
//	                 host-local hands out only .10–.17, so addresses are reused
//	10.96.0.0/12     the service CIDR (harness); only 10.96.0.1:443, the
//	                 kubernetes Service, is served: a DNAT rule in the node's
//	                 namespace sends it to a proxy on 169.254.1.1, which
//	                 forwards to the API server on 127.0.0.1 (no kube-proxy)
//
// Pod traffic to the host (the proxy, the STS) is masqueraded by the bridge
// plugin (ipMasq) to 10.244.65.2; traffic to the agent's 169.254.170.23 stays
// inside the node's namespace and keeps the pod's own source address.
//
// # What is left on the host, and undone
//
// The node's iptables rules, bridge, routes and pod namespaces' links live in
// its network namespace and go with it. The rest is undone by Stop, and by the
// next Start if a run was killed before Stop (a state file in /run records
// what to undo): the sysctls the kubelet sets unconditionally
// (kernel.panic, kernel.panic_on_oops, vm.overcommit_memory), the cgroup tree
// under /credbroker-node, containerd's shims and mounts, the pod network
// namespaces containerd made in /var/run/netns, and the kubelet's symlinks in
// /var/log/containers.
package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/credbroker/agent/integration/harness"
	"github.com/credbroker/agent/integration/netns"
)

// Fixed addresses and names; see the package doc.
var (
	NodeIP     = netip.MustParseAddr("10.244.65.2")
	PodCIDR    = netip.MustParsePrefix("10.244.64.0/24")
	PodGateway = netip.MustParseAddr("10.244.64.1")
	// HostAddr is where the node's namespace reaches the host: the proxy to
	// the API server and the peers (STS) listen here.
	HostAddr = netns.Gateway4
)

const (
	netnsName  = "cbnode"
	cgroupRoot = "credbroker-node"
	stateFile  = "/run/credbroker-node/state.json"
	// PauseImage is the sandbox image containerd is configured with.
	PauseImage = "localhost/credbroker/pause:test"
)

// Config configures Start.
type Config struct {
	// Name is the node's name. Default "node-1".
	Name string
	// BinDir holds the Kubernetes binaries. Default harness.K8sBinDir().
	BinDir string
	// Images are image archives to import into containerd's k8s.io namespace
	// before the kubelet starts (the pause image among them).
	Images []string
	// RegisterWithTaints are taints the node registers with ("key=value:Effect").
	RegisterWithTaints []string
}

// Node is a running one-node cluster.
type Node struct {
	Name string
	// CP is the control plane (the admin's client, kubectl, the STS).
	CP *harness.ControlPlane
	// Dir holds the node's state, configs and logs.
	Dir string
	// NS is the node's network namespace.
	NS *netns.Namespace

	cfg       Config
	pki       *pki
	proxy     net.Listener
	proxyPort int
	procs     map[string]*harness.Process
	procArgs  map[string][]string
	mu        sync.Mutex
	stopOnce  sync.Once
	netnsSeen map[string]bool // /var/run/netns entries before the run
}

// state is what Stop (or the next Start) must undo on the host.
type state struct {
	Dir     string            `json:"dir"`
	Sysctls map[string]string `json:"sysctls"`
	// NetNS are the /var/run/netns entries that existed before the run:
	// the pod namespaces containerd makes are the cni-* ones not listed.
	NetNS map[string]bool `json:"netns"`
}

// kubeletSysctls are the host-wide sysctls the kubelet sets without asking.
var kubeletSysctls = []string{"kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory"}

// Start brings up the cluster and waits until the node is Ready. On error
// everything started is undone.
func Start(ctx context.Context, cfg Config) (_ *Node, err error) {
	if cfg.Name == "" {
		cfg.Name = "node-1"
	}
	if cfg.BinDir == "" {
		if cfg.BinDir, err = harness.K8sBinDir(); err != nil {
			return nil, err
		}
	}
	for _, b := range []string{"kubelet", "kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, b)); err != nil {
			return nil, fmt.Errorf("%w: %s in %s; run `make k8sbin`", harness.ErrNotFound, b, cfg.BinDir)
		}
	}
	if err := undoStale(ctx); err != nil {
		return nil, fmt.Errorf("undoing a previous run: %w", err)
	}
	// A short path: containerd's sockets live below it (108-byte limit).
	dir, err := os.MkdirTemp("", "cbnode-")
	if err != nil {
		return nil, err
	}
	st := state{Dir: dir, Sysctls: map[string]string{}, NetNS: map[string]bool{}}
	if es, err := os.ReadDir("/var/run/netns"); err == nil {
		for _, e := range es {
			st.NetNS[e.Name()] = true
		}
	}
	for _, s := range kubeletSysctls {
		v, err := os.ReadFile("/proc/sys/" + s)
		if err != nil {
			return nil, fmt.Errorf("reading sysctl %s: %w", s, err)
		}
		st.Sysctls[s] = strings.TrimSpace(string(v))
	}
	if err := writeState(st); err != nil {
		return nil, err
	}
	n := &Node{Name: cfg.Name, Dir: dir, cfg: cfg, procs: map[string]*harness.Process{}, procArgs: map[string][]string{}, netnsSeen: st.NetNS}
	defer func() {
		if err != nil {
			n.Stop()
		}
	}()
	if n.pki, err = newPKI(filepath.Join(dir, "pki")); err != nil {
		return nil, err
	}
	kcCert, kcKey, err := n.pki.clientCert("apiserver-kubelet-client", "kube-apiserver-kubelet-client")
	if err != nil {
		return nil, err
	}
	n.CP, err = harness.StartControlPlane(ctx, harness.ControlPlaneConfig{
		Dir:                     filepath.Join(dir, "cp"),
		BinDir:                  cfg.BinDir,
		AuthorizationModes:      "Node,RBAC",
		ServiceAccountAdmission: true,
		ExtraAPIServerFlags: []string{
			"--client-ca-file=" + n.pki.CAFile(),
			"--enable-admission-plugins=NodeRestriction",
			"--kubelet-client-certificate=" + kcCert,
			"--kubelet-client-key=" + kcKey,
			// Otherwise logs and exec try to resolve the node's name.
			"--kubelet-preferred-address-types=InternalIP",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("starting the control plane: %w", err)
	}
	if n.NS, err = netns.Create(ctx, netns.Spec{Name: netnsName, IP: NodeIP}); err != nil {
		return nil, fmt.Errorf("creating the node's network namespace: %w", err)
	}
	if err := n.startProxy(); err != nil {
		return nil, err
	}
	// The kubernetes Service, for in-cluster clients (the agent): no
	// kube-proxy runs, so one rule stands in for it, in the node's namespace
	// only, for the node's own processes (OUTPUT) and its pods (PREROUTING).
	to := fmt.Sprintf("%s:%d", HostAddr, n.proxyPort)
	for _, chain := range []string{"OUTPUT", "PREROUTING"} {
		if out, err := n.NSCommand(ctx, "iptables", "-w", "-t", "nat", "-A", chain, "-d", "10.96.0.1/32", "-p", "tcp",
			"--dport", "443", "-j", "DNAT", "--to-destination", to).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("adding the kubernetes Service rule: %w: %s", err, out)
		}
	}
	if err := n.writeConfigs(); err != nil {
		return nil, err
	}
	if err := n.startContainerd(ctx); err != nil {
		return nil, err
	}
	for _, img := range cfg.Images {
		if err := n.ImportImage(ctx, img); err != nil {
			return nil, err
		}
	}
	if err := n.startControllers(); err != nil {
		return nil, err
	}
	if err := n.StartKubelet(ctx); err != nil {
		return nil, err
	}
	return n, nil
}

// NSCommand returns a command that runs in the node's network namespace and
// the host's mount namespace (nsenter, not `ip netns exec`, which would give
// it a mount namespace of its own: the kubelet's volume mounts must be seen
// by containerd and runc).
func (n *Node) NSCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.NS.Path(), "--", name}, args...)...)
}

func (n *Node) startNS(name string, args ...string) error {
	p, err := harness.StartProcess(name, n.LogPath(name), nil, "nsenter", append([]string{"--net=" + n.NS.Path(), "--"}, args...)...)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.procs[name] = p
	n.procArgs[name] = args
	n.mu.Unlock()
	return nil
}

// LogPath is the log of one of the node's processes.
func (n *Node) LogPath(name string) string { return filepath.Join(n.Dir, "logs", name+".log") }

// Process returns one of the node's processes (containerd, kubelet,
// kube-controller-manager, kube-scheduler).
func (n *Node) Process(name string) *harness.Process {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.procs[name]
}

// startProxy forwards HostAddr:<port> to the API server on loopback, which
// the node's namespace cannot reach.
func (n *Node) startProxy() error {
	l, err := net.Listen("tcp", net.JoinHostPort(HostAddr.String(), "0"))
	if err != nil {
		return fmt.Errorf("listening for the API server proxy: %w", err)
	}
	n.proxy = l
	n.proxyPort = l.Addr().(*net.TCPAddr).Port
	target := strings.TrimPrefix(n.CP.URL, "https://")
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					return
				}
				defer u.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(u, c); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, u); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return nil
}

// APIServerURL is the API server as the node's namespace reaches it.
func (n *Node) APIServerURL() string { return fmt.Sprintf("https://%s:%d", HostAddr, n.proxyPort) }

func (n *Node) path(p ...string) string { return filepath.Join(append([]string{n.Dir}, p...)...) }

// ContainerdSocket is containerd's CRI and API socket.
func (n *Node) ContainerdSocket() string { return n.path("containerd.sock") }

func (n *Node) writeConfigs() error {
	caFile := n.path("pki", "apiserver-ca.crt")
	files := map[string]string{caFile: string(n.CP.CACert)}
	kubeconfig := func(name, user string, groups ...string) (string, error) {
		cert, key, err := n.pki.clientCert(name, user, groups...)
		if err != nil {
			return "", err
		}
		p := n.path(name + ".kubeconfig")
		// The API server's certificate names 127.0.0.1 and localhost, not
		// the proxy's address.
		files[p] = fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: %q, certificate-authority: %q, tls-server-name: localhost}
users:
- name: %s
  user: {client-certificate: %q, client-key: %q}
contexts:
- name: local
  context: {cluster: local, user: %s}
current-context: local
`, n.APIServerURL(), caFile, name, cert, key, name)
		return p, nil
	}
	for _, c := range []struct{ name, user, group string }{
		{"kubelet", "system:node:" + n.Name, "system:nodes"},
		{"kube-controller-manager", "system:kube-controller-manager", ""},
		{"kube-scheduler", "system:kube-scheduler", ""},
	} {
		var groups []string
		if c.group != "" {
			groups = []string{c.group}
		}
		if _, err := kubeconfig(c.name, c.user, groups...); err != nil {
			return err
		}
	}
	// containerd 1.6 (Debian 12) configuration, version 2 format. See
	// shared notes/real-node.md for why each setting is needed here.
	files[n.path("containerd.toml")] = fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # Without it every sandbox fails: runc cannot lower oom_score_adj without
  # CAP_SYS_RESOURCE, which this machine's root lacks.
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
`, n.path("containerd", "root"), n.path("containerd", "state"), n.ContainerdSocket(), PauseImage, n.path("cni"))
	// Eight addresses, so that the lifecycle tests see addresses reused.
	files[n.path("cni", "10-cbnode.conflist")] = fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "cbnode",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
    "ipam": {"type": "host-local", "dataDir": %q, "routes": [{"dst": "0.0.0.0/0"}],
             "ranges": [[{"subnet": %q, "rangeStart": "10.244.64.10", "rangeEnd": "10.244.64.17", "gateway": %q}]]}
  }]
}
`, n.path("cni", "ipam"), PodCIDR.String(), PodGateway.String())
	taints := ""
	for _, t := range n.cfg.RegisterWithTaints {
		key, effect, ok := strings.Cut(t, ":")
		if !ok {
			return fmt.Errorf("taint %q: want key[=value]:Effect", t)
		}
		k, v, _ := strings.Cut(key, "=")
		taints += fmt.Sprintf("  - {key: %q, value: %q, effect: %q}\n", k, v, effect)
	}
	if taints != "" {
		taints = "registerWithTaints:\n" + taints
	}
	files[n.path("kubelet.yaml")] = fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine mounts cgroup v1, which the kubelet refuses by default.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /%s
failSwapOn: false
containerRuntimeEndpoint: unix://%s
podLogsDir: %q
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %q}
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
resolvConf: ""
# Imported images must never be garbage-collected: nothing could pull them back.
imageGCHighThresholdPercent: 100
evictionHard: {"memory.available": "100Mi"}
%s`, cgroupRoot, n.ContainerdSocket(), n.path("pod-logs"), n.pki.CAFile(), taints)
	for p, c := range files {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(c), 0o600); err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
	}
	return nil
}

func (n *Node) startContainerd(ctx context.Context) error {
	if err := n.startNS("containerd", "containerd", "--config", n.path("containerd.toml")); err != nil {
		return err
	}
	return poll(ctx, 30*time.Second, "containerd to serve", func() (bool, error) {
		if done, err := n.Process("containerd").Exited(); done {
			return false, fmt.Errorf("containerd exited: %v; log:\n%s", err, n.Process("containerd").LogTail(20))
		}
		return n.Ctr(ctx, "version") == nil, nil
	})
}

// Ctr runs ctr against the node's containerd in the k8s.io namespace.
func (n *Node) Ctr(ctx context.Context, args ...string) error {
	_, err := n.CtrOutput(ctx, args...)
	return err
}

// CtrOutput is Ctr returning the output.
func (n *Node) CtrOutput(ctx context.Context, args ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", n.ContainerdSocket(), "-n", "k8s.io"}, args...)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ctr %v: %w: %s", args, err, out)
	}
	return out, nil
}

// ImportImage imports an image archive (tools/image) into the node.
func (n *Node) ImportImage(ctx context.Context, archive string) error {
	return n.Ctr(ctx, "images", "import", archive)
}

func (n *Node) startControllers() error {
	caFile := n.path("pki", "apiserver-ca.crt")
	if err := n.startNS("kube-controller-manager", filepath.Join(n.cfg.BinDir, "kube-controller-manager"),
		"--kubeconfig="+n.path("kube-controller-manager.kubeconfig"),
		// Each controller under its own ServiceAccount, as in kubeadm; the
		// ServiceAccount controller creates "default" in every namespace and
		// the root CA publisher the kube-root-ca.crt ConfigMap.
		"--use-service-account-credentials",
		"--root-ca-file="+caFile,
		"--leader-elect=false",
		"--secure-port=0",
		"--v=1"); err != nil {
		return err
	}
	// The DaemonSet controller only sets node affinity; the scheduler binds.
	return n.startNS("kube-scheduler", filepath.Join(n.cfg.BinDir, "kube-scheduler"),
		"--kubeconfig="+n.path("kube-scheduler.kubeconfig"),
		"--leader-elect=false",
		"--secure-port=0",
		"--v=1")
}

// StartKubelet starts the kubelet (again, after StopKubelet) and waits until
// the Node is Ready.
func (n *Node) StartKubelet(ctx context.Context) error {
	if err := makeCgroupRoot(); err != nil {
		return err
	}
	if err := n.startNS("kubelet", filepath.Join(n.cfg.BinDir, "kubelet"),
		"--config="+n.path("kubelet.yaml"),
		"--kubeconfig="+n.path("kubelet.kubeconfig"),
		"--hostname-override="+n.Name,
		"--node-ip="+NodeIP.String(),
		"--root-dir="+n.path("kubelet"),
		"--cert-dir="+n.path("kubelet", "pki"),
		"--v=2"); err != nil {
		return err
	}
	return n.WaitReady(ctx, 90*time.Second)
}

// StopKubelet stops the kubelet; containers keep running.
func (n *Node) StopKubelet() {
	if p := n.Process("kubelet"); p != nil {
		p.Stop(10 * time.Second)
	}
}

// WaitReady waits until the Node reports Ready.
func (n *Node) WaitReady(ctx context.Context, timeout time.Duration) error {
	return poll(ctx, timeout, "node "+n.Name+" to be Ready", func() (bool, error) {
		if p := n.Process("kubelet"); p != nil {
			if done, err := p.Exited(); done {
				return false, fmt.Errorf("kubelet exited: %v; log:\n%s", err, p.LogTail(30))
			}
		}
		node, err := n.CP.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
}

// Stop undoes everything Start did. It is idempotent and runs its steps
// even when earlier ones fail.
func (n *Node) Stop() {
	n.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		for _, name := range []string{"kubelet", "kube-scheduler", "kube-controller-manager"} {
			if p := n.Process(name); p != nil {
				p.Stop(10 * time.Second)
			}
		}
		teardown(ctx, n.Dir, n.netnsSeen)
		if p := n.Process("containerd"); p != nil {
			p.Stop(10 * time.Second)
		}
		unmountUnder(n.Dir)
		removeCgroupRoot()
		if n.NS != nil {
			_ = n.NS.Close()
		}
		if n.proxy != nil {
			_ = n.proxy.Close()
		}
		if n.CP != nil {
			n.CP.Stop()
		}
		if st, err := readState(); err == nil {
			restoreSysctls(st.Sysctls)
		}
		_ = os.Remove(stateFile)
		if os.Getenv("CREDBROKER_NODE_KEEP") == "" {
			_ = os.RemoveAll(n.Dir)
		}
	})
}

func writeState(st state) error {
	if err := os.MkdirAll(filepath.Dir(stateFile), 0o700); err != nil {
		return err
	}
	b, _ := json.Marshal(st)
	if err := os.WriteFile(stateFile, b, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", stateFile, err)
	}
	return nil
}

func readState() (state, error) {
	var st state
	b, err := os.ReadFile(stateFile)
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

// undoStale undoes what a run that died before Stop left behind.
func undoStale(ctx context.Context) error {
	st, err := readState()
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", stateFile, err)
	}
	teardown(ctx, st.Dir, st.NetNS)
	unmountUnder(st.Dir)
	removeCgroupRoot()
	_ = netns.Cleanup(ctx, netnsName)
	restoreSysctls(st.Sysctls)
	_ = os.RemoveAll(st.Dir)
	return os.Remove(stateFile)
}

func restoreSysctls(m map[string]string) {
	for k, v := range m {
		_ = os.WriteFile("/proc/sys/"+k, []byte(v), 0o644)
	}
}

// poll calls cond until it reports true or an error, or timeout passes.
func poll(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
}
