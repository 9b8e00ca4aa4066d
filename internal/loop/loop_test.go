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
	t.Cleanup(func() { _, _ = DetachIf(device, func(Device) bool { return true }) })

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
	if d, err := Stat(readOnly); err != nil || !d.ReadOnly || d.Backing != identity {
		t.Fatalf("Stat(%s) = %+v, %v; want read-only, backed by %v", readOnly, d, err, identity)
	}
	var st unix.Stat_t
	if err := unix.Stat(readOnly, &st); err != nil || ByNumber(st.Rdev) != readOnly {
		t.Fatalf("ByNumber(%s) = %q, %v", readOnly, ByNumber(st.Rdev), err)
	}
	for _, d := range []string{readOnly, device} {
		if detached, err := DetachIf(d, func(d Device) bool { return d.Backing == identity }); err != nil || !detached {
			t.Fatalf("DetachIf(%s) = %v, %v", d, detached, err)
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
	t.Cleanup(func() { _, _ = DetachIf(device, func(Device) bool { return true }) })
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

// scratchImage creates a 1 MiB file and returns it open read-write with its
// identity.
func scratchImage(t *testing.T, name string) (*os.File, Identity) {
	t.Helper()
	image := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(image, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	backing, err := os.OpenFile(image, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backing.Close() })
	identity, err := IdentityOf(backing)
	if err != nil {
		t.Fatal(err)
	}
	return backing, identity
}

// attachForTest attaches backing and detaches the device at cleanup,
// whatever it then serves.
func attachForTest(t *testing.T, backing *os.File, opts Options) string {
	t.Helper()
	device, held, err := Attach(backing, opts)
	if err != nil {
		t.Fatal(err)
	}
	held.Close()
	t.Cleanup(func() { _, _ = DetachIf(device, func(Device) bool { return true }) })
	return device
}

// lazilyDetach detaches device while another opener (a pod, say) holds it:
// the kernel only marks it LO_FLAGS_AUTOCLEAR, and it stays bound to its
// file until the holder closes it. The holder is returned.
func lazilyDetach(t *testing.T, device string) *os.File {
	t.Helper()
	holder, err := os.Open(device)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Close() })
	f, err := os.Open(device)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0); err != nil {
		t.Fatal(err)
	}
	return holder
}

// A device chosen earlier may have been freed and handed to another volume
// since: DetachIf checks, on the descriptor it detaches through, that the
// device still is what the caller chose, and leaves it otherwise.
func TestDetachIfLeavesADeviceThatServesSomethingElse(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("loop devices need root")
	}
	_, identityA := scratchImage(t, "a.img")
	backingB, identityB := scratchImage(t, "b.img")
	device := attachForTest(t, backingB, Options{Tag: "b"})

	detached, err := DetachIf(device, func(d Device) bool { return d.Backing == identityA })
	if err != nil || detached {
		t.Fatalf("DetachIf(%s, backs A) = %v, %v on a device backing B; want refused", device, detached, err)
	}
	if found, err := Find(identityB, false); err != nil || found != device {
		t.Fatalf("after a refused detach, Find(B) = %q, %v; want %s still attached", found, err, device)
	}
	detached, err = DetachIf(device, func(d Device) bool { return d.Backing == identityB && d.Tag == "b" })
	if err != nil || !detached {
		t.Fatalf("DetachIf(%s, backs B) = %v, %v; want detached", device, detached, err)
	}
	if found, err := Find(identityB, false); err != nil || found != "" {
		t.Fatalf("after detach, Find(B) = %q, %v; want none", found, err)
	}
}

// A device detached while something held it open stays bound until the
// holder lets go: it is going away, so it is not attached for Find (a
// re-stage must not reuse it) and DetachIf has nothing left to do.
func TestADeviceDetachingLazilyIsNotAttached(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("loop devices need root")
	}
	backing, identity := scratchImage(t, "disk.img")
	device := attachForTest(t, backing, Options{Tag: "lazy"})
	holder := lazilyDetach(t, device)

	if info, err := unix.IoctlLoopGetStatus64(int(holder.Fd())); err != nil || info.Inode != identity.Inode {
		t.Fatalf("the held device no longer backs the file (%v); the kernel detached it at once", err)
	}
	if found, err := Find(identity, false); err != nil || found != "" {
		t.Fatalf("Find = %q, %v on a device detaching lazily; want none", found, err)
	}
	listed := false
	devices, err := List()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devices {
		if d.Path == device {
			listed = d.AutoClear
		}
	}
	if !listed {
		t.Fatalf("List does not show %s with AutoClear pending", device)
	}
	detached, err := DetachIf(device, func(Device) bool { return true })
	if err != nil || detached {
		t.Fatalf("DetachIf on a device detaching lazily = %v, %v; want nothing to do", detached, err)
	}
}
