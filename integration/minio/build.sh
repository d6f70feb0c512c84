#!/usr/bin/env bash
# build.sh builds the MinIO server that the e2e suite runs as an
# S3-compatible STS peer (AssumeRoleWithWebIdentity against the cluster's
# ServiceAccount issuer, and S3 for the credentials it issued), from the Go
# module proxy at the version pinned below, and prints the binary's path.
#
# The binary lives in ${CREDBROKER_CACHE:-$HOME/.cache/credbroker}/minio-<hash>,
# where <hash> covers the pin and the Go toolchain, as integration/k8sbin
# does: changing either builds anew, an unchanged pin skips the build. The
# first build takes about 5 minutes on 2 cores.
#
# Progress goes to stderr; stdout carries only the path. With --check it
# builds nothing: it prints the path and exits 1 if the binary is missing
# (the tests use this: a test must not start a 5-minute build).
set -euo pipefail

# github.com/minio/minio has no tagged Go module versions; this is the
# proxy's newest pseudo-version when the peer was added (its go.mod has no
# replace directives, so `go install module@version` builds it).
version=v0.0.0-20260212201848-7aac2a2c5b7c

cache=${CREDBROKER_CACHE:-$HOME/.cache/credbroker}
GO=${GO:-go}
hash=$({ echo "$version"; "$GO" env GOVERSION GOOS GOARCH; } | sha256sum | cut -c1-16)
out=$cache/minio-$hash

if [[ -x $out/minio ]]; then
	echo "$out/minio"
	exit 0
fi
if [[ ${1:-} == --check ]]; then
	echo "$out/minio"
	exit 1
fi
mkdir -p "$out"
echo "minio: building github.com/minio/minio@$version into $out (about 5 minutes on 2 cores)" >&2
start=$SECONDS
GOBIN=$out CGO_ENABLED=0 "$GO" install -trimpath "github.com/minio/minio@$version" >&2
echo "minio: built in $((SECONDS - start))s" >&2
echo "$out/minio"
