package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is a child process started by the harness in its own process
// group, with stdout and stderr appended to a log file. Stop signals the
// whole group, so helpers it started (moto's Python behind a pyenv shim, ip
// netns exec) go too; if the test binary itself dies, the kernel kills the
// child (Pdeathsig).
type Process struct {
	Name    string
	LogPath string
	Cmd     *exec.Cmd

	done    chan struct{}
	waitErr error
	stopMu  sync.Mutex
	// logStart is the log's size when this run began: the log is shared
	// with earlier runs, and only this run's lines tell why it exited.
	logStart int64
}

// StartProcess runs bin with args, logging to logPath (appended, so a
// restarted process keeps one log). env, when non-nil, replaces the
// environment.
func StartProcess(name, logPath string, env []string, bin string, args ...string) (*Process, error) {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, fmt.Errorf("creating log dir for %s: %w", name, err)
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening log for %s: %w", name, err)
	}
	var logStart int64
	if st, err := logf.Stat(); err == nil {
		logStart = st.Size()
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Process{Name: name, LogPath: logPath, Cmd: cmd, done: make(chan struct{}), logStart: logStart}
	go func() {
		p.waitErr = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Stop sends SIGTERM to the process group, waits up to grace, then sends
// SIGKILL. It is idempotent and returns once the process has exited.
func (p *Process) Stop(grace time.Duration) {
	p.stopMu.Lock()
	defer p.stopMu.Unlock()
	if done, _ := p.Exited(); done {
		p.killGroup() // leftovers of the group, if any
		return
	}
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.killGroup()
		<-p.done
	}
	p.killGroup()
}

// Kill sends SIGKILL to the process group and waits for the process.
func (p *Process) Kill() {
	p.stopMu.Lock()
	defer p.stopMu.Unlock()
	p.killGroup()
	<-p.done
}

func (p *Process) killGroup() { _ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL) }

// LogTail returns about the last n lines of the process's log.
func (p *Process) LogTail(n int) string { return tailFile(p.LogPath, n) }

