#!/usr/bin/env bash
# Makes sure this machine can build loop-backed btrfs pools for tests, the
# demo and `make bench`: mkfs.btrfs (btrfs-progs) is installed when missing
# (Debian/Ubuntu apt-get), and the kernel knows btrfs and loop devices.
# The driver itself never runs btrfs-progs; only the test helper
# (internal/testpool) formats its scratch filesystems with mkfs.btrfs.
set -euo pipefail

if ! command -v mkfs.btrfs >/dev/null 2>&1; then
	if ! command -v apt-get >/dev/null 2>&1; then
		echo "mkfs.btrfs is missing and there is no apt-get: install btrfs-progs by hand" >&2
		exit 1
	fi
	if [ "$(id -u)" -ne 0 ]; then
		echo "mkfs.btrfs is missing: run this script as root to install btrfs-progs" >&2
		exit 1
	fi
	echo "installing btrfs-progs (mkfs.btrfs)" >&2
	export DEBIAN_FRONTEND=noninteractive
	# A lock held by another apt run on this machine is waited for, not failed on.
	apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends btrfs-progs >&2 ||
		{ apt-get -o DPkg::Lock::Timeout=300 update >&2 &&
			apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends btrfs-progs >&2; }
fi

# The kernel must know btrfs; loop devices come from /dev/loop-control.
if ! grep -qw btrfs /proc/filesystems; then
	modprobe btrfs 2>/dev/null || { echo "this kernel has no btrfs" >&2; exit 1; }
fi
if [ ! -e /dev/loop-control ]; then
	modprobe loop 2>/dev/null || { echo "no /dev/loop-control: loop devices are unavailable" >&2; exit 1; }
fi
command -v mkfs.btrfs
