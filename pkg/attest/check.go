package attest

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Status is what the start-up check found.
type Status struct {
	// Available is false when attestation cannot work on this node: every
	// request would be refused.
	Available bool
	// Detail says why, or what is partly missing, in a sentence.
	Detail string
	// Pods and PodsWithProcess count the informer's live pods and those
	// with a process found in /proc.
	Pods, PodsWithProcess int
	// Processes is how many processes the scan read.
	Processes int
}

// Check finds out, once the informer has synced, whether attestation can
// work here: the agent must share the host PID namespace, the kernel's
// tables must be readable, and the running pods' processes must be
// visible under cgroups named after their UIDs (sandboxed runtimes such as
// gVisor or Kata hide them). It logs the outcome, sets
// credbroker_attest_available and keeps the Status for LastStatus. It also
// fills the per-pod cache, so no request pays for the first scan.
func (a *Attester) Check(ctx context.Context) Status {
	st := a.check()
	a.status.Store(&st)
	if st.Available {
		a.m.available.Set(1)
		a.log.LogAttrs(ctx, slog.LevelInfo, "attestation available", slog.String("detail", st.Detail),
			slog.Int("pods", st.Pods), slog.Int("pods_with_process", st.PodsWithProcess), slog.Int("processes", st.Processes))
	} else {
		a.m.available.Set(0)
		a.log.LogAttrs(ctx, slog.LevelError, "attestation cannot work on this node; every credential request will be refused",
			slog.String("detail", st.Detail), slog.Int("pods", st.Pods), slog.Int("pods_with_process", st.PodsWithProcess),
			slog.Int("processes", st.Processes))
	}
	return st
}

// LastStatus returns the last Check's result, or nil before the first.
func (a *Attester) LastStatus() *Status { return a.status.Load() }

func (a *Attester) check() Status {
	var buf [4096]byte
	b, err := readFileInto(a.root+"/self/status", buf[:])
	if err != nil {
		return Status{Detail: fmt.Sprintf("cannot read %s/self/status: %v", a.root, err)}
	}
	if i := bytes.Index(b, []byte("\nNSpid:")); i >= 0 {
		line := b[i+len("\nNSpid:"):]
		if j := bytes.IndexByte(line, '\n'); j >= 0 {
			line = line[:j]
		}
		if n := len(bytes.Fields(line)); n > 1 {
			return Status{Detail: fmt.Sprintf("the agent runs in its own PID namespace (NSpid:%s), so it cannot see the pods' processes: run it with hostPID: true, or --attest=off", line)}
		}
	}
	if _, err := readFileInto(a.root+"/self/net/tcp", buf[:]); err != nil {
		return Status{Detail: fmt.Sprintf("cannot read %s/self/net/tcp: %v", a.root, err)}
	}
	procs, err := a.scan()
	if err != nil {
		return Status{Detail: fmt.Sprintf("cannot scan %s: %v", a.root, err)}
	}
	pods := a.pods.LivePods()
	with := 0
	a.mu.Lock()
	for _, p := range pods {
		if a.procs[p.UID] != nil {
			with++
		}
	}
	a.mu.Unlock()
	st := Status{Available: true, Pods: len(pods), PodsWithProcess: with, Processes: procs}
	if a.cpods != nil {
		if detail, ok := a.checkContainers(); !ok {
			st.Available, st.Detail = false, detail
			return st
		}
		if err := a.pidx.refresh(context.Background(), a.root, time.Now(), true, 0); err != nil {
			st.Available, st.Detail = false, fmt.Sprintf("--attest=container cannot list %s: %v", a.root, err)
			return st
		}
	}
	switch {
	case len(pods) == 0:
		st.Detail = "no running pod on this node yet; the cgroup layout is checked on the first connection"
	case with == 0:
		st.Available = false
		st.Detail = fmt.Sprintf("none of the %d running pods on this node has a process visible in %s/*/cgroup under a cgroup named after its UID (a sandboxed runtime such as gVisor or Kata, an unknown cgroup layout, or a proc root that is not the host's)", len(pods), a.root)
	case with < len(pods):
		st.Detail = fmt.Sprintf("%d of %d running pods have no visible process (sandboxed runtime, or just starting); their requests are refused until one shows", len(pods)-with, len(pods))
	default:
		st.Detail = fmt.Sprintf("all %d running pods have a visible process", len(pods))
	}
	return st
}
