// Package tenantops is what a hostile tenant does inside its btrfs volume,
// with raw ioctls: for tests and the real node's tenant program; it knows no
// component. Every operation here is one any user may make in a directory it
// may write (no capability), so a test that makes it as uid 1000 proves what
// a pod could do, not what our code allows. Tenant and ServeOr are how a test
// makes them as the tenant. It imports only the standard library and
// golang.org/x/sys/unix, and builds without cgo.
package tenantops

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The btrfs ioctl ABI (include/uapi/linux/btrfs.h), written out here so the
// tenant depends on nothing but the kernel's headers.
const (
	ioctlMagic = 0x94
	// subvolQgroupInherit is BTRFS_SUBVOL_QGROUP_INHERIT: the create
	// carries its own qgroup inheritance list.
	subvolQgroupInherit = 1 << 2
	// subvolReadOnly is BTRFS_SUBVOL_RDONLY.
	subvolReadOnly = 1 << 1
	// firstFreeObjectID is a subvolume's root directory inode.
	firstFreeObjectID = 256
	// qgroupInheritHeader is sizeof(struct btrfs_qgroup_inherit): flags,
	// num_qgroups, num_ref_copies, num_excl_copies and a btrfs_qgroup_limit
	// (five u64), followed by the qgroup ids.
	qgroupInheritHeader = 72
)

func iow(nr, size uintptr) uintptr  { return 1<<30 | size<<16 | ioctlMagic<<8 | nr }
func iowr(nr, size uintptr) uintptr { return 3<<30 | size<<16 | ioctlMagic<<8 | nr }

// volArgs is struct btrfs_ioctl_vol_args.
type volArgs struct {
	fd   int64
	name [4088]byte
}

// volArgsV2 is struct btrfs_ioctl_vol_args_v2; inheritSize and inherit are
// the union's size and qgroup_inherit.
type volArgsV2 struct {
	fd          int64
	transid     uint64
	flags       uint64
	inheritSize uint64
	inherit     uint64
	unused      [2]uint64
	name        [4040]byte
}

// inoLookupArgs is struct btrfs_ioctl_ino_lookup_args.
type inoLookupArgs struct {
	treeID   uint64
	objectID uint64
	name     [4080]byte
}

var (
	iocSubvolCreate   = iow(14, unsafe.Sizeof(volArgs{}))
	iocInoLookup      = iowr(18, unsafe.Sizeof(inoLookupArgs{}))
	iocSnapCreateV2   = iow(23, unsafe.Sizeof(volArgsV2{}))
	iocSubvolCreateV2 = iow(24, unsafe.Sizeof(volArgsV2{}))
	iocSubvolSetflags = iow(26, unsafe.Sizeof(uint64(0)))
)

func ioctl(fd uintptr, request uintptr, arg unsafe.Pointer) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, request, uintptr(arg))
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		}
		return errno
	}
}

func setName(dst []byte, name string) error {
	if len(name) == 0 || len(name) >= len(dst) {
		return fmt.Errorf("subvolume name %q: length must be 1..%d", name, len(dst)-1)
	}
	copy(dst, name)
	return nil
}

// CreateSubvolume is `btrfs subvolume create path` (BTRFS_IOC_SUBVOL_CREATE),
// which any user who may write in path's directory may do.
func CreateSubvolume(path string) error {
	parent, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer parent.Close()
	var args volArgs
	if err := setName(args.name[:], filepath.Base(path)); err != nil {
		return err
	}
	if err := ioctl(parent.Fd(), iocSubvolCreate, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("create subvolume %s: %w", path, err)
	}
	return nil
}

// CreateSubvolumeInheriting creates a subvolume at path whose qgroup joins
// exactly the groups listed (none for an empty list) instead of its
// parent's: BTRFS_IOC_SUBVOL_CREATE_V2 with the tenant's own inheritance
// list.
func CreateSubvolumeInheriting(path string, qgroups []uint64) error {
	return createInheriting(path, "", qgroups)
}

// SnapshotInheriting creates at path a writable snapshot of the subvolume
// source, passing the tenant's own qgroup inheritance list
// (BTRFS_IOC_SNAP_CREATE_V2).
func SnapshotInheriting(path, source string, qgroups []uint64) error {
	return createInheriting(path, source, qgroups)
}

// createInheriting creates a subvolume at path, or a snapshot of source when
// source is set, with the inheritance list qgroups (struct
// btrfs_qgroup_inherit: the header, then the qgroup ids).
func createInheriting(path, source string, qgroups []uint64) error {
	parent, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer parent.Close()
	inherit := make([]byte, qgroupInheritHeader+8*len(qgroups))
	binary.NativeEndian.PutUint64(inherit[8:], uint64(len(qgroups)))
	for i, id := range qgroups {
		binary.NativeEndian.PutUint64(inherit[qgroupInheritHeader+8*i:], id)
	}
	args := volArgsV2{flags: subvolQgroupInherit, inheritSize: uint64(len(inherit)), inherit: uint64(uintptr(unsafe.Pointer(&inherit[0])))}
	if err := setName(args.name[:], filepath.Base(path)); err != nil {
		return err
	}
	request := iocSubvolCreateV2
	if source != "" {
		src, err := os.Open(source)
		if err != nil {
			return err
		}
		defer src.Close()
		args.fd = int64(src.Fd())
		request = iocSnapCreateV2
	}
	err = ioctl(parent.Fd(), request, unsafe.Pointer(&args))
	runtime.KeepAlive(inherit) // the kernel reads it through a plain address
	if err != nil {
		return fmt.Errorf("create subvolume %s inheriting %v: %w", path, qgroups, err)
	}
	return nil
}

// MakeReadOnly makes the subvolume whose root directory is path read-only,
// as the owner of that directory may (BTRFS_IOC_SUBVOL_SETFLAGS).
func MakeReadOnly(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := uint64(subvolReadOnly)
	if err := ioctl(f.Fd(), iocSubvolSetflags, unsafe.Pointer(&flags)); err != nil {
		return fmt.Errorf("set subvolume flags %#x: %w", flags, err)
	}
	return nil
}

// SubvolumeID is the id of the subvolume holding path; INO_LOOKUP answers
// it to any user when asked for the root directory's inode.
func SubvolumeID(path string) (uint64, error) {
	dir, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer dir.Close()
	args := inoLookupArgs{objectID: firstFreeObjectID}
	if err := ioctl(dir.Fd(), iocInoLookup, unsafe.Pointer(&args)); err != nil {
		return 0, fmt.Errorf("look up the subvolume of %s: %w", path, err)
	}
	return args.treeID, nil
}

// Reflink makes the file dst share src's extents (FICLONE), as any user
// who may read src and write dst may.
func Reflink(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		return fmt.Errorf("reflink %s to %s: %w", src, dst, err)
	}
	return nil
}

// Fill writes up to size bytes of data (not zeroes, which a filesystem
// might not store) into the file path, created or truncated, a MiB at a
// time, then fsyncs it. It returns how much the writes that succeeded wrote
// and the first error (EDQUOT, where a limit holds).
func Fill(path string, size int64) (int64, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	chunk := bytes.Repeat([]byte{0xab}, 1<<20)
	var written int64
	for written < size {
		n, err := f.Write(chunk[:min(int64(len(chunk)), size-written)])
		written += int64(n)
		if err != nil {
			return written, fmt.Errorf("write %s after %d bytes: %w", path, written, err)
		}
	}
	if err := f.Sync(); err != nil {
		return written, fmt.Errorf("fsync %s: %w", path, err)
	}
	return written, nil
}
