#!/usr/bin/env bash
# Installs what a real test node (test/node) needs on the host, from Debian's
# packages, only when something is missing: containerd (1.6 on bookworm; the
# kubelet v1.37 accepts it with a warning), runc, the CNI plugins (bridge,
# host-local, loopback under /usr/lib/cni) and a static busybox that the test
# images are made of. Needs root (apt-get). Idempotent and quiet when all is
# there; prints the tools' versions.
#
# It starts nothing and writes no daemon configuration: test/node runs its own
# containerd with its own config, root and socket under the test's directory,
# so a node test neither depends on nor disturbs a containerd the host may
# run. That config carries what this VM needs (see test/node/containerd.go):
# `restrict_oom_score_adj = true`, since the VM takes CAP_SYS_RESOURCE from
# every process and runc then cannot set a negative OOM score.
set -euo pipefail

# binary -> Debian package providing it.
declare -A want=(
  [containerd]=containerd
  [runc]=runc
  [/usr/lib/cni/bridge]=containernetworking-plugins
  [/usr/lib/cni/host-local]=containernetworking-plugins
  [/usr/lib/cni/loopback]=containernetworking-plugins
  [/bin/busybox]=busybox-static
)

missing=()
for tool in "${!want[@]}"; do
  if [[ "$tool" == /* ]]; then
    [[ -x "$tool" ]] && continue
  else
    command -v "$tool" >/dev/null && continue
  fi
  pkg="${want[$tool]}"
  [[ " ${missing[*]-} " == *" $pkg "* ]] || missing+=("$pkg")
done
# busybox-static replaces the dynamic busybox; a dynamic one cannot be copied
# into an image without its libraries.
if [[ -x /bin/busybox ]] && ldd /bin/busybox >/dev/null 2>&1; then
  missing+=(busybox-static)
fi

if ((${#missing[@]})); then
  if [[ $EUID -ne 0 ]]; then
    echo "node-setup: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "node-setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Package lists may be stale or absent on a fresh machine.
  # A lock held by another apt run on this machine is waited for, not failed on.
  apt="apt-get -o DPkg::Lock::Timeout=300"
  $apt update -qq >&2
  # policy-rc.d 101 keeps the package from starting its own containerd
  # service: the tests run theirs.
  policy=/usr/sbin/policy-rc.d
  created_policy=false
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=true
  fi
  trap '$created_policy && rm -f "$policy"' EXIT
  $apt install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

echo "containerd: $(containerd --version | awk '{print $3}')"
echo "runc: $(runc --version | awk 'NR==1{print $3}')"
echo "cni: $(dpkg-query -W -f '${Version}' containernetworking-plugins) in /usr/lib/cni"
echo "busybox: $(/bin/busybox 2>&1 | awk 'NR==1{print $2}')"
