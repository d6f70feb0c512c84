#!/usr/bin/env bash
# promtool.sh builds promtool from github.com/prometheus/prometheus at the
# version pinned in this directory's go.mod (the same one whose PromQL parser
# the tests use) and prints its path on stdout; progress goes to stderr.
#
# Cached like integration/k8sbin/build.sh: in
# ${CREDBROKER_CACHE:-$HOME/.cache/credbroker}/promtool-<hash>, where <hash>
# covers go.mod, go.sum and the Go toolchain, so a changed pin builds anew and
# an unchanged one skips the build. The first build takes a few minutes on 2
# cores; with a warm Go build cache, seconds. With --check it builds nothing: it prints
# the path and exits 1 if the binary is not there.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${CREDBROKER_CACHE:-$HOME/.cache/credbroker}
GO=${GO:-go}

# remove_all_sd leaves out Prometheus' service-discovery plugins (the AWS,
# Azure, GCE, ... SDKs), which rule checks and tests never use: they are
# most of promtool's build time. No -trimpath and no CGO_ENABLED=0: built like
# `go test` builds this module, promtool reuses the packages the tests
# compiled (client-go, the Prometheus parser and model, ...).
flags=(-tags remove_all_sd -ldflags '-s -w')
hash=$({ cat "$here/go.mod" "$here/go.sum"; "$GO" env GOVERSION GOOS GOARCH; echo "${flags[*]}"; } | sha256sum | cut -c1-16)
out=$cache/promtool-$hash
bin=$out/promtool

if [[ -x $bin ]]; then
	echo "$bin"
	exit 0
fi
if [[ ${1:-} == --check ]]; then
	echo "$bin"
	exit 1
fi

mkdir -p "$cache"
exec 9>"$cache/.promtool.lock"
flock 9
if [[ -x $bin ]]; then
	echo "$bin"
	exit 0
fi
tmp=$(mktemp -d "$cache/.promtool-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "promtool: building into $out" >&2
start=$SECONDS
(cd "$here" && "$GO" build -mod=mod "${flags[@]}" -o "$tmp/promtool" github.com/prometheus/prometheus/cmd/promtool)
mkdir -p "$out"
mv "$tmp/promtool" "$bin"
echo "promtool: built in $((SECONDS - start)) s" >&2
echo "$bin"
