package driver

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/toposnap/toposnap/internal/loop"
	"github.com/toposnap/toposnap/driver/store"
)

// A raw block volume is a sparse image file in its volume directory. Stage
// attaches it to a loop device (found again by the image's inode, so every
// step is idempotent and survives a driver restart); publish bind-mounts
// the device node at the target file the CO asked for; unstage detaches
// it. A read-only publish gets a loop device of its own, attached
// read-only: a read-only bind mount of a device node would not stop writes.

func imagePath(pool *store.Pool, vol store.Volume) string {
	return filepath.Join(pool.VolumeDir(vol.ID), store.ImageName)
}

// attachImage returns the image's read-write loop device, attaching it if
// no device serves it yet.
func attachImage(image string) (string, error) {
	device, err := loop.Find(image, false)
	if err != nil {
		return "", status.Errorf(codes.Internal, "find loop device of %s: %v", image, err)
	}
	if device != "" {
		return device, nil
	}
	device, held, err := loop.Attach(image, loop.Options{})
	if err != nil {
		return "", status.Errorf(codes.Internal, "attach %s: %v", image, err)
	}
	held.Close() // without auto-clear the device stays until unstage
	return device, nil
}

// detachImage detaches every loop device serving the image.
func detachImage(image string) error {
	for _, readOnly := range []bool{false, true} {
		for {
			device, err := loop.Find(image, readOnly)
			if err != nil {
				return status.Errorf(codes.Internal, "find loop device of %s: %v", image, err)
			}
			if device == "" {
				break
			}
			if err := loop.Detach(device); err != nil {
				return status.Errorf(codes.Internal, "%v", err)
			}
		}
	}
	return nil
}

// publishBlock bind-mounts the image's loop device at target (a file).
func (d *Driver) publishBlock(image, target string, readOnly bool) error {
	device, err := loop.Find(image, false)
	if err != nil {
		return status.Errorf(codes.Internal, "find loop device of %s: %v", image, err)
	}
	if device == "" {
		return status.Errorf(codes.FailedPrecondition, "block volume image %s is not staged; call NodeStageVolume first", image)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return status.Errorf(codes.Internal, "create parent of %s: %v", target, err)
	}
	mounted, err := d.mounter.IsMountPoint(target)
	if err == nil && mounted {
		return nil
	}
	if readOnly {
		var held *os.File
		device, held, err = loop.Attach(image, loop.Options{ReadOnly: true})
		if err != nil {
			return status.Errorf(codes.Internal, "attach %s read-only: %v", image, err)
		}
		held.Close()
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o640)
	if err != nil {
		return status.Errorf(codes.Internal, "create target file %s: %v", target, err)
	}
	f.Close()
	if err := unix.Mount(device, target, "", unix.MS_BIND, ""); err != nil {
		if readOnly {
			_ = loop.Detach(device)
		}
		return status.Errorf(codes.Internal, "bind-mount %s at %s: %v", device, target, err)
	}
	return nil
}

// readOnlyLoopAt returns the read-only loop device mounted at target, if
// that is what is there ("" otherwise).
func readOnlyLoopAt(target string) string {
	var st unix.Stat_t
	if err := unix.Stat(target, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return ""
	}
	device := loop.ByNumber(st.Rdev)
	if device == "" {
		return ""
	}
	readOnly, err := loop.IsReadOnly(device)
	if err != nil || !readOnly {
		return ""
	}
	return device
}
