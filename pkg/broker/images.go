package broker

import (
	"fmt"
	"strings"

	"github.com/credbroker/agent/pkg/podresolve"
)

// ServiceAccount annotations restricting which containers may use its
// identities. They are checked only where the agent knows the calling
// container (--attest=container, which sets podresolve.Pod.Container).
const (
	// AnnotationAllowedImages lists, comma-separated, the images whose
	// containers may use the ServiceAccount's identities: digests
	// ("sha256:<hex>", matched against the container's status.imageID) or
	// repository globs ("registry.example/team/*", matched against the
	// repository of status.image and of status.imageID; * matches any
	// run of characters, / included). Without container attestation an
	// account that sets it gets nothing: the agent cannot tell which
	// image asks.
	AnnotationAllowedImages = "credbroker.io/allowed-images"
	// AnnotationAllowEphemeral, "true", lets ephemeral containers (kubectl
	// debug) use the ServiceAccount's identities; they are refused
	// otherwise.
	AnnotationAllowEphemeral = "credbroker.io/allow-ephemeral-containers"
)

// checkContainer applies the ServiceAccount's container rules (the values
// of AnnotationAllowedImages and AnnotationAllowEphemeral, "" when unset)
// to the calling container. Messages name the container, its image and the
// annotation: nothing secret.
func checkContainer(pod podresolve.Pod, images, ephemeral string) error {
	c := pod.Container
	if c != nil && c.Kind == podresolve.ContainerEphemeral && ephemeral != "true" {
		return &Refusal{Code: CodeEphemeralNotAllowed,
			Message: fmt.Sprintf("ephemeral container %s of pod %s/%s (kubectl debug) may not use the identities of ServiceAccount %s/%s: set its annotation %s: \"true\" to allow it",
				c.Name, pod.Namespace, pod.Name, pod.Namespace, pod.ServiceAccount, AnnotationAllowEphemeral)}
	}
	if images == "" {
		return nil
	}
	if c == nil {
		return &Refusal{Code: CodeImageNotAllowed,
			Message: fmt.Sprintf("ServiceAccount %s/%s limits its identities to the images its %s annotation lists, and this agent runs without container attestation (--attest=container), so it cannot tell which image asks",
				pod.Namespace, pod.ServiceAccount, AnnotationAllowedImages)}
	}
	if imageAllowed(images, c) {
		return nil
	}
	return &Refusal{Code: CodeImageNotAllowed,
		Message: fmt.Sprintf("container %s of pod %s/%s runs image %s (%s), which the %s annotation of ServiceAccount %s/%s does not list",
			c.Name, pod.Namespace, pod.Name, c.Image, c.ImageID, AnnotationAllowedImages, pod.Namespace, pod.ServiceAccount)}
}

// imageAllowed reports whether one of the comma-separated entries of list
// admits the container's image.
func imageAllowed(list string, c *podresolve.Container) bool {
	digest := imageDigest(c.ImageID)
	repos := []string{repository(c.Image), repository(stripScheme(c.ImageID))}
	for e := range strings.SplitSeq(list, ",") {
		e = strings.TrimSpace(e)
		switch {
		case e == "":
		case strings.HasPrefix(e, "sha256:"):
			if digest != "" && strings.EqualFold(e, digest) {
				return true
			}
		default:
			for _, r := range repos {
				if r != "" && globMatch(e, r) {
					return true
				}
			}
		}
	}
	return false
}

// stripScheme drops a runtime's scheme from an image ID
// ("docker-pullable://repo@sha256:...").
func stripScheme(id string) string {
	if i := strings.Index(id, "://"); i >= 0 {
		return id[i+3:]
	}
	return id
}

// imageDigest returns the sha256:... digest of an image ID: after its @,
// or the whole ID when it is a bare digest (an image without a repository
// digest, such as one imported locally).
func imageDigest(id string) string {
	id = stripScheme(id)
	if i := strings.LastIndexByte(id, '@'); i >= 0 {
		id = id[i+1:]
	}
	if strings.HasPrefix(id, "sha256:") {
		return id
	}
	return ""
}

// repository returns an image reference without its digest and tag
// ("registry.example/team/app:v1@sha256:..." → "registry.example/team/app");
// "" for a bare digest.
func repository(ref string) string {
	if i := strings.IndexByte(ref, '@'); i >= 0 {
		ref = ref[:i]
	}
	if strings.HasPrefix(ref, "sha256:") {
		return ""
	}
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		ref = ref[:i]
	}
	return ref
}
