package loop

import (
	"os"
	"path/filepath"
	"strings"
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
	backing, err := os.OpenFile(image, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer backing.Close()
	identity, err := IdentityOf(backing)
	if err != nil {
		t.Fatal(err)
	}
	device, held, err := Attach(backing, Options{})
	if err != nil {
		t.Fatal(err)
	}
	held.Close()
	t.Cleanup(func() { _ = Detach(device) })

	if found, err := Find(identity, false); err != nil || found != device {
		t.Fatalf("Find = %q, %v; want %s", found, err, device)
	}
	if found, err := Find(identity, true); err != nil || found != "" {
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
	readOnly, roHeld, err := Attach(backing, Options{ReadOnly: true})
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
	if found, err := Find(identity, false); err != nil || found != "" {
		t.Fatalf("after detach Find = %q, %v; want none", found, err)
	}
}

// A device is found again by its tag and its backing file's identity after
// the file is deleted: what a driver needs to detach what it leaked.
func TestListShowsTagAndDeletedBacking(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("loop devices need root")
	}
	image := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(image, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	backing, err := os.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	defer backing.Close()
	identity, err := IdentityOf(backing)
	if err != nil {
		t.Fatal(err)
	}
	device, held, err := Attach(backing, Options{ReadOnly: true, Tag: "toposnap:vn-0123456789abcdef-fedcba9876543210"})
	if err != nil {
		t.Fatal(err)
	}
	held.Close()
	t.Cleanup(func() { _ = Detach(device) })
	if err := os.Remove(image); err != nil {
		t.Fatal(err)
	}
	devices, err := List()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devices {
		if d.Path != device {
			continue
		}
		if d.Backing != identity || d.Tag != "toposnap:vn-0123456789abcdef-fedcba9876543210" || !d.ReadOnly || !d.BackingDeleted() {
			t.Fatalf("List shows %+v; want identity %v, the tag, read-only, backing deleted", d, identity)
		}
		return
	}
	t.Fatalf("List does not show %s", device)
}

func TestAttachRefusesATagTooLong(t *testing.T) {
	if _, _, err := Attach(os.Stdin, Options{Tag: strings.Repeat("x", 64)}); err == nil {
		t.Fatal("a 64-byte tag was accepted; the kernel keeps 63")
	}
}
