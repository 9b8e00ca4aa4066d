#!/usr/bin/env bash
# Builds the pinned binaries a real node and Kubernetes' storage e2e suite
# need (kubelet, agnhost, e2e.test) from the Go module proxy into a cache
# outside the repository, only when they are missing, the way
# hack/build-cluster-bins.sh builds the control plane. The module pins live in
# hack/tools/kube-node. Cold, on 2 cores: about 35-40 minutes; warm: instant.
# Prints the cache's bin directory on stdout.
#
#   TOPOSNAP_CACHE   cache root (default ~/.cache/toposnap)
#   NODE_BINS        space-separated subset to build (default: all three)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${TOPOSNAP_CACHE:-$HOME/.cache/toposnap}"
kube_version="v1.37.2"
# The agnhost tag the e2e suite of $kube_version asks for
# (k8s.io/kubernetes/test/utils/image/manifest.go); test/node imports the image
# under that name, so the version is part of the cache key.
agnhost_version="2.66.1"
bindir="$cache/bin/node-kube-${kube_version}_agnhost-${agnhost_version}"
moddir="$root/hack/tools/kube-node"
mkdir -p "$bindir"
# One build at a time per cache: a second caller (a test package, make
# conformance) waits for the first instead of compiling the same binary
# into the same temporary file.
exec 9>"$bindir/.lock"
flock 9

kube_ldflags="-X k8s.io/component-base/version.gitVersion=${kube_version}"
kube_ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
kube_ldflags+=" -X k8s.io/component-base/version.gitMinor=37"
kube_ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"

# build output package go-subcommand... : runs the go command (build, or
# test -c) into a temporary file renamed into place, so an interrupted build
# leaves nothing that looks finished.
build() {
  local out="$1" pkg="$2"; shift 2
  if [[ -x "$bindir/$out" ]]; then return; fi
  echo "building $out ($pkg)" >&2
  local start=$SECONDS
  (cd "$moddir" && CGO_ENABLED=0 go "$@" -o "$bindir/$out.tmp" "$pkg")
  mv "$bindir/$out.tmp" "$bindir/$out"
  echo "built $out in $((SECONDS - start))s" >&2
}

want() { [[ " ${NODE_BINS:-kubelet agnhost e2e.test} " == *" $1 "* ]]; }

want kubelet && build kubelet k8s.io/kubernetes/cmd/kubelet build -trimpath -ldflags "-s -w $kube_ldflags"
want agnhost && build agnhost k8s.io/kubernetes/test/images/agnhost build -trimpath -ldflags "-s -w"
# e2e.test is the test binary of k8s.io/kubernetes/test/e2e; its storage specs
# read their manifests from the binary (embedded), so it runs from anywhere.
want e2e.test && build e2e.test k8s.io/kubernetes/test/e2e test -c -trimpath -ldflags "-s -w $kube_ldflags"
echo "$bindir"
