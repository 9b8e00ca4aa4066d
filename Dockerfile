# toposnap's one image: the six static binaries under /usr/local/bin, no
# entrypoint (the chart names each container's command), user 65532:65532
# (the node plugin's pod runs it as root). The same layout as
# hack/image.sh's tarball, which needs no Docker engine.
#
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) -t ghcr.io/toposnap/toposnap:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 ...

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS=linux
ARG TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Built as hack/image.sh builds them, cross-compiled for the target platform.
RUN CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} go build -trimpath -buildvcs=false -ldflags="-s -w" \
      -o /rootfs/usr/local/bin/ \
      ./driver/cmd/toposnap-driver ./provisioner/cmd/toposnap-provisioner ./provisioner/cmd/toposnap-controller ./snapshotter/cmd/toposnap-snapshotter \
      ./extender/cmd/toposnap-extender ./webhook/cmd/toposnap-webhook \
 && chmod 0755 /rootfs/usr/local/bin/toposnap-* \
 && mkdir -m 1777 /rootfs/tmp

FROM scratch
ARG VERSION=0.1.0
ARG REVISION=
LABEL org.opencontainers.image.source="https://github.com/toposnap/toposnap" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
# COPY --from keeps the modes set above (0755 binaries, /tmp 1777), owned by root.
COPY --from=build /rootfs/ /
ENV PATH=/usr/local/bin
USER 65532:65532
