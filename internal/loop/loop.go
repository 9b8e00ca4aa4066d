// Package loop attaches regular files to loop block devices with the
// kernel's loop ioctls (LOOP_CTL_GET_FREE, LOOP_CONFIGURE, LOOP_SET_CAPACITY),
// never through losetup. The driver serves raw block volumes this way, and
// tests build scratch filesystems on it.
package loop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// loopMajor is the block major number of loop devices.
const loopMajor = 7

// Options tune an attachment.
type Options struct {
	// AutoClear detaches the device when its last user closes it (the
	// kernel's LO_FLAGS_AUTOCLEAR): right for a device that is mounted at
	// once, wrong for one that must outlive the caller's open descriptor.
	AutoClear bool
	// ReadOnly attaches the file read-only.
	ReadOnly bool
	// Tag is kept as the device's file name (lo_file_name, at most 63
	// bytes; the backing file's name when empty) and read back by List: it
	// says what the device was attached for, after the file is deleted.
	Tag string
}

// nameSize is the kernel's LO_NAME_SIZE, NUL included.
const nameSize = 64

// Attach binds the open backing file to a free loop device and returns the
// device's path (/dev/loopN) with the device opened, so that an AutoClear
// device lives until the caller closes it (after mounting it, say). The
// kernel attaches the descriptor, never a path: the caller decides how the
// file is reached (beneath a root, without symlinks) and that it is a
// regular file. Open it read-only for a ReadOnly attachment.
func Attach(backing *os.File, opts Options) (string, *os.File, error) {
	if len(opts.Tag) >= nameSize {
		return "", nil, fmt.Errorf("tag %q is longer than %d bytes", opts.Tag, nameSize-1)
	}
	control, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", nil, fmt.Errorf("open /dev/loop-control: %w", err)
	}
	defer control.Close()

	config := unix.LoopConfig{Fd: uint32(backing.Fd())}
	name := opts.Tag
	if name == "" {
		name = backing.Name()
	}
	copy(config.Info.File_name[:nameSize-1], name)
	if opts.AutoClear {
		config.Info.Flags |= unix.LO_FLAGS_AUTOCLEAR
	}
	if opts.ReadOnly {
		config.Info.Flags |= unix.LO_FLAGS_READ_ONLY
	}
	// Another process may take the device between GET_FREE and CONFIGURE:
	// then CONFIGURE fails with EBUSY and the next free one is tried.
	for range 64 {
		index, err := unix.IoctlRetInt(int(control.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", nil, fmt.Errorf("find a free loop device: %w", err)
		}
		path, device, err := openDevice(index)
		if err != nil {
			return "", nil, err
		}
		err = unix.IoctlLoopConfigure(int(device.Fd()), &config)
		if errors.Is(err, unix.EBUSY) {
			device.Close()
			continue
		}
		if err != nil {
			device.Close()
			return "", nil, fmt.Errorf("attach %s to %s: %w", backing.Name(), path, err)
		}
		return path, device, nil
	}
	return "", nil, fmt.Errorf("attach %s: every free loop device was taken before it could be configured", backing.Name())
}

// openDevice opens /dev/loopN, creating the node where no devtmpfs did
// (a container's /dev).
func openDevice(index int) (string, *os.File, error) {
	path := "/dev/loop" + strconv.Itoa(index)
	device, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		if err := unix.Mknod(path, unix.S_IFBLK|0o660, int(unix.Mkdev(loopMajor, uint32(index)))); err != nil && !errors.Is(err, os.ErrExist) {
			return "", nil, fmt.Errorf("create %s: %w", path, err)
		}
		device, err = os.OpenFile(path, os.O_RDWR, 0)
	}
	if err != nil {
		return "", nil, fmt.Errorf("open %s: %w", path, err)
	}
	return path, device, nil
}

// DetachIf detaches the loop device at path if want accepts what it serves
// now, and reports whether it did. A device is chosen (by List, by a
// device number) before it is detached, and may since have been freed and
// handed to another volume by LOOP_CTL_GET_FREE: so it is opened once, and
// what it serves is read and checked, and the device detached, through
// that one descriptor. While it is open the device cannot finish detaching
// and be attached again, so the check holds until the detach. A free
// device, or one already detaching lazily (LO_FLAGS_AUTOCLEAR pending:
// detached while someone held it open), is left alone: nothing to do.
func DetachIf(path string, want func(Device) bool) (bool, error) {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	device, err := read(f, path)
	if errors.Is(err, unix.ENXIO) {
		return false, nil // free
	}
	if err != nil {
		return false, err
	}
	if device.AutoClear || !want(device) {
		return false, nil
	}
	// With our descriptor open the kernel only marks the device
	// LO_FLAGS_AUTOCLEAR; it detaches when the last opener closes it.
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0); err != nil {
		if errors.Is(err, unix.ENXIO) {
			return false, nil
		}
		return false, fmt.Errorf("detach %s: %w", path, err)
	}
	return true, nil
}

