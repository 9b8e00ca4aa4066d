package btrfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/toposnap/toposnap/internal/tenantops"
	"github.com/toposnap/toposnap/internal/testpool"
)

// The ioctl structures must have the kernel's sizes, or every call is a
// different request number (the size is part of it).
func TestStructSizes(t *testing.T) {
	for _, tt := range []struct {
		name      string
		got, want uintptr
	}{
		{"btrfs_ioctl_vol_args_v2", unsafe.Sizeof(volArgsV2{}), 4096},
		{"btrfs_ioctl_ino_lookup_args", unsafe.Sizeof(inoLookupArgs{}), 4096},
		{"btrfs_ioctl_search_key", unsafe.Sizeof(searchKey{}), 104},
		{"btrfs_ioctl_search_args", unsafe.Sizeof(searchArgs{}), 4096},
		{"btrfs_ioctl_quota_ctl_args", unsafe.Sizeof(quotaCtlArgs{}), 16},
		{"btrfs_ioctl_qgroup_assign_args", unsafe.Sizeof(qgroupAssignArgs{}), 24},
		{"btrfs_ioctl_qgroup_create_args", unsafe.Sizeof(qgroupCreateArgs{}), 16},
		{"btrfs_ioctl_qgroup_limit_args", unsafe.Sizeof(qgroupLimitArgs{}), 48},
		{"btrfs_ioctl_fs_info_args", unsafe.Sizeof(fsInfoArgs{}), 1024},
	} {
		if tt.got != tt.want {
			t.Errorf("%s is %d bytes, want %d", tt.name, tt.got, tt.want)
		}
	}
	// Spot-check request numbers against the kernel header's values.
	if iocSnapCreateV2 != 0x50009417 || iocTreeSearch != 0xd0009411 || iocQgroupLimit != 0x8030942b {
		t.Errorf("request numbers: snap_create_v2=%#x tree_search=%#x qgroup_limit=%#x", iocSnapCreateV2, iocTreeSearch, iocQgroupLimit)
	}
}

func openTestBackend(t *testing.T) (*Backend, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs root, loop devices and mkfs.btrfs (make test runs it)")
	}
	dir := testpool.ForTest(t, 2<<30)
	b, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if !b.SimpleQuotas() {
		t.Fatal("a fresh filesystem on this kernel should get simple quotas")
	}
	return b, dir
}

func isQuotaError(err error) bool {
	return errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.ENOSPC)
}

// A write past a volume's size fails; its neighbour and the pool are
// untouched and keep working.
func TestLimitStopsWrites(t *testing.T) {
	b, dir := openTestBackend(t)
	small, neighbour := filepath.Join(dir, "small"), filepath.Join(dir, "neighbour")
	if err := b.Create("", small, 64<<20); err != nil {
		t.Fatal(err)
	}
	if err := b.Create("", neighbour, 64<<20); err != nil {
		t.Fatal(err)
	}
	written, err := tenantops.Fill(filepath.Join(small, "big"), 256<<20)
	if !isQuotaError(err) {
		t.Fatalf("writing 256 MiB into a 64 MiB volume: wrote %d bytes, err %v; want a quota error", written, err)
	}
	if written > 64<<20 || written < 32<<20 {
		t.Fatalf("the volume stopped at %d bytes, want close to 64 MiB", written)
	}
	if n, err := tenantops.Fill(filepath.Join(neighbour, "data"), 32<<20); err != nil {
		t.Fatalf("the neighbour cannot write after its neighbour hit its limit: %d bytes, %v", n, err)
	}
	if n, err := tenantops.Fill(filepath.Join(dir, "pool-file"), 64<<20); err != nil {
		t.Fatalf("the pool cannot take more data: %d bytes, %v", n, err)
	}
	// Expanding raises the limit.
	if err := b.Expand(small, 256<<20); err != nil {
		t.Fatal(err)
	}
	if n, err := tenantops.Fill(filepath.Join(small, "more"), 64<<20); err != nil {
		t.Fatalf("write after expanding: %d bytes, %v", n, err)
	}
}

// A subvolume a pod creates inside its volume counts against the volume's
// limit (simple quotas join it to the volume's qgroup).
func TestNestedSubvolumeCountsAgainstTheLimit(t *testing.T) {
	b, dir := openTestBackend(t)
	vol := filepath.Join(dir, "vol")
	if err := b.Create("", vol, 64<<20); err != nil {
		t.Fatal(err)
	}
	nested := filepath.Join(vol, "nested")
	if err := CreateSubvolume(nested); err != nil {
		t.Fatal(err)
	}
	deeper := filepath.Join(nested, "deeper")
	if err := CreateSubvolume(deeper); err != nil {
		t.Fatal(err)
	}
	if _, err := tenantops.Fill(filepath.Join(vol, "a"), 32<<20); err != nil {
		t.Fatal(err)
	}
	written, err := tenantops.Fill(filepath.Join(deeper, "b"), 256<<20)
	if !isQuotaError(err) || written > 64<<20 {
		t.Fatalf("a nested subvolume took %d bytes past its volume's 64 MiB limit (err %v)", written, err)
	}
}

