#!/usr/bin/env bash
# Builds the pinned control-plane binaries (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, kwok) from the Go module
# proxy into a cache outside the repository, and only when they are missing.
# Prints the cache's bin directory on stdout.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${TOPOSNAP_CACHE:-$HOME/.cache/toposnap}"
kube_version="v1.37.2"
etcd_version="v3.6.8"
kwok_version="v0.8.0"
bindir="$cache/bin/kube-${kube_version}_etcd-${etcd_version}_kwok-${kwok_version}"
mkdir -p "$bindir"
# One build at a time per cache: parallel test packages (each asks for
# the binaries through test/cluster) wait for the first instead of
# compiling the same binary into the same temporary file.
exec 9>"$bindir/.lock"
flock 9

build() { # module-dir package output [ldflags]
  local dir="$1" pkg="$2" out="$3" ldflags="${4:-}"
  if [[ -x "$bindir/$out" ]]; then return; fi
  echo "building $out ($pkg)" >&2
  (cd "$root/hack/tools/$dir" && CGO_ENABLED=0 go build -trimpath \
     -ldflags "-s -w $ldflags" -o "$bindir/$out.tmp" "$pkg")
  mv "$bindir/$out.tmp" "$bindir/$out"
}

kube_ldflags="-X k8s.io/component-base/version.gitVersion=${kube_version}"
kube_ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
kube_ldflags+=" -X k8s.io/component-base/version.gitMinor=37"
kube_ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"

build etcd go.etcd.io/etcd/server/v3 etcd
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  build kubernetes "k8s.io/kubernetes/cmd/$cmd" "$cmd" "$kube_ldflags"
done
build kwok sigs.k8s.io/kwok/cmd/kwok kwok

# kwok's stage files ship in its module; copy them next to the binaries.
if [[ ! -d "$bindir/kwok-stages" ]]; then
  moddir="$(cd "$root/hack/tools/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
  rm -rf "$bindir/kwok-stages.tmp" && mkdir -p "$bindir/kwok-stages.tmp"
  for stage in node/fast node/heartbeat pod/fast; do
    mkdir -p "$bindir/kwok-stages.tmp/$stage"
    cp "$moddir/kustomize/stage/$stage"/*.yaml "$bindir/kwok-stages.tmp/$stage/"
  done
  chmod -R u+w "$bindir/kwok-stages.tmp"
  mv "$bindir/kwok-stages.tmp" "$bindir/kwok-stages"
fi
echo "$bindir"