// Identity names a file by its device and inode numbers: what a loop
// device records of its backing file, and what outlives the file's name.
type Identity struct {
	Device, Inode uint64
}

// IdentityOf returns the identity of an open file.
func IdentityOf(f *os.File) (Identity, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Identity{}, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return Identity{Device: st.Dev, Inode: st.Ino}, nil
}

// Device is an attached loop device.
type Device struct {
	// Path is /dev/loopN.
	Path string
	// Backing is the identity of the file behind it.
	Backing Identity
	// BackingPath is the backing file's path as the kernel shows it (it
	// ends in " (deleted)" once the file is unlinked); informative only:
	// it is resolved in the mount namespace of whoever attached it.
	BackingPath string
	// Tag is Options.Tag of the attachment.
	Tag      string
	ReadOnly bool
	// AutoClear is LO_FLAGS_AUTOCLEAR: the device detaches when its last
	// opener closes it. It was attached with Options.AutoClear, or it was
	// detached while held open and is going away (a lazy detach): either
	// way it is no device to hand out again.
	AutoClear bool
}

// BackingDeleted reports whether the backing file was unlinked.
func (d Device) BackingDeleted() bool { return strings.HasSuffix(d.BackingPath, " (deleted)") }

// List returns every attached loop device, those detaching lazily
// included (AutoClear). What it reads of a device is a snapshot: act on a
// device through DetachIf, which checks it again.
func List() ([]Device, error) {
	entries, err := os.ReadDir("/sys/block")
	if err != nil {
		return nil, fmt.Errorf("list block devices: %w", err)
	}
	var devices []Device
	for _, entry := range entries {
		index, ok := strings.CutPrefix(entry.Name(), "loop")
		if !ok {
			continue
		}
		if _, err := strconv.Atoi(index); err != nil {
			continue
		}
		if device, err := Stat("/dev/" + entry.Name()); err == nil {
			devices = append(devices, device)
		} // else free, or detached meanwhile
	}
	return devices, nil
}

// Stat reads what the loop device at path serves; unix.ENXIO when it is
// free.
func Stat(path string) (Device, error) {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return Device{}, err
	}
	defer f.Close()
	return read(f, path)
}

// read reads what the open loop device f (at path) serves. The backing
// path comes from sysfs, found by the descriptor's device number, not by
// path: while f is open the device cannot be detached and attached again,
// so both describe one attachment.
func read(f *os.File, path string) (Device, error) {
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if err != nil {
		return Device{}, fmt.Errorf("status of %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Device{}, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK || unix.Major(st.Rdev) != loopMajor {
		return Device{}, fmt.Errorf("%s is not a loop device", path)
	}
	backing, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/loop/backing_file", unix.Major(st.Rdev), unix.Minor(st.Rdev)))
	if err != nil {
		return Device{}, fmt.Errorf("backing file of %s: %w", path, err)
	}
	return Device{
		Path:        path,
		Backing:     Identity{Device: info.Device, Inode: info.Inode},
		BackingPath: strings.TrimSuffix(string(backing), "\n"),
		Tag:         unix.ByteSliceToString(info.File_name[:]),
		ReadOnly:    info.Flags&unix.LO_FLAGS_READ_ONLY != 0,
		AutoClear:   info.Flags&unix.LO_FLAGS_AUTOCLEAR != 0,
	}, nil
}

// Find returns a loop device backed by the file of that identity ("" when
// none is), attached read-only or read-write as asked. A device detaching
// lazily is not one: it would vanish under whoever it was handed to.
func Find(backing Identity, readOnly bool) (string, error) {
	devices, err := List()
	if err != nil {
		return "", err
	}
	for _, device := range devices {
		if device.Backing == backing && device.ReadOnly == readOnly && !device.AutoClear {
			return device.Path, nil
		}
	}
	return "", nil
}

// Resize makes the device see its backing file's current size (after the
// file grew).
func Resize(device string) error {
	f, err := os.OpenFile(device, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", device, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("resize %s: %w", device, err)
	}
	return nil
}

// ByNumber names the loop device with the given device number ("" when the
// number is not a loop device's).
func ByNumber(rdev uint64) string {
	if unix.Major(rdev) != loopMajor {
		return ""
	}
	link, err := os.Readlink(fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(rdev), unix.Minor(rdev)))
	if err != nil {
		return ""
	}
	return "/dev/" + filepath.Base(link)
}
