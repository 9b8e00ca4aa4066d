package dirfs

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A tenant's tree that os.RemoveAll cannot delete: deeper than the
// driver's open-file limit, or holding an immutable file. Delete must
// still remove it, or the volume stays "deleting" forever.
func TestDeleteRemovesWhatATenantCanLeave(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("setting the immutable flag needs root")
	}
	tests := []struct {
		name  string
		build func(t *testing.T, volume string)
	}{
		{"a directory chain deeper than the open-file limit", func(t *testing.T, volume string) {
			fd, err := unix.Open(volume, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			for range 3000 {
				if err := unix.Mkdirat(fd, "d", 0o755); err != nil {
					t.Fatal(err)
				}
				child, err := unix.Openat(fd, "d", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
				_ = unix.Close(fd)
				if err != nil {
					t.Fatal(err)
				}
				fd = child
			}
			_ = unix.Close(fd)
		}},
		{"an immutable file", func(t *testing.T, volume string) {
			path := filepath.Join(volume, "locked")
			if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = unix.Close(fd) }()
			if err := unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, fsImmutableFl); err != nil {
				t.Skipf("no inode flags on the test filesystem: %v", err)
			}
			t.Cleanup(func() {
				if fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
					_ = unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, 0)
					_ = unix.Close(fd)
				}
			})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			volume := filepath.Join(t.TempDir(), "volume")
			if err := os.Mkdir(volume, 0o777); err != nil {
				t.Fatal(err)
			}
			tt.build(t, volume)
			var old unix.Rlimit
			if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
				t.Fatal(err)
			}
			if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 256, Max: old.Max}); err != nil {
				t.Fatal(err)
			}
			err := Backend{}.Delete(volume)
			if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
				t.Fatal(err)
			}
			if err != nil {
				t.Fatalf("Delete: %v", err)
			}
			if _, err := os.Lstat(volume); !os.IsNotExist(err) {
				t.Fatalf("the volume survived: %v", err)
			}
		})
	}
}

// fsImmutableFl is FS_IMMUTABLE_FL of linux/fs.h (chattr +i).
const fsImmutableFl = 0x10
