# syntax=docker/dockerfile:1
#
# The credbroker node agent: a static binary on distroless, non-root, no
# shell. The binary is built by `make build`, the same command as a local
# build, so the build flags live in the Makefile only.
#
#   docker buildx build --build-arg VERSION=$(git describe --tags --always) \
#     --platform linux/amd64,linux/arm64 -t ghcr.io/credbroker/agent:<tag> .

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
# setcap (libcap2-bin) for the file capability below; make is in the image
# already, installed here too so that a slimmer base cannot break the build.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# .git is not in the build context (.dockerignore), so the version comes in as
# a build argument; the Makefile's VERSION default would say "dev".
ARG VERSION=dev
ARG TARGETOS
ARG TARGETARCH
# make passes GOOS and GOARCH through its environment to `go build`.
# The agent binds port 80 as a non-root user, and with --attest=container
# reads other processes' fd tables. Kubernetes grants no ambient
# capabilities, so NET_BIND_SERVICE (and SYS_PTRACE) in the pod's
# securityContext alone do not reach a non-root process: the binary carries
# them as file capabilities, which the kernel grants on exec as far as the
# container's bounding set (capabilities.add) allows. Permitted only (=p, no
# effective flag): with the flag, the kernel would refuse to run the binary
# where the bounding set lacks SYS_PTRACE (--attest=netns); the agent makes
# what it was granted effective itself (cmd/agent/caps.go). getcap fails
# the build if they did not stick.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    GOOS=$TARGETOS GOARCH=$TARGETARCH make build VERSION=$VERSION \
 && setcap cap_net_bind_service,cap_sys_ptrace=p bin/agent \
 && getcap bin/agent | grep -q cap_net_bind_service,cap_sys_ptrace

FROM gcr.io/distroless/static-debian12:nonroot
# BuildKit (Docker 23 and later, buildx, buildah) keeps the
# security.capability extended attribute across COPY --from; the legacy
# builder drops it, and the agent then fails to bind port 80 with
# "permission denied".
COPY --from=build /src/bin/agent /agent
# The DaemonSet runs the agent as this UID (deploy/daemonset/daemonset.yaml:
# one dedicated UID for every agent, so that old and new agents can share
# their SO_REUSEPORT sockets during a rollout).
USER 64023:64023
# distroless keeps its CA roots here; the image that `make image` writes
# (tools/image) puts them at the same path.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
ENTRYPOINT ["/agent"]
