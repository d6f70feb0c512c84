package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// dockerfile is what the Dockerfile's final stage says about the image.
type dockerfile struct {
	user       string   // USER
	entrypoint []string // ENTRYPOINT, exec form
	copyDst    string   // where COPY --from=build puts bin/agent
	setcap     string   // the setcap argument on bin/agent, e.g. cap_net_bind_service,cap_sys_ptrace=p
	env        []string // ENV KEY=VALUE
}

func parseDockerfile(t *testing.T, path string) dockerfile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var d dockerfile
	var final bool
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if i := strings.Index(line, "setcap "); i >= 0 && strings.Contains(line, "bin/agent") {
			d.setcap = strings.Fields(line[i:])[1]
		}
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(line, "#") {
			continue
		}
		switch fields[0] {
		case "FROM":
			// The last FROM starts the image that ships; earlier stages build.
			final = !strings.Contains(line, " AS ")
		case "USER":
			if final {
				d.user = fields[1]
			}
		case "ENTRYPOINT":
			if final {
				if err := json.Unmarshal([]byte(strings.TrimSpace(strings.TrimPrefix(line, "ENTRYPOINT"))), &d.entrypoint); err != nil {
					t.Fatalf("ENTRYPOINT is not in exec form: %v", err)
				}
			}
		case "ENV":
			if final {
				d.env = append(d.env, fields[1:]...)
			}
		case "COPY":
			if final && len(fields) == 4 && fields[1] == "--from=build" && strings.HasSuffix(fields[2], "/bin/agent") {
				d.copyDst = fields[3]
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDockerfileMatchesSpec: the Dockerfile and this tool describe the same
// agent image (user, entrypoint, binary path, file capability, CA path).
func TestDockerfileMatchesSpec(t *testing.T) {
	d := parseDockerfile(t, "../../Dockerfile")
	s := specs["agent"]
	if want := strconv.Itoa(s.UID) + ":" + strconv.Itoa(s.GID); d.user != want {
		t.Errorf("Dockerfile USER %q, image tool %q", d.user, want)
	}
	if !slices.Equal(d.entrypoint, s.Entrypoint) {
		t.Errorf("Dockerfile ENTRYPOINT %q, image tool %q", d.entrypoint, s.Entrypoint)
	}
	if d.copyDst != s.Path {
		t.Errorf("Dockerfile copies the agent to %q, image tool to %q", d.copyDst, s.Path)
	}
	if d.setcap != "cap_net_bind_service,cap_sys_ptrace=p" || !slices.Equal(s.Caps, []int{capNetBindService, capSysPtrace}) {
		t.Errorf("Dockerfile setcap %q, image tool caps %v", d.setcap, s.Caps)
	}
	if !s.CARoots || !slices.Contains(d.env, "SSL_CERT_FILE="+CAFile) {
		t.Errorf("Dockerfile ENV %q, image tool CA roots %v at %s", d.env, s.CARoots, CAFile)
	}
}

// TestDaemonSetRunsAsImageUser: the DaemonSet's agent container runs as the
// image's user (rolling updates need every agent under one UID).
func TestDaemonSetRunsAsImageUser(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/daemonset/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := specs["agent"]
	for _, want := range []string{"runAsUser: " + strconv.Itoa(s.UID), "runAsGroup: " + strconv.Itoa(s.GID)} {
		if !bytes.Contains(raw, []byte(want)) {
			t.Errorf("daemonset.yaml lacks %q", want)
		}
	}
}

func TestKustomizeImage(t *testing.T) {
	got, err := KustomizeImage("../../deploy/daemonset/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got, "ghcr.io/credbroker/agent:") || strings.HasSuffix(got, ":latest") {
		// A :latest tag would make the kubelet pull (imagePullPolicy Always).
		t.Errorf("KustomizeImage = %q", got)
	}
}

// TestLayer: the layer holds the binary with its capability xattr, the user
// and the roots, and the image config names the user and entrypoint.
func TestLayer(t *testing.T) {
	s := specs["agent"]
	img, err := Build(s, []byte("binary"), "amd64")
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "64023:64023" || !slices.Equal(cf.Config.Entrypoint, []string{"/agent"}) || cf.OS != "linux" {
		t.Errorf("config: user %q entrypoint %q os %q", cf.Config.User, cf.Config.Entrypoint, cf.OS)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]*tar.Header{}
	contents := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = h
		contents[h.Name], _ = io.ReadAll(tr)
	}
	bin := files["agent"]
	if bin == nil || string(contents["agent"]) != "binary" || bin.Mode != 0o755 {
		t.Fatalf("agent binary missing or wrong: %+v", bin)
	}
	if got := bin.PAXRecords["SCHILY.xattr.security.capability"]; got != string(FileCaps([]int{capNetBindService, capSysPtrace})) {
		t.Errorf("capability xattr %x", got)
	}
	if !bytes.Contains(contents["etc/passwd"], []byte(":64023:64023:")) {
		t.Errorf("passwd %q", contents["etc/passwd"])
	}
	if n := bytes.Count(contents[CAFile[1:]], []byte("BEGIN CERTIFICATE")); n < 100 {
		t.Errorf("%d CA roots", n)
	}
}

// TestFileCapsMatchesSetcap: FileCaps gives the bytes setcap(8) writes.
// Needs root and setcap; skipped otherwise (the constant below holds the
// same bytes, checked once on a machine that had both).
func TestFileCapsMatchesSetcap(t *testing.T) {
	// cap_net_bind_service (bit 10) and cap_sys_ptrace (bit 19),
	// permitted, no effective flag.
	want := []byte{0, 0, 0, 0x02, 0, 0x04, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	if got := FileCaps([]int{capNetBindService, capSysPtrace}); !bytes.Equal(got, want) {
		t.Fatalf("FileCaps = %x, want %x", got, want)
	}
	setcap, err := exec.LookPath("setcap")
	if err != nil || os.Geteuid() != 0 {
		t.Skip("needs root and setcap (libcap2-bin)")
	}
	f := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(f, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(setcap, "cap_net_bind_service,cap_sys_ptrace=p", f).CombinedOutput(); err != nil {
		t.Fatalf("setcap: %v: %s", err, out)
	}
	buf := make([]byte, 64)
	n, err := unix.Getxattr(f, "security.capability", buf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf[:n], want) {
		t.Errorf("setcap wrote %x, FileCaps gives %x", buf[:n], want)
	}
}
