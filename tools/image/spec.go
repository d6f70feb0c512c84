// Command image writes the agent's container image, and the small images the
// node suite runs, as image archives that `ctr -n k8s.io images import` (and
// `docker load`) read: no Docker, no registry, no base image pulled.
//
// An image is one layer on an empty base: a static binary, its file
// capabilities as the security.capability extended attribute (a PAX record in
// the layer, which containerd's overlayfs snapshotter keeps), /etc/passwd and
// /etc/group naming the non-root user, and optionally CA roots. The Dockerfile
// describes the same agent image for people who build with Docker;
// spec_test.go checks that the two agree.
//
//	image -kind agent -binary bin/agent -out bin/agent-image.tar
//
// The image name defaults to the one deploy/daemonset/kustomization.yaml
// deploys (name:newTag), so that a DaemonSet applied from it finds the image
// already present and pulls nothing.
package main

// Spec describes one single-layer image.
type Spec struct {
	// Path is where the binary lives in the image, e.g. /agent.
	Path string
	// Entrypoint is the image's entrypoint; Path alone for every image here.
	Entrypoint []string
	// UID and GID the image runs as (its config's User, "UID:GID").
	UID, GID int
	// UserName names UID in /etc/passwd and /etc/group.
	UserName string
	// Caps are the file capabilities set on the binary, permitted only
	// (like `setcap cap_x,cap_y=p`), as capability numbers: the kernel
	// grants those the container's bounding set holds, and the agent makes
	// them effective itself (cmd/agent/caps.go). With the effective flag
	// the kernel would refuse to run the binary where the bounding set
	// lacks one of them.
	Caps []int
	// CARoots writes the Mozilla roots to CAFile and sets SSL_CERT_FILE.
	CARoots bool
	// Env is the image's environment besides SSL_CERT_FILE.
	Env []string
}

// Capability numbers from linux/capability.h.
const (
	capNetBindService = 10
	capSysPtrace      = 19
)

// CAFile is where the CA bundle goes, the path Debian, distroless and Go's
// crypto/x509 use.
const CAFile = "/etc/ssl/certs/ca-certificates.crt"

// specs are the images this tool writes, by -kind.
var specs = map[string]Spec{
	// The agent, as the Dockerfile builds it: it binds port 80 as a non-root
	// user through its file capability (see deploy/daemonset/daemonset.yaml),
	// reads other processes' fd tables with --attest=container (SYS_PTRACE,
	// granted only where the DaemonSet adds it to the bounding set), and
	// calls STS over HTTPS, so it needs CA roots.
	"agent": {
		Path: "/agent", Entrypoint: []string{"/agent"},
		UID: 64023, GID: 64023, UserName: "credbroker",
		Caps:    []int{capNetBindService, capSysPtrace},
		CARoots: true,
	},
	// The pod sandbox image containerd names in its config (tools/pause).
	"pause": {
		Path: "/pause", Entrypoint: []string{"/pause"},
		UID: 65535, GID: 65535, UserName: "pause",
	},
	// A workload: an aws-sdk-go-v2 client (integration/node/workload).
	"workload": {
		Path: "/workload", Entrypoint: []string{"/workload"},
		UID: 1000, GID: 1000, UserName: "workload",
		CARoots: true,
	},
}
