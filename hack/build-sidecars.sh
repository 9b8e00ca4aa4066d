#!/usr/bin/env bash
# Builds the upstream CSI sidecars that test/interop runs toposnap's driver
# under (external-provisioner's csi-provisioner, external-snapshotter's
# csi-snapshotter and snapshot-controller) from the Go module proxy into a
# cache outside the repository, only when they are missing, the way
# hack/build-cluster-bins.sh builds the control plane.
#
# The pins live in two tools modules, hack/tools/sidecars/external-provisioner
# and hack/tools/sidecars/external-snapshotter: the two projects pin
# different Kubernetes staging versions through replace directives (v0.36.1
# and v0.37.0), which those go.mod files mirror, so one module cannot hold
# both. The cache directory is keyed by the two versions those go.mod files
# require. Cold (empty Go build cache, 2 shared cores): about 23 minutes;
# warm: instant (docs/interop.md).
# Prints the cache's bin directory on stdout.
#
#   TOPOSNAP_CACHE   cache root (default ~/.cache/toposnap)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${TOPOSNAP_CACHE:-$HOME/.cache/toposnap}"
tools="$root/hack/tools/sidecars"
provisioner_module="github.com/kubernetes-csi/external-provisioner/v6"
snapshotter_module="github.com/kubernetes-csi/external-snapshotter/v8"

# module_version dir module: the version of module that dir's go.mod requires.
module_version() {
  (cd "$tools/$1" && go list -m -f '{{.Version}}' "$2")
}
provisioner_version="$(module_version external-provisioner "$provisioner_module")"
snapshotter_version="$(module_version external-snapshotter "$snapshotter_module")"
bindir="$cache/bin/sidecars-provisioner-${provisioner_version}_snapshotter-${snapshotter_version}"
mkdir -p "$bindir"
# One build at a time per cache: a second caller (another test package,
# make bench-interop) waits for the first instead of compiling the same
# binary into the same temporary file.
exec 9>"$bindir/.lock"
flock 9

# build module-dir package output version: builds into a temporary file
# renamed into place, so an interrupted build leaves nothing that looks
# finished. The version goes where upstream's release-tools put it.
build() {
  local dir="$1" pkg="$2" out="$3" version="$4"
  if [[ -x "$bindir/$out" ]]; then return; fi
  echo "building $out ($pkg@$version)" >&2
  local start=$SECONDS
  (cd "$tools/$dir" && CGO_ENABLED=0 go build -trimpath \
     -ldflags "-s -w -X main.version=$version" -o "$bindir/$out.tmp" "$pkg")
  mv "$bindir/$out.tmp" "$bindir/$out"
  echo "built $out in $((SECONDS - start))s" >&2
}

build external-provisioner "$provisioner_module/cmd/csi-provisioner" csi-provisioner "$provisioner_version"
build external-snapshotter "$snapshotter_module/cmd/csi-snapshotter" csi-snapshotter "$snapshotter_version"
build external-snapshotter "$snapshotter_module/cmd/snapshot-controller" snapshot-controller "$snapshotter_version"
echo "$bindir"
