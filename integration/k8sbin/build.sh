#!/usr/bin/env bash
# build.sh builds the kube-apiserver and etcd that the integration tests and
# the demo run, from the versions pinned in this directory's go.mod, and prints
# the directory that holds them.
#
# The binaries live in ${CREDBROKER_CACHE:-$HOME/.cache/credbroker}/bin-<hash>,
# where <hash> covers go.mod, go.sum and the Go toolchain: changing a pin gives
# a new directory, so a stale binary is never picked up, and an unchanged pin
# skips the build entirely. The first build takes about 11 minutes on 2 cores;
# with a warm Go build cache a rebuild takes seconds to a minute (linking).
#
# Progress goes to stderr; stdout carries only the directory, so callers can
# write  bindir=$(integration/k8sbin/build.sh).
#
# With --check it builds nothing: it prints the directory and exits 0 if both
# binaries are there, 1 if not (the tests use this: a test must not start an
# 11-minute build under go test's timeout).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${CREDBROKER_CACHE:-$HOME/.cache/credbroker}
GO=${GO:-go}

hash=$({ cat "$here/go.mod" "$here/go.sum"; "$GO" env GOVERSION GOOS GOARCH; } | sha256sum | cut -c1-16)
out=$cache/bin-$hash

have() { [[ -x $out/kube-apiserver && -x $out/etcd ]]; }

if have; then
	echo "$out"
	exit 0
fi
if [[ ${1:-} == --check ]]; then
	echo "$out"
	exit 1
fi

mkdir -p "$cache"
# Two callers (make demo in one terminal, the tests in another) must not run
# two 11-minute builds on 2 cores: the second waits for the first.
exec 9>"$cache/.build.lock"
flock 9
if have; then
	echo "$out"
	exit 0
fi

tmp=$(mktemp -d "$cache/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$here"
echo "k8sbin: building kube-apiserver (first build ~11 min on 2 cores) into $out" >&2
"$GO" build -o "$tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
echo "k8sbin: building etcd" >&2
"$GO" build -o "$tmp/etcd" go.etcd.io/etcd/server/v3
# Publish both at once, so that "have" never sees half a directory.
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "$out"