// Snapshots are read-only images of one instant; clones are writable and
// limited on their own.
func TestSnapshotAndClone(t *testing.T) {
	b, dir := openTestBackend(t)
	ctx := context.Background()
	vol, snap, clone := filepath.Join(dir, "vol"), filepath.Join(dir, "snap"), filepath.Join(dir, "clone")
	if err := b.Create("", vol, 128<<20); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vol, "f"), []byte("before"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := b.Snapshot(ctx, vol, filepath.Join(dir, "tmp-snap"), snap, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vol, "f"), []byte("after"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(snap, "f")); string(got) != "before" {
		t.Fatalf("snapshot shows %q, want %q", got, "before")
	}
	if err := os.WriteFile(filepath.Join(snap, "g"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Fatalf("writing into a snapshot: %v, want EROFS", err)
	}
	if err := b.Clone(ctx, snap, filepath.Join(dir, "tmp-clone"), clone, 32<<20, nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(clone, "f")); string(got) != "before" {
		t.Fatalf("clone shows %q, want %q", got, "before")
	}
	if written, err := tenantops.Fill(filepath.Join(clone, "big"), 128<<20); !isQuotaError(err) || written > 32<<20 {
		t.Fatalf("clone limited to 32 MiB took %d bytes (err %v)", written, err)
	}
}

// Deleting a volume with subvolumes nested in it (and a read-only snapshot
// a pod made inside) leaves nothing: no path, no subvolume once the cleaner
// ran, no qgroup of the volume.
func TestDeleteNestedLeavesNothing(t *testing.T) {
	b, dir := openTestBackend(t)
	vol := filepath.Join(dir, "vol")
	if err := b.Create("", vol, 256<<20); err != nil {
		t.Fatal(err)
	}
	volID, err := SubvolumeID(vol)
	if err != nil {
		t.Fatal(err)
	}
	ids := []uint64{volID}
	parent := vol
	// Deeper than any recursion limit a delete might have had.
	for level := range 300 {
		nested := filepath.Join(parent, fmt.Sprintf("l%d", level))
		if err := CreateSubvolume(nested); err != nil {
			t.Fatal(err)
		}
		if level < 3 {
			if _, err := tenantops.Fill(filepath.Join(nested, "data"), 4<<20); err != nil {
				t.Fatal(err)
			}
		}
		id, err := SubvolumeID(nested)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		parent = nested
	}
	// A read-only snapshot of a nested subvolume, inside the volume, made
	// as a pod makes one (the backend refuses to snapshot nested trees).
	l0, err := os.Open(filepath.Join(vol, "l0"))
	if err != nil {
		t.Fatal(err)
	}
	err = snapshot(l0, l0, "frozen", true)
	l0.Close()
	if err != nil {
		t.Fatal(err)
	}
	frozen, err := SubvolumeID(filepath.Join(vol, "l0", "frozen"))
	if err != nil {
		t.Fatal(err)
	}
	ids = append(ids, frozen)

	if err := b.Delete(vol); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(vol); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("volume path survived: %v", err)
	}
	waitCleaned(t, b, ids...)
	assertQgroupGone(t, b, volID)
	if err := b.Delete(vol); err != nil {
		t.Fatalf("deleting again: %v", err)
	}
}

// waitCleaned waits, up to a minute, until the cleaner has dropped every
// subvolume in ids.
func waitCleaned(t *testing.T, b *Backend, ids ...uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, id := range ids {
		if err := b.WaitCleaned(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
}

// deleteTwice deletes path and deletes it again: a repeated delete of
// what is gone succeeds.
func deleteTwice(t *testing.T, b *Backend, path string) {
	t.Helper()
	if err := b.Delete(path); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := b.Delete(path); err != nil {
		t.Fatalf("delete again: %v", err)
	}
}

// assertQgroupGone fails when the level-1 qgroup of volume id survives.
func assertQgroupGone(t *testing.T, b *Backend, id uint64) {
	t.Helper()
	if exists, err := b.QgroupExists(id); err != nil || exists {
		t.Fatalf("qgroup 1/%d of the deleted volume: exists=%v, %v", id, exists, err)
	}
}
