package btrfs

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
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
			unix.Close(fd)
			t.Fatal(err)
		}
		next, err := unix.Openat(fd, "d", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = next
	}
	unix.Close(fd)
}