func tailFile(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	const max = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size() > max {
		_, _ = f.Seek(st.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// exitError describes a process that died while the harness waited for it.
func (p *Process) exitError() error {
	_, err := p.Exited()
	return fmt.Errorf("%s exited (%v); last log lines:\n%s", p.Name, err, p.LogTail(30))
}

// FreePort returns a TCP port on host that was free a moment ago. Use it
// only for programs that cannot be told to pick their own port, and start
// them through withFreshPorts: until the program binds the port, anyone
// (another test package's server, any outgoing connection's local port) may
// take it.
func FreePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("finding a free port on %s: %w", host, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// pickPort is FreePort; a test replaces it to hold a picked port busy.
var pickPort = FreePort

// portAttempts bounds the starts withFreshPorts makes: each lost race
// needs another process to take one of a few random ports in the instant
// before the child binds it, so five losses in a row mean something else
// is wrong.
const portAttempts = 5

// withFreshPorts picks one port per host and calls start with them. start
// starts a child process that binds those ports and waits until it is
// ready. When the child exited because one of the ports was taken before
// it bound it, withFreshPorts tries again with fresh ports, up to
// portAttempts starts in all; any other error is returned at once.
func withFreshPorts(hosts []string, start func(ports []int) (*Process, error)) error {
	var err error
	for attempt := 1; attempt <= portAttempts; attempt++ {
		ports := make([]int, len(hosts))
		for i, h := range hosts {
			if ports[i], err = pickPort(h); err != nil {
				return err
			}
		}
		var p *Process
		if p, err = start(ports); err == nil || p == nil || !p.lostPortRace() {
			return err
		}
	}
	return fmt.Errorf("%d starts in a row lost a port to another process: %w", portAttempts, err)
}

// lostPortRace reports whether p has exited saying, in this run's log, that
// an address was already in use. Not every program names the port (MinIO
// does not), so any such exit counts: a port the caller fixed rather than
// picked fails again on every attempt and is reported after the last.
func (p *Process) lostPortRace() bool {
	if done, _ := p.Exited(); !done {
		return false
	}
	f, err := os.Open(p.LogPath)
	if err != nil {
		return false
	}
	defer f.Close()
	const max = 64 << 10
	from := p.logStart
	if st, err := f.Stat(); err == nil && st.Size()-from > max {
		from = st.Size() - max
	}
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return false
	}
	b, _ := io.ReadAll(f)
	return bytes.Contains(bytes.ToLower(b), []byte("already in use"))
}

// waitFor asks ready every interval until it says yes, p exits (its exit
// error) or timeout passes (an error with ready's last answer).
func waitFor(ctx context.Context, p *Process, timeout, interval time.Duration, ready func(context.Context) (bool, string)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok, last := ready(ctx)
		if ok {
			return nil
		}
		select {
		case <-p.Done():
			return p.exitError()
		case <-ctx.Done():
			return fmt.Errorf("%s not ready (last: %s): %w; log tail:\n%s", p.Name, last, ctx.Err(), p.LogTail(20))
		case <-time.After(interval):
		}
	}
}

// status200 is an HTTP answer as waitFor's ready wants it. It closes the
// body.
func status200(resp *http.Response, err error) (bool, string) {
	if err != nil {
		return false, err.Error()
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK, resp.Status
}

// ErrNotFound means a binary or directory the harness needs is missing.
var ErrNotFound = errors.New("harness: not found")

// RepoRoot returns the root of the credbroker work tree: the nearest
// directory at or above the working directory whose go.mod declares
// github.com/credbroker/agent. CREDBROKER_ROOT overrides.
func RepoRoot() (string, error) {
	if r := os.Getenv("CREDBROKER_ROOT"); r != "" {
		return r, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(bytes.TrimSpace(b), []byte("module github.com/credbroker/agent\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("%w: no go.mod of github.com/credbroker/agent above the working directory", ErrNotFound)
		}
		dir = parent
	}
}

// K8sBinDir returns the directory holding kube-apiserver and etcd: the
// CREDBROKER_K8S_BIN environment variable if set, else the cache directory
// integration/k8sbin/build.sh builds into. It never builds (that takes
// minutes): if the binaries are missing, it returns ErrNotFound and the
// command to run.
func K8sBinDir() (string, error) {
	if d := os.Getenv("CREDBROKER_K8S_BIN"); d != "" {
		return d, checkBins(d)
	}
	dir, built, err := buildCheck("integration/k8sbin/build.sh")
	if err != nil {
		return "", err
	}
	if !built {
		return dir, fmt.Errorf("%w: kube-apiserver and etcd are not built yet in %s; run `make k8sbin`", ErrNotFound, dir)
	}
	return dir, checkBins(dir)
}

// buildCheck runs a build script of the tree with --check, which prints
// where the build goes and exits 1 if it has not run yet.
func buildCheck(script string) (path string, built bool, err error) {
	root, err := RepoRoot()
	if err != nil {
		return "", false, err
	}
	out, err := exec.Command(filepath.Join(root, script), "--check").Output()
	path = strings.TrimSpace(string(out))
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return path, false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("running %s --check: %w", script, err)
	}
	return path, true, nil
}

func checkBins(dir string) error {
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return fmt.Errorf("%w: %s in %s; run `make k8sbin`", ErrNotFound, b, dir)
		}
	}
	return nil
}

// AgentBinary returns the path of bin/agent in the work tree, or ErrNotFound
// with the command that builds it. CREDBROKER_AGENT_BIN overrides.
func AgentBinary() (string, error) {
	p := os.Getenv("CREDBROKER_AGENT_BIN")
	if p == "" {
		root, err := RepoRoot()
		if err != nil {
			return "", err
		}
		p = filepath.Join(root, "bin/agent")
	}
	if _, err := os.Stat(p); err != nil {
		return p, fmt.Errorf("%w: agent binary %s; run `make build`", ErrNotFound, p)
	}
	return p, nil
}
