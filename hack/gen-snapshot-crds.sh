#!/usr/bin/env bash
# Copies the upstream VolumeSnapshot CRDs (snapshot.storage.k8s.io/v1), byte
# for byte, from the module cache of github.com/kubernetes-csi/external-snapshotter/client/v8
# at the version the project's go.mod requires into the chart, which installs
# them when snapshotCRDs.install is true. Never edit the copies: bump the
# module in go.mod and run this again. Idempotent; the chart's tests check
# that the committed files equal what this script produces.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/charts/toposnap/files/snapshot-crds}"
module="github.com/kubernetes-csi/external-snapshotter/client/v8"

cd "$root"
go mod download "$module"
dir="$(go list -m -f '{{.Dir}}' "$module")"
version="$(go list -m -f '{{.Version}}' "$module")"
src="$dir/config/crd"

mkdir -p "$dest"
for kind in volumesnapshotclasses volumesnapshotcontents volumesnapshots; do
  file="snapshot.storage.k8s.io_${kind}.yaml"
  [[ -f "$src/$file" ]] || { echo "missing $src/$file in $module@$version" >&2; exit 1; }
  # cp keeps the module cache's read-only mode; write the bytes instead.
  cat "$src/$file" > "$dest/$file.tmp"
  mv "$dest/$file.tmp" "$dest/$file"
done
echo "$module@$version" > "$dest/SOURCE"
echo "snapshot CRDs from $module@$version in ${dest#"$root"/}" >&2
