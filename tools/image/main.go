package main

import (
	"archive/tar"
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/crypto/x509roots/fallback/bundle"
	"sigs.k8s.io/yaml"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	kind := fs.String("kind", "agent", "which image: agent, pause or workload")
	bin := fs.String("binary", "", "the static binary to pack (required)")
	out := fs.String("out", "", "where to write the image archive (required)")
	ref := fs.String("name", "", "image name:tag (default for -kind agent: the image deploy/daemonset/kustomization.yaml deploys)")
	kust := fs.String("kustomization", "deploy/daemonset/kustomization.yaml", "where the agent's default name comes from")
	arch := fs.String("arch", runtime.GOARCH, "the image's architecture (the binary's GOARCH)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	spec, ok := specs[*kind]
	if !ok {
		return fmt.Errorf("unknown -kind %q", *kind)
	}
	if *bin == "" || *out == "" {
		return errors.New("-binary and -out are required")
	}
	if *ref == "" {
		if *kind != "agent" {
			return errors.New("-name is required for -kind " + *kind)
		}
		var err error
		if *ref, err = KustomizeImage(*kust); err != nil {
			return err
		}
	}
	tag, err := name.NewTag(*ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("parsing image name %q: %w", *ref, err)
	}
	binary, err := os.ReadFile(*bin)
	if err != nil {
		return fmt.Errorf("reading binary: %w", err)
	}
	img, err := Build(spec, binary, *arch)
	if err != nil {
		return err
	}
	if err := tarball.WriteToFile(*out, tag, img); err != nil {
		return fmt.Errorf("writing %s: %w", *out, err)
	}
	fmt.Fprintf(os.Stderr, "image: wrote %s as %s\n", *out, tag)
	return nil
}

// KustomizeImage returns name:newTag of the first image a kustomization sets.
func KustomizeImage(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	var k struct {
		Images []struct {
			Name   string `json:"name"`
			NewTag string `json:"newTag"`
		} `json:"images"`
	}
	if err := yaml.Unmarshal(raw, &k); err != nil {
		return "", fmt.Errorf("parsing %s: %w", path, err)
	}
	if len(k.Images) == 0 || k.Images[0].Name == "" || k.Images[0].NewTag == "" {
		return "", fmt.Errorf("%s sets no image name and newTag", path)
	}
	return k.Images[0].Name + ":" + k.Images[0].NewTag, nil
}

// epoch is every file's and the image's time, so that the same binary always
// gives the same image digest.
var epoch = time.Unix(0, 0).UTC()

// Build returns the image for spec with binary at spec.Path.
func Build(spec Spec, binary []byte, arch string) (v1.Image, error) {
	layerTar, err := Layer(spec, binary)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("making layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("appending layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint = spec.Entrypoint
	cf.Config.User = strconv.Itoa(spec.UID) + ":" + strconv.Itoa(spec.GID)
	cf.Config.Env = append([]string{}, spec.Env...)
	if spec.CARoots {
		cf.Config.Env = append(cf.Config.Env, "SSL_CERT_FILE="+CAFile)
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("setting config: %w", err)
	}
	return img, nil
}

// Layer returns the image's single layer as an uncompressed tar.
func Layer(spec Spec, binary []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(p string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: p + "/", Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX})
	}
	file := func(p string, mode int64, data []byte, pax map[string]string) error {
		h := &tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Size: int64(len(data)), ModTime: epoch, PAXRecords: pax, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	var pax map[string]string
	if len(spec.Caps) > 0 {
		// The kernel reads file capabilities from this extended attribute;
		// containerd's tar applier sets SCHILY.xattr.* records as xattrs.
		pax = map[string]string{"SCHILY.xattr.security.capability": string(FileCaps(spec.Caps))}
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\n%s:x:%d:%d:%s:/nonexistent:/sbin/nologin\n", spec.UserName, spec.UID, spec.GID, spec.UserName)
	group := fmt.Sprintf("root:x:0:\n%s:x:%d:\n", spec.UserName, spec.GID)
	steps := []func() error{
		func() error { return file(spec.Path[1:], 0o755, binary, pax) },
		func() error { return dir("etc") },
		func() error { return file("etc/passwd", 0o644, []byte(passwd), nil) },
		func() error { return file("etc/group", 0o644, []byte(group), nil) },
	}
	if spec.CARoots {
		pemRoots, err := CARootsPEM()
		if err != nil {
			return nil, err
		}
		steps = append(steps,
			func() error { return dir("etc/ssl") },
			func() error { return dir("etc/ssl/certs") },
			func() error { return file(CAFile[1:], 0o644, pemRoots, nil) },
		)
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return nil, fmt.Errorf("writing layer: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("closing layer: %w", err)
	}
	return buf.Bytes(), nil
}

// FileCaps encodes capabilities as `setcap cap=p` stores them: struct
// vfs_cap_data revision 2 (linux/capability.h), little-endian: magic_etc
// (without the effective flag), then permitted and inheritable for each of
// the two 32-bit halves.
func FileCaps(caps []int) []byte {
	const vfsCapRevision2 = 0x02000000
	var permitted [2]uint32
	for _, c := range caps {
		permitted[c/32] |= 1 << (c % 32)
	}
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], vfsCapRevision2)
	binary.LittleEndian.PutUint32(b[4:], permitted[0])
	binary.LittleEndian.PutUint32(b[12:], permitted[1])
	return b
}

// CARootsPEM returns the Mozilla NSS roots that golang.org/x/crypto ships,
// as PEM. Roots with constraints a PEM file cannot express (distrust after
// a date) are left out rather than trusted without them.
func CARootsPEM() ([]byte, error) {
	var ders [][]byte
	for r := range bundle.Roots() {
		if r.Constraint != nil {
			continue
		}
		if _, err := x509.ParseCertificate(r.Certificate); err != nil {
			return nil, fmt.Errorf("parsing a bundled root: %w", err)
		}
		ders = append(ders, r.Certificate)
	}
	if len(ders) == 0 {
		return nil, errors.New("no CA roots in golang.org/x/crypto/x509roots/fallback/bundle")
	}
	// The bundle's order is stable already; sorting keeps the file stable
	// across bundle reorderings too.
	sort.Slice(ders, func(i, j int) bool { return bytes.Compare(ders[i], ders[j]) < 0 })
	var out bytes.Buffer
	for _, d := range ders {
		if err := pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: d}); err != nil {
			return nil, err
		}
	}
	return out.Bytes(), nil
}
