package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/credbroker/agent/integration/netns"
)

// PodCgroupParent is where attestable pods' processes are placed: cgroup v1
// directories named as the kubelet's cgroupfs driver names them
// (kubepods/besteffort/pod<uid>/<container>), below a harness-only parent
// so that a kubelet running on this machine (the real-node tests), which
// removes pod cgroups it does not know under its own kubepods tree, leaves
// them alone.
const PodCgroupParent = "/sys/fs/cgroup/pids/credbroker-harness/kubepods/besteffort"

// sandbox is an attestable pod's process: a cat reading a pipe the harness
// holds, in the pod's network namespace and in its pod cgroup, as a pod's
// pause process is, so that an agent with --attest=netns finds the pod's
// namespace from its UID. It exits when the harness process does (its
// stdin closes), however that ends: a leftover would keep the pod cgroup,
// and any file descriptor it inherited, such as a flock(1) lock held by a
// test run, alive.
type sandbox struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	dir   string
}

func startSandbox(ns *netns.Namespace, uid types.UID) (*sandbox, error) {
	podDir := filepath.Join(PodCgroupParent, "pod"+string(uid))
	dir := filepath.Join(podDir, "sandbox")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the pod cgroup: %w", err)
	}
	cmd := ns.Exec(context.Background(), "cat")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		_ = os.Remove(dir)
		_ = os.Remove(podDir)
		return nil, fmt.Errorf("starting the pod's sandbox process: %w", err)
	}
	s := &sandbox{cmd: cmd, stdin: stdin, dir: dir}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		s.stop()
		return nil, fmt.Errorf("placing the sandbox process in its pod cgroup: %w", err)
	}
	// Until ip has exec'd cat in the namespace, the process's network
	// namespace is the host's.
	deadline := time.Now().Add(5 * time.Second)
	for {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid))
		if strings.HasSuffix(exe, "/cat") {
			return s, nil
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Errorf("the sandbox process did not start cat (exe %q)", exe)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stop kills the process and removes its cgroups.
func (s *sandbox) stop() error {
	if s == nil {
		return nil
	}
	_ = s.stdin.Close()
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	return errors.Join(os.Remove(s.dir), os.Remove(filepath.Dir(s.dir)))
}

// StopSandbox kills an attestable pod's process (its sandbox is gone, as
// after a node reboot or with the kubelet paused) and leaves the API
// object and the network namespace as they are.
func (p *Pod) StopSandbox() error {
	err := p.sandbox.stop()
	p.sandbox = nil
	return err
}

// StopSandboxes stops the processes of every live pod (not concurrently
// with Delete or StopSandbox), for callers that
// remove the namespaces themselves (netns.Cleanup) rather than through
// Delete or Close.
func (ps *Pods) StopSandboxes() {
	ps.mu.Lock()
	live := make([]*Pod, 0, len(ps.live))
	for p := range ps.live {
		live = append(live, p)
	}
	ps.mu.Unlock()
	for _, p := range live {
		_ = p.StopSandbox()
	}
}
