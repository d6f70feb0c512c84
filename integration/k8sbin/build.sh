#!/usr/bin/env bash
# build.sh builds the Kubernetes binaries that the integration tests and the
# demo run, from the versions pinned in this directory's go.mod, and prints
# the directory that holds them: kube-apiserver and etcd (control plane), and
# kubelet, kube-controller-manager and kube-scheduler (the node suite,
# integration/node), all from the same k8s.io/kubernetes module.
#
# The binaries live in ${CREDBROKER_CACHE:-$HOME/.cache/credbroker}/bin-<hash>,
# where <hash> covers go.mod, go.sum and the Go toolchain: changing a pin gives
# a new directory, so a stale binary is never picked up, and an unchanged pin
# skips the build entirely. The first build takes about 11 minutes on 2 cores
# for kube-apiserver and etcd, and a few more for the node's three binaries
# (they share most packages with kube-apiserver); with a warm Go build cache
# a rebuild takes seconds to a minute (linking). A directory that lacks some
# of the binaries (one built before the node's were added to the list) gets
# only the missing ones.
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

# Binary name → Go package. Adding one here makes "have" fail for existing
# directories, so the next build fills in the missing binary.
declare -A pkgs=(
	[kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
	[etcd]=go.etcd.io/etcd/server/v3
	[kubelet]=k8s.io/kubernetes/cmd/kubelet
	[kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
	[kube-scheduler]=k8s.io/kubernetes/cmd/kube-scheduler
)
# The order to build in: the control plane first, so that its suite's
# binaries are there soonest.
order=(kube-apiserver etcd kubelet kube-controller-manager kube-scheduler)

have() {
	local b
	for b in "${order[@]}"; do
		[[ -x $out/$b ]] || return 1
	done
}

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
mkdir -p "$out"
for b in "${order[@]}"; do
	[[ -x $out/$b ]] && continue
	echo "k8sbin: building $b into $out (kube-apiserver first: ~11 min on 2 cores)" >&2
	start=$SECONDS
	"$GO" build -o "$tmp/$b" "${pkgs[$b]}"
	# Each binary appears whole (rename within one filesystem), so a
	# concurrent --check never runs half a file; "have" holds only once the
	# last one is in.
	mv "$tmp/$b" "$out/$b"
	echo "k8sbin: built $b in $((SECONDS - start))s" >&2
done
echo "$out"
