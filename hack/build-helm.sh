#!/usr/bin/env bash
# Builds helm from the pinned tools module hack/tools/helm (Go module proxy,
# no prebuilt download) into a cache outside the repository, only when it is
# missing. Prints the path of the helm binary on stdout; progress on stderr.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${TOPOSNAP_CACHE:-$HOME/.cache/toposnap}"
module="$root/hack/tools/helm"
# The version comes from the tools module's go.mod, so bumping it there is
# the only change an upgrade needs.
version="$(cd "$module" && go list -m -f '{{.Version}}' helm.sh/helm/v3)"
bindir="$cache/bin/helm-${version}"
helm="$bindir/helm"

if [[ ! -x "$helm" ]]; then
  echo "building helm ${version} (first time only)" >&2
  mkdir -p "$bindir"
  # helm's own Makefile stamps its version and the Kubernetes version its
  # client libraries speak (used for .Capabilities.KubeVersion by default).
  kube="$(cd "$module" && go list -m -f '{{.Version}}' k8s.io/client-go)" # v0.MINOR.PATCH
  kube_minor="$(echo "$kube" | cut -d. -f2)"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${version}"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in pkg/lint/rules pkg/chartutil; do
    ldflags+=" -X helm.sh/helm/v3/${pkg}.k8sVersionMajor=1 -X helm.sh/helm/v3/${pkg}.k8sVersionMinor=${kube_minor}"
  done
  # A private temporary name, so that concurrent first builds cannot clash.
  tmp="$(mktemp "$bindir/helm.XXXXXX")"
  trap 'rm -f "$tmp"' EXIT
  (cd "$module" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp" helm.sh/helm/v3/cmd/helm)
  mv "$tmp" "$helm"
fi
echo "$helm"
