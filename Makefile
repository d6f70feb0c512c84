# The one place the agent's build command lives: the Dockerfile runs
# `make build` too, so the image and a local build cannot drift.
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: build test vet demo bench image
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/agent ./cmd/agent

# The agent's image archive, bin/agent-image.tar, named as
# deploy/daemonset/kustomization.yaml deploys it, without Docker or a
# registry: the binary above on an empty base with its cap_net_bind_service
# file capability, UID 64023 and CA roots (tools/image; the Dockerfile builds
# the same image with Docker). Import with `ctr -n k8s.io images import`.
image: build
	$(GO) run ./tools/image -kind agent -binary bin/agent -out bin/agent-image.tar

# gofmt and go vet, over the integration-tagged files too.
vet:
	@out=$$(gofmt -l cmd pkg internal integration bench tools examples); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags integration ./integration/...
	cd integration/chart && $(GO) vet -mod=mod ./... && $(GO) vet -mod=mod -tags integration ./...

# Unit tests with the race detector, then the integration suite (root only:
# network namespaces; under CI=true it fails rather than skips without them).
test: vet sdk-deps
	$(GO) test -race -count=1 ./...
	$(MAKE) fuzz
	$(MAKE) test-chart
	$(MAKE) test-integration
	$(MAKE) test-node

# --- The Helm chart (deploy/helm/credbroker), its alert rules and its
# dashboard, tested from integration/chart: a module of its own, so that
# helm, kustomize's API and prometheus stay out of the agent's go.mod. Unit
# tests: helm lint and template over a matrix of values, the chart against
# the kustomize base object by object, every PromQL expression parsed, and
# promtool's rule unit tests. Its integration tests (a server-side dry run
# with the Prometheus Operator's CRDs, the metric names a running agent
# exports) run in test-integration.
.PHONY: promtool alerts test-chart

# promtool from the Prometheus module integration/chart pins, built once and
# cached by the hash of integration/chart/go.{mod,sum}; prints its path.
promtool:
	@integration/chart/promtool.sh >/dev/null

# promtool check and test of the alert rules alone.
alerts: promtool
	cd integration/chart && p=$$(./promtool.sh) && $$p check rules ../../deploy/helm/credbroker/files/credbroker.rules.yaml && $$p test rules testdata/alerts_test.yaml

# -mod=mod here and below: the module builds the agent's packages from this
# work tree (replace ../..), so a dependency the agent's go.mod adds or bumps
# is taken in here too instead of failing with "updates to go.mod needed".
test-chart: promtool
	cd integration/chart && $(GO) test -mod=mod -count=1 ./...

# A bounded fuzzing run of the request path (raw bytes on a connection to
# the answer; cmd/agent/fuzz_test.go). New failures land in
# cmd/agent/testdata/fuzz as regression seeds. FUZZTIME=0 skips it.
FUZZTIME ?= 20s
.PHONY: fuzz
fuzz:
	@if [ "$(FUZZTIME)" != 0 ]; then $(GO) test -run='^$$' -fuzz=FuzzRequestPath -fuzztime=$(FUZZTIME) ./cmd/agent; fi

# --- Integration (root only): a real kube-apiserver + etcd built from their
# Go modules, moto and our own STS on this machine, pods simulated in network
# namespaces, and the real AWS SDK clients. See integration/harness/doc.go.
.PHONY: k8sbin integration-deps test-integration

# Builds kube-apiserver and etcd once (about 11 minutes on 2 cores), cached by
# the hash of integration/k8sbin/go.{mod,sum}; later runs print the path.
k8sbin:
	@integration/k8sbin/build.sh

# MinIO, the S3-compatible STS peer of the e2e suite (S3WithMinIO), built
# once from the Go module proxy (about 5 minutes on 2 cores) and cached by
# the hash of its pin and the toolchain, as k8sbin is.
.PHONY: minio
minio:
	@integration/minio/build.sh >/dev/null

# The JavaScript SDKs the tests run (integration/sdk/js* each hold one
# client's committed lock): unit tests of the surfaces use them too.
.PHONY: sdk-deps
sdk-deps:
	@for d in integration/sdk/js*/; do echo "npm ci in $$d"; (cd $$d && npm ci --no-audit --no-fund --loglevel=error) || exit 1; done

