package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The btrfs ioctl ABI (include/uapi/linux/btrfs.h), written out here so the
// program depends on nothing but the kernel's headers.
const (
	ioctlMagic = 0x94
	// subvolQgroupInherit is BTRFS_SUBVOL_QGROUP_INHERIT: the create
	// carries its own qgroup inheritance list.
	subvolQgroupInherit = 1 << 2
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
	iocSubvolCreateV2 = iow(24, unsafe.Sizeof(volArgsV2{}))
)

func ioctl(fd uintptr, request uintptr, arg unsafe.Pointer) error {
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, request, uintptr(arg)); errno != 0 {
		return errno
	}
	return nil
}

// createSubvolume is `btrfs subvolume create path`, which any user who may
// write in path's directory may do.
func createSubvolume(path string) error {
	parent, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer parent.Close()
	var args volArgs
	copy(args.name[:len(args.name)-1], filepath.Base(path))
	if err := ioctl(parent.Fd(), iocSubvolCreate, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("create subvolume %s: %w", path, err)
	}
	return nil
}

// createSubvolumeInheriting creates a subvolume at path whose qgroup joins
// exactly the groups listed (none for an empty list) instead of its
// parent's: the escape this program tries.
func createSubvolumeInheriting(path string, qgroups []uint64) error {
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
	copy(args.name[:len(args.name)-1], filepath.Base(path))
	err = ioctl(parent.Fd(), iocSubvolCreateV2, unsafe.Pointer(&args))
	runtime.KeepAlive(inherit) // the kernel reads it through a plain address
	if err != nil {
		return fmt.Errorf("create subvolume %s inheriting %v: %w", path, qgroups, err)
	}
	return nil
}

// subvolumeID is the id of the subvolume holding path; INO_LOOKUP answers
// it to any user when asked for the root directory's inode.
func subvolumeID(path string) (uint64, error) {
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

// fill writes up to size bytes into a new file at path, a MiB at a time,
// then fsyncs it; it returns what the writes that succeeded wrote.
func fill(path string, size int64) (int64, error) {
	file, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, err
	}
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i*7 + 1) // not zeroes, which a filesystem might not store
	}
	var written int64
	for written < size {
		n, err := file.Write(chunk[:min(int64(len(chunk)), size-written)])
		written += int64(n)
		if err != nil {
			file.Close()
			return written, fmt.Errorf("write %s after %d bytes: %w", path, written, err)
		}
	}
	if err := file.Sync(); err != nil {
		file.Close()
		return written, fmt.Errorf("fsync %s: %w", path, err)
	}
	return written, file.Close()
}

// errnoName names the errno err carries ("EDQUOT"), or is empty.
func errnoName(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return ""
}
