package fscopy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// DeepChain makes depth directories nested in dir, each named "d", by
// descriptor (the path is far longer than PATH_MAX), with a file in the
// deepest.
func deepChain(t testing.TB, dir string, depth int) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for range depth {
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
	file, err := unix.Openat(fd, "bottom", unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	_ = unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	_ = unix.Close(file)
}

// withFileLimit runs fn with the soft open-file limit lowered to limit.
func withFileLimit(t *testing.T, limit uint64, fn func()) {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	lowered := unix.Rlimit{Cur: limit, Max: old.Max}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lowered); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
			t.Fatal(err)
		}
	}()
	fn()
}

// setFlags sets inode flags (chattr) on path.
func setFlags(t *testing.T, path string, flags int) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unix.Close(fd) }()
	if err := unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, flags); err != nil {
		if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) {
			t.Skipf("the test filesystem has no inode flags: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { // so that t.TempDir can clean up if the test fails
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err == nil {
			_ = unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, 0)
			_ = unix.Close(fd)
		}
	})
}

func mustWrite(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestRemoveTree(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("clearing the immutable flag needs CAP_LINUX_IMMUTABLE")
	}
	tests := []struct {
		name string
		// build makes the tree at root; outside is a directory beside it
		// that must survive.
		build func(t *testing.T, root, outside string)
	}{
		{"a tree of files and directories", func(t *testing.T, root, _ string) {
			for _, f := range []string{"a/b/c/f", "a/b/g", "a/h", "i", "j/k/l/m/n"} {
				mustWrite(t, filepath.Join(root, f))
			}
		}},
		{"a chain of 3000 directories with few descriptors", func(t *testing.T, root, _ string) {
			if err := os.Mkdir(root, 0o755); err != nil {
				t.Fatal(err)
			}
			deepChain(t, root, 3000)
		}},
		{"an immutable file", func(t *testing.T, root, _ string) {
			mustWrite(t, filepath.Join(root, "sub", "locked"))
			setFlags(t, filepath.Join(root, "sub", "locked"), fsImmutableFl)
		}},
		{"an append-only file", func(t *testing.T, root, _ string) {
			mustWrite(t, filepath.Join(root, "log"))
			setFlags(t, filepath.Join(root, "log"), fsAppendFl)
		}},
		{"an immutable directory with files", func(t *testing.T, root, _ string) {
			mustWrite(t, filepath.Join(root, "frozen", "f"))
			setFlags(t, filepath.Join(root, "frozen"), fsImmutableFl)
		}},
		{"an immutable root", func(t *testing.T, root, _ string) {
			mustWrite(t, filepath.Join(root, "f"))
			setFlags(t, root, fsImmutableFl)
		}},
		{"symlinks to the outside are unlinked, not followed", func(t *testing.T, root, outside string) {
			mustWrite(t, filepath.Join(root, "sub", "f"))
			for _, link := range []string{"to-dir", "sub/to-dir", "sub/to-file"} {
				if err := os.Symlink(outside, filepath.Join(root, link)); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"FIFOs and device nodes are unlinked, never opened", func(t *testing.T, root, _ string) {
			mustWrite(t, filepath.Join(root, "f"))
			if err := unix.Mkfifo(filepath.Join(root, "fifo"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mknod(filepath.Join(root, "null"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
				t.Fatal(err)
			}
		}},
		{"the root is a symlink", func(t *testing.T, root, outside string) {
			if err := os.Symlink(outside, root); err != nil {
				t.Fatal(err)
			}
		}},
		{"the root is a file", func(t *testing.T, root, _ string) { mustWrite(t, root) }},
		{"the root is missing", func(t *testing.T, _, _ string) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			root, outside := filepath.Join(dir, "tree"), filepath.Join(dir, "outside")
			mustWrite(t, filepath.Join(outside, "canary"))
			tt.build(t, root, outside)
			var err error
			withFileLimit(t, 64, func() { err = RemoveTree(root) })
			if err != nil {
				t.Fatalf("RemoveTree: %v", err)
			}
			if _, err := os.Lstat(root); !os.IsNotExist(err) {
				t.Fatalf("the tree survived: %v", err)
			}
			if _, err := os.Stat(filepath.Join(outside, "canary")); err != nil {
				t.Fatalf("a file outside the tree was removed: %v", err)
			}
		})
	}
}

// A mount inside the tree is not crossed: what is mounted survives.
func TestRemoveTreeDoesNotCrossMounts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("mounting needs root")
	}
	root := filepath.Join(t.TempDir(), "tree")
	mountpoint := filepath.Join(root, "sub", "mnt")
	if err := os.MkdirAll(mountpoint, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", mountpoint, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mountpoint, unix.MNT_DETACH) })
	mustWrite(t, filepath.Join(mountpoint, "mounted"))
	err := RemoveTree(root)
	if err == nil || !strings.Contains(err.Error(), "mount") {
		t.Errorf("RemoveTree of a tree holding a mount: %v, want an error naming the mount", err)
	}
	if _, err := os.Stat(filepath.Join(mountpoint, "mounted")); err != nil {
		t.Fatalf("a file on the mount inside the tree was removed: %v", err)
	}
}
