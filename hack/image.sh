#!/usr/bin/env bash
# Builds toposnap's container image without a Docker engine: the five
# commands as static linux binaries, packed by the tools module
# hack/tools/image into an OCI image layout archive (default
# bin/toposnap-image.oci.tar: `skopeo copy oci-archive:...`, `ctr image
# import`, `podman load`, `docker load` 25+) and a `docker save` tarball
# (default bin/toposnap-image.tar: `crane push`, `docker load`, `skopeo copy
# docker-archive:...`, `kind load image-archive`). Prints each reference
# with its digest.
#
#   VERSION  image tag and version label (default 0.1.0)
#   REVISION revision label (default: git rev-parse HEAD, "-dirty" if changed)
#   ARCH     GOARCH to build for (default: go env GOARCH)
#   OUT      docker-save tarball to write
#   OCI_OUT  OCI layout archive to write
#   SOURCE_DATE_EPOCH  file and creation times (default: HEAD's commit time)
# Further arguments go to the tool (see `go run . -h` in hack/tools/image).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
go="${GO:-go}"
version="${VERSION:-0.1.0}"
arch="${ARCH:-$($go env GOARCH)}"
out="${OUT:-$root/bin/toposnap-image.tar}"
oci_out="${OCI_OUT:-$root/bin/toposnap-image.oci.tar}"
revision="${REVISION:-$(git rev-parse HEAD 2>/dev/null || true)}"
if [[ -z "${REVISION:-}" && -n "$revision" ]] && ! git diff --quiet HEAD 2>/dev/null; then
  revision+="-dirty"
fi
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# -buildvcs=false and the stripped symbol table keep the binaries the same
# for the same source wherever they are built (the Dockerfile builds them
# the same way); the revision goes into the image's label instead.
echo "building the six commands for linux/$arch" >&2
CGO_ENABLED=0 GOOS=linux GOARCH="$arch" "$go" build -trimpath -buildvcs=false -ldflags="-s -w" -o "$work/" \
  ./driver/cmd/toposnap-driver ./provisioner/cmd/toposnap-provisioner ./provisioner/cmd/toposnap-controller ./snapshotter/cmd/toposnap-snapshotter \
  ./extender/cmd/toposnap-extender ./webhook/cmd/toposnap-webhook

# The tool runs on this machine: its own GOOS/GOARCH, not the image's.
(cd hack/tools/image && GOOS= GOARCH= "$go" run . -bin-dir "$work" -out "$out" -oci-out "$oci_out" -arch "$arch" \
  -version "$version" -revision "$revision" "$@")
