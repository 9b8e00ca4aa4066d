package btrfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/toposnap/toposnap/internal/tenantops"
)

// TestDeletePartialWorkDeeperThanTheFileLimit: a path that is not a
// subvolume (a copy interrupted, or a tenant's tree in it) holding a
// directory chain deeper than the driver's open-file limit is deleted all
// the same: the removal holds a bounded number of descriptors, where one
// per level (os.RemoveAll) fails with EMFILE on every retry.
func TestDeletePartialWorkDeeperThanTheFileLimit(t *testing.T) {
	b, dir := openTestBackend(t)
	const depth, fileLimit = 3000, 256
	partial := filepath.Join(dir, "partial")
	if err := os.Mkdir(partial, 0o755); err != nil {
		t.Fatal(err)
	}
	makeChain(t, partial, depth)

	var saved syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &saved); err != nil {
		t.Fatal(err)
	}
	lowered := syscall.Rlimit{Cur: fileLimit, Max: saved.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lowered); err != nil {
		t.Fatal(err)
	}
	err := b.Delete(partial)
	if restoreErr := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &saved); restoreErr != nil {
		t.Fatal(restoreErr)
	}
	if err != nil {
		t.Fatalf("delete a %d-deep tree with %d descriptors allowed: %v", depth, fileLimit, err)
	}
	if _, err := os.Lstat(partial); !os.IsNotExist(err) {
		t.Fatalf("%s survived its delete: %v", partial, err)
	}
}

// makeChain nests depth directories under dir, by descriptor (the path
// would be longer than PATH_MAX).
func makeChain(t *testing.T, dir string, depth int) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for range depth {
		if err := unix.Mkdirat(fd, "d", 0o755); err != nil {
			_ = unix.Close(fd)
			t.Fatal(err)
		}
		next, err := unix.Openat(fd, "d", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		_ = unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = next
	}
	_ = unix.Close(fd)
}

// A tenant owns the subvolumes it nests, so it may make one read-only
// (BTRFS_IOC_SUBVOL_SETFLAGS): removing a subvolume linked inside it then
// fails with EROFS. A privileged pod may also set the immutable flag on a
// nested subvolume's root (EPERM). Neither makes the volume undeletable:
// Delete succeeds, and leaves no subvolume and no limit group. A snapshot,
// read-only itself, is deleted as before.
func TestDeleteVolumeWithReadOnlyNestedSubvolumes(t *testing.T) {
	b, dir := openTestBackend(t)
	for i, tt := range []struct {
		name     string
		nested   []string
		readOnly []string // made read-only by the tenant, in this order
		// immutable are given FS_IMMUTABLE_FL on their root by root (a
		// privileged pod holds CAP_LINUX_IMMUTABLE).
		immutable []string
		// snapshot deletes a read-only snapshot of the volume instead.
		snapshot bool
	}{
		{name: "read-only subvolume holding another", nested: []string{"a", "a/b"}, readOnly: []string{"a"}},
		{name: "read-only at two levels", nested: []string{"a", "a/b", "a/b/c", "a/d"}, readOnly: []string{"a/b", "a"}},
		{name: "immutable nested roots", nested: []string{"a", "a/b"}, immutable: []string{"a/b", "a"}},
		{name: "read-only snapshot of the volume", snapshot: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			vol := filepath.Join(dir, fmt.Sprintf("ro%d", i))
			if err := b.Create("", vol, 64<<20); err != nil {
				t.Fatal(err)
			}
			target := vol
			if tt.snapshot {
				target = vol + "-snap"
				if err := b.Snapshot(context.Background(), vol, vol+"-tmp", target, nil); err != nil {
					t.Fatal(err)
				}
			}
			ids := []uint64{mustSubvolumeID(t, target)}
			pod := newTenant(t, vol)
			for _, path := range tt.nested {
				pod.must("subvolume", path, tenantops.Request{})
				ids = append(ids, mustSubvolumeID(t, filepath.Join(vol, path)))
			}
			for _, path := range tt.readOnly {
				pod.must("read-only", path, tenantops.Request{})
			}
			for _, path := range tt.immutable {
				setImmutable(t, filepath.Join(vol, path))
			}
			pod.leave()
			deleteTwice(t, b, target)
			waitCleaned(t, b, ids...)
			assertQgroupGone(t, b, ids[0])
		})
	}
}

// setImmutable sets FS_IMMUTABLE_FL on path, as root.
func setImmutable(t *testing.T, path string) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer closeFd(fd)
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags|fsImmutableFl)); err != nil {
		t.Fatalf("chattr +i %s: %v", path, err)
	}
}

// fsImmutableFl is FS_IMMUTABLE_FL.
const fsImmutableFl = 0x10