# Everything the integration tests run besides the agent: k8sbin, MinIO, the JS SDKs
# (sdk-deps), and the Python tools that come with the machine image (moto,
# AWS CLI v1, boto3), checked here.
integration-deps: k8sbin minio sdk-deps
	@command -v moto_server >/dev/null || { echo "moto_server not found (pip package moto[server])"; exit 1; }
	@command -v aws >/dev/null || { echo "aws (AWS CLI v1) not found (pip package awscli)"; exit 1; }
	@python3 -c 'import boto3' || { echo "python3 cannot import boto3"; exit 1; }
	@command -v jq >/dev/null || { echo "jq not found (Debian package jq; integration/audit runs the issue's jq pipeline)"; exit 1; }

# `agent audit` on its own (integration/audit, part of test-integration
# too): the seeded cluster, the jq comparison, deploy/audit's RBAC and the
# 10,000-pod scale run (AUDIT_SCALE=small: a fifth of it). About 2.5 minutes.
.PHONY: test-audit
test-audit: build k8sbin
	@command -v jq >/dev/null || { echo "jq not found (Debian package jq)"; exit 1; }
	$(GO) test -tags integration -count=1 -timeout 10m -v ./integration/audit/

# The node suite (integration/node) runs on its own after this one, in
# test-node: both would otherwise compete for the same 2 cores.
test-integration: build integration-deps
	$(GO) test -tags integration -count=1 -timeout 40m $$($(GO) list -tags integration ./integration/... | grep -v '/integration/node$$')
	cd integration/chart && $(GO) test -mod=mod -tags integration -count=1 -timeout 10m -run 'TestServerSideDryRun|TestExportedMetrics' ./...

# --- The node suite (root only): a real kubelet, containerd, runc and CNI
# bridge in a network namespace of their own, the DaemonSet applied with
# kubectl apply -k and real workload containers. See integration/node.
.PHONY: node-images test-node

# The pause (sandbox) and workload images the node suite imports, packed
# like the agent's.
node-images: image
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o bin/pause ./tools/pause
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o bin/workload ./integration/node/workload
	$(GO) run ./tools/image -kind pause -binary bin/pause -name localhost/credbroker/pause:test -out bin/pause-image.tar
	$(GO) run ./tools/image -kind workload -binary bin/workload -name localhost/credbroker/workload:test -out bin/workload-image.tar

test-node: node-images k8sbin
	$(GO) test -tags integration -count=1 -timeout 15m -v ./integration/node/

# A local control plane, the clouds' verifying peers, the agent, the webhook
# and a simulated pod with no variables in its manifest whose AWS CLI,
# google-auth and azure-identity get credentials, and which calls a second
# pod with a /v1/token token. Root only; Ctrl-C cleans up.
demo: build k8sbin
	$(GO) build -o bin/demo ./integration/demo
	bin/demo

# The scale run (root only, about 10 minutes on 2 cores; not part of `make
# test`): 250 real agents, one per simulated node, against one
# kube-apiserver + etcd holding 25,000 pods; the API server's own metrics
# before, during and after start, steady state and a rollout wave. Prints a
# table, writes bench/out/scale.json; docs/upstream-cost.md ("Measured at
# scale") has the figures. SCALE_FLAGS resizes it (-nodes, -pods-per-node,
# -wave, -rbac broad, ...); integration/scale's TestTiny runs it small in
# test-integration.
.PHONY: scale
SCALE_FLAGS ?=
scale: build k8sbin
	$(GO) run -tags integration ./integration/scale/cmd/scale -out bench/out/scale.json $(SCALE_FLAGS)

# Benchmark suite (root only, a few minutes; not part of `make test`): the
# agent against a floor server under the same load generator, cold start,
# simultaneous first requests, memory per pod and upstream calls. Writes
# docs/benchmarks.md and its plot; raw results go to bench/out/.
bench: build k8sbin
	$(GO) build -o bin/bench ./bench/cmd/bench
	$(GO) build -o bin/bench-floor ./bench/cmd/floor
	bin/bench -agent bin/agent -floor bin/bench-floor -out bench/out \
		-doc docs/benchmarks.md -png docs/benchmarks-latency.png
	cd bench/plot && $(GO) run . -in ../out/sweep.json -out ../../docs/benchmarks-latency.png
