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
}

// Attach binds file to a free loop device and returns the device's path
// (/dev/loopN) with the device opened, so that an AutoClear device lives
// until the caller closes it (after mounting it, say).
func Attach(file string, opts Options) (string, *os.File, error) {
	flags := os.O_RDWR
	if opts.ReadOnly {
		flags = os.O_RDONLY
	}
	backing, err := os.OpenFile(file, flags, 0)
	if err != nil {
		return "", nil, fmt.Errorf("open backing file %s: %w", file, err)
	}
	defer backing.Close()
	control, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", nil, fmt.Errorf("open /dev/loop-control: %w", err)
	}
	defer control.Close()

	config := unix.LoopConfig{Fd: uint32(backing.Fd())}
	copy(config.Info.File_name[:], file)
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
			return "", nil, fmt.Errorf("attach %s to %s: %w", file, path, err)
		}
		return path, device, nil
	}
	return "", nil, fmt.Errorf("attach %s: every free loop device was taken before it could be configured", file)
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

// Detach unbinds a loop device from its file. A device that is already
// free counts as detached.
func Detach(device string) error {
	f, err := os.OpenFile(device, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", device, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("detach %s: %w", device, err)
	}
	return nil
}

// Find returns a loop device backed by file ("" when none is), matching the
// backing file by device and inode number, not by name, and attached
// read-only or read-write as asked.
func Find(file string, readOnly bool) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		return "", fmt.Errorf("stat %s: %w", file, err)
	}
	entries, err := os.ReadDir("/sys/block")
	if err != nil {
		return "", fmt.Errorf("list block devices: %w", err)
	}
	for _, entry := range entries {
		index, ok := strings.CutPrefix(entry.Name(), "loop")
		if !ok {
			continue
		}
		if _, err := strconv.Atoi(index); err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join("/sys/block", entry.Name(), "loop")); err != nil {
			continue // not attached
		}
		device := "/dev/" + entry.Name()
		info, err := status(device)
		if err != nil {
			continue
		}
		if info.Inode == st.Ino && info.Device == st.Dev && (info.Flags&unix.LO_FLAGS_READ_ONLY != 0) == readOnly {
			return device, nil
		}
	}
	return "", nil
}

func status(device string) (*unix.LoopInfo64, error) {
	f, err := os.OpenFile(device, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return unix.IoctlLoopGetStatus64(int(f.Fd()))
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

// IsReadOnly reports whether the loop device is attached read-only.
func IsReadOnly(device string) (bool, error) {
	info, err := status(device)
	if err != nil {
		return false, err
	}
	return info.Flags&unix.LO_FLAGS_READ_ONLY != 0, nil
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
