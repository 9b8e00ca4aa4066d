// Package testpool makes loop-backed btrfs filesystems for tests, the demo
// and benchmarks: a sparse image file, attached to a loop device through
// the loop ioctls (internal/loop), formatted with mkfs.btrfs and mounted. When
// mkfs.btrfs is missing, hack/setup-btrfs.sh installs btrfs-progs first.
// Everything needs root (mount, loop devices).
package testpool

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/toposnap/toposnap/internal/loop"
)

// Btrfs is one mounted scratch btrfs filesystem.
type Btrfs struct {
	// Dir is where the filesystem is mounted: put pools under it.
	Dir string
	// Image is the sparse file behind it; Device the loop device.
	Image, Device string
}

// MinSize is the smallest filesystem NewBtrfs makes.
const MinSize = 256 << 20

var setupOnce sync.Once
var setupErr error

// EnsureTools makes sure mkfs.btrfs exists, running hack/setup-btrfs.sh
// (which installs btrfs-progs with apt-get) once when it does not.
func EnsureTools() error {
	setupOnce.Do(func() {
		if _, err := exec.LookPath("mkfs.btrfs"); err == nil {
			return
		}
		script, err := repoFile("hack/setup-btrfs.sh")
		if err != nil {
			setupErr = err
			return
		}
		out, err := exec.Command(script).CombinedOutput()
		if err != nil {
			setupErr = fmt.Errorf("%s: %w\n%s", script, err, out)
			return
		}
		if _, err := exec.LookPath("mkfs.btrfs"); err != nil {
			setupErr = fmt.Errorf("mkfs.btrfs still missing after %s: %w", script, err)
		}
	})
	return setupErr
}

// repoFile finds a file of this repository from this source file's place.
func repoFile(rel string) (string, error) {
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the repository")
	}
	path := filepath.Join(filepath.Dir(self), "..", "..", rel)
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("find %s: %w", rel, err)
	}
	return path, nil
}

// NewBtrfs makes a btrfs filesystem of size bytes (sparse: it uses only
// what is written) in workDir and mounts it at workDir/mnt. Close undoes it.
func NewBtrfs(workDir string, size int64) (*Btrfs, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("a loop-backed btrfs pool needs root (mount and loop devices)")
	}
	if size < MinSize {
		size = MinSize
	}
	if err := EnsureTools(); err != nil {
		return nil, err
	}
	b := &Btrfs{Dir: filepath.Join(workDir, "mnt"), Image: filepath.Join(workDir, "btrfs.img")}
	image, err := os.OpenFile(b.Image, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create image: %w", err)
	}
	err = image.Truncate(size)
	image.Close()
	if err != nil {
		os.Remove(b.Image)
		return nil, fmt.Errorf("size image: %w", err)
	}
	if out, err := exec.Command("mkfs.btrfs", "-q", "-f", b.Image).CombinedOutput(); err != nil {
		os.Remove(b.Image)
		return nil, fmt.Errorf("mkfs.btrfs: %w\n%s", err, out)
	}
	// The device detaches itself once the filesystem is unmounted; our
	// descriptor keeps it until the mount holds it.
	backing, err := os.OpenFile(b.Image, os.O_RDWR, 0)
	if err != nil {
		os.Remove(b.Image)
		return nil, err
	}
	device, held, err := loop.Attach(backing, loop.Options{AutoClear: true})
	backing.Close() // the device holds the file now
	if err != nil {
		os.Remove(b.Image)
		return nil, err
	}
	defer held.Close()
	b.Device = device
	if err := os.MkdirAll(b.Dir, 0o755); err != nil {
		os.Remove(b.Image)
		return nil, err
	}
	if err := unix.Mount(device, b.Dir, "btrfs", unix.MS_NOATIME, "commit=1"); err != nil {
		os.Remove(b.Image)
		return nil, fmt.Errorf("mount %s at %s: %w", device, b.Dir, err)
	}
	return b, nil
}

// Close unmounts the filesystem (lazily if something still uses it), which
// frees the loop device, and removes the image.
func (b *Btrfs) Close() error {
	err := unix.Unmount(b.Dir, 0)
	for i := 0; errors.Is(err, unix.EBUSY) && i < 50; i++ {
		time.Sleep(100 * time.Millisecond) // a process still closing files in it
		err = unix.Unmount(b.Dir, 0)
	}
	if errors.Is(err, unix.EBUSY) {
		err = unix.Unmount(b.Dir, unix.MNT_DETACH)
	}
	if err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w", b.Dir, err)
	}
	if err := os.Remove(b.Image); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// ForTest makes a btrfs filesystem of size bytes for the test and returns
// its mount point; it is unmounted and removed when the test ends.
func ForTest(t testing.TB, size int64) string {
	t.Helper()
	b, err := NewBtrfs(t.TempDir(), size)
	if err != nil {
		t.Fatalf("loop-backed btrfs: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("remove loop-backed btrfs: %v", err)
		}
	})
	return b.Dir
}
