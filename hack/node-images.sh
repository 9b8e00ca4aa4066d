#!/usr/bin/env bash
# Builds the container images of a real test node (test/node) as `docker
# save` tarballs in OUT_DIR (default bin/node-images), with images.json
# mapping each reference to its tarball: pause and the registrar (this
# project's, in hack/tools/node-images), busybox (Debian's busybox-static),
# agnhost (hack/build-node-bins.sh) and kube-scheduler
# (hack/build-cluster-bins.sh). toposnap's own image comes from `make image`.
# Seconds when the binaries are built; prints OUT_DIR.
#
#   NODE_BIN_DIR     where agnhost is (default: hack/build-node-bins.sh's)
#   CLUSTER_BIN_DIR  where kube-scheduler is (default: hack/build-cluster-bins.sh's)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT_DIR:-$root/bin/node-images}"
node_bin="${NODE_BIN_DIR:-$(NODE_BINS=agnhost "$root/hack/build-node-bins.sh")}"
cluster_bin="${CLUSTER_BIN_DIR:-$("$root/hack/build-cluster-bins.sh")}"
tools="$root/hack/tools/node-images"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$tools" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/" ./pause ./registrar)
(cd "$tools" && go run . -out "$out" -busybox /bin/busybox -pause "$work/pause" -registrar "$work/registrar" \
  -agnhost "$node_bin/agnhost" -kube-scheduler "$cluster_bin/kube-scheduler")
echo "$out"
