package loop

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func deviceSize(t *testing.T, device string) uint64 {
	t.Helper()
	f, err := os.Open(device)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		t.Fatal(err)
	}
	return size
}

// Attach, find by inode, grow, detach: the life of a block volume's device.
func TestAttachFindResizeDetach(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("loop devices need root")
	}
	image := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(image, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(image, 8<<20); err != nil {
		t.Fatal(err)
	}
	device, held, err := Attach(image, Options{})
	if err != nil {
		t.Fatal(err)
	}
	held.Close()
	t.Cleanup(func() { _ = Detach(device) })

	if found, err := Find(image, false); err != nil || found != device {
		t.Fatalf("Find = %q, %v; want %s", found, err, device)
	}
	if found, err := Find(image, true); err != nil || found != "" {
		t.Fatalf("Find read-only = %q, %v; want none", found, err)
	}
	if got := deviceSize(t, device); got != 8<<20 {
		t.Fatalf("device size %d, want 8 MiB", got)
	}
	if err := os.Truncate(image, 16<<20); err != nil {
		t.Fatal(err)
	}
	if err := Resize(device); err != nil {
		t.Fatal(err)
	}
	if got := deviceSize(t, device); got != 16<<20 {
		t.Fatalf("device size after resize %d, want 16 MiB", got)
	}
	readOnly, roHeld, err := Attach(image, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	roHeld.Close()
	if ro, err := IsReadOnly(readOnly); err != nil || !ro {
		t.Fatalf("IsReadOnly(%s) = %v, %v", readOnly, ro, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(readOnly, &st); err != nil || ByNumber(st.Rdev) != readOnly {
		t.Fatalf("ByNumber(%s) = %q, %v", readOnly, ByNumber(st.Rdev), err)
	}
	for _, d := range []string{readOnly, device} {
		if err := Detach(d); err != nil {
			t.Fatal(err)
		}
	}
	if found, err := Find(image, false); err != nil || found != "" {
		t.Fatalf("after detach Find = %q, %v; want none", found, err)
	}
}
