package driver

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/driver/store"
	"github.com/toposnap/toposnap/internal/loop"
)

// A raw block volume is a sparse image file in its volume directory. Stage
// attaches it to a loop device; publish bind-mounts the device node at the
// target file the CO asked for; unstage detaches it. A read-only publish
// gets a loop device of its own, attached read-only: a read-only bind
// mount of a device node would not stop writes.
//
// The image is opened beneath the pool's root without following a symlink
// (a zone pool is writable by every node of the zone), checked to be a
// regular file before it is opened for I/O, and attached by descriptor, so
// nothing but the pool's own image is ever attached. Devices are found
// again by their backing file's identity (device and inode numbers), never
// by a path, and carry a tag naming the volume (and, for a read-only
// publish, the target): so every step is idempotent across a crash or a
// restart, and a device whose image was deleted is still found.

// tagPrefix starts the tag of every device the driver attaches.
const tagPrefix = "toposnap:"

// volumeTag tags the read-write device of volume id.
func volumeTag(id string) string { return tagPrefix + id }

// readOnlyTag tags the read-only device of volume id published at target:
// a retried publish at the same target finds it.
func readOnlyTag(id, target string) string {
	sum := sha256.Sum256([]byte(target))
	return tagPrefix + id + ":ro:" + hex.EncodeToString(sum[:6])
}

// taggedVolume returns the volume ID a device's tag names ("" for a device
// the driver did not tag).
func taggedVolume(tag string) string {
	rest, ok := strings.CutPrefix(tag, tagPrefix)
	if !ok {
		return ""
	}
	id, _, _ := strings.Cut(rest, ":")
	return id
}

// pathVolume returns the volume ID a backing path names as a pool image
// (".../volumes/<id>/disk.img", deleted or not), "" otherwise: devices
// attached before tags existed are found this way.
func pathVolume(backingPath string) string {
	rest, ok := strings.CutSuffix(strings.TrimSuffix(backingPath, " (deleted)"), "/"+store.ImageName)
	if !ok {
		return ""
	}
	dir, id := filepath.Split(rest)
	if filepath.Base(dir) != "volumes" {
		return ""
	}
	return id
}

// openImage opens volume id's image beneath the pool. It is first opened
// O_PATH, which opens nothing (a FIFO planted there would block an open, a
// device node would see one), then, once it is known to be a regular file,
// reopened through that descriptor with flags. A symlink, a device, or
// anything but a regular file is FAILED_PRECONDITION; no image NOT_FOUND.
func openImage(pool *store.Pool, id string, flags int) (*os.File, error) {
	pathOnly, err := pool.OpenImage(id, unix.O_PATH)
	if err != nil {
		return nil, storeStatus(notFound(err), "image of volume %q", id)
	}
	defer pathOnly.Close()
	fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(int(pathOnly.Fd())), flags|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "reopen the image of volume %q: %v", id, err)
	}
	return os.NewFile(uintptr(fd), pathOnly.Name()), nil
}

// notFound makes a missing file store.ErrNotFound.
func notFound(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return errors.Join(err, store.ErrNotFound)
	}
	return err
}

// imageIdentity returns the identity of volume id's image; ok is false when
// the volume has none (deleted, or a mount volume). The image is opened
// O_PATH only.
func imageIdentity(pool *store.Pool, id string) (identity loop.Identity, ok bool, err error) {
	image, err := pool.OpenImage(id, unix.O_PATH)
	if errors.Is(err, os.ErrNotExist) {
		return loop.Identity{}, false, nil
	}
	if err != nil {
		return loop.Identity{}, false, storeStatus(err, "image of volume %q", id)
	}
	defer image.Close()
	identity, err = loop.IdentityOf(image)
	if err != nil {
		return loop.Identity{}, false, status.Errorf(codes.Internal, "%v", err)
	}
	return identity, true, nil
}

// listDevices lists the attached loop devices.
func listDevices() ([]loop.Device, error) {
	devices, err := loop.List()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list loop devices: %v", err)
	}
	return devices, nil
}

// servesVolume reports whether device serves volume id of pool: its
// backing file is the image now in the pool (image, when there is one), or
// an image deleted from the pool that its tag or its path names. A deleted
// file's identity cannot be checked, so it must lie on the pool's
// filesystem, or under its directory: another pool on this machine may use
// the same IDs (tests do), and its devices are not ours.
func servesVolume(device loop.Device, pool *store.Pool, id string, image *loop.Identity) bool {
	if image != nil && device.Backing == *image {
		return true
	}
	if !device.BackingDeleted() || (taggedVolume(device.Tag) != id && pathVolume(device.BackingPath) != id) {
		return false
	}
	dir := pool.Config().Dir
	if strings.HasPrefix(device.BackingPath, dir+string(filepath.Separator)) {
		return true
	}
	var st unix.Stat_t
	return unix.Stat(filepath.Join(dir, "volumes"), &st) == nil && st.Dev == device.Backing.Device
}

// attachImage returns the read-write loop device of volume id, attaching
// the image if no device serves it yet.
func attachImage(pool *store.Pool, id string) (string, error) {
	image, err := openImage(pool, id, unix.O_RDWR)
	if err != nil {
		return "", err
	}
	defer image.Close()
	identity, err := loop.IdentityOf(image)
	if err != nil {
		return "", status.Errorf(codes.Internal, "%v", err)
	}
	device, err := loop.Find(identity, false)
	if err != nil {
		return "", status.Errorf(codes.Internal, "find the loop device of volume %q: %v", id, err)
	}
	if device != "" {
		return device, nil
	}
	device, held, err := loop.Attach(image, loop.Options{Tag: volumeTag(id)})
	if err != nil {
		return "", status.Errorf(codes.Internal, "attach the image of volume %q: %v", id, err)
	}
	held.Close() // without auto-clear the device stays until unstage
	return device, nil
}

// detachVolume detaches every loop device serving volume id, read-write
// and read-only, whatever became of its metadata: found by the identity of
// the image still in the pool, or by tag or path once it was deleted.
func detachVolume(pool *store.Pool, id string) error {
	identity, ok, err := imageIdentity(pool, id)
	if err != nil {
		// Whatever is at the image's place now is not the pool's: what was
		// attached before is found by its tag, once the image was replaced.
		klog.InfoS("Volume image refused; detaching its devices by tag", "volume", id, "err", err)
	}
	var image *loop.Identity
	if ok {
		image = &identity
	}
	devices, err := listDevices()
	if err != nil {
		return err
	}
	for _, device := range devices {
		if !servesVolume(device, pool, id, image) {
			continue
		}
		// Checked again on the descriptor that detaches it: since List the
		// device may have been freed and attached for another volume.
		detached, err := loop.DetachIf(device.Path, func(now loop.Device) bool { return servesVolume(now, pool, id, image) })
		if err != nil {
			return status.Errorf(codes.Internal, "detach the loop device of volume %q: %v", id, err)
		}
		if detached {
			klog.V(2).InfoS("Detached loop device", "volume", id, "device", device.Path, "readOnly", device.ReadOnly)
		}
	}
	return nil
}

// attachedDevices names the loop devices serving volume id's image, if it
// has one.
func attachedDevices(pool *store.Pool, id string) ([]string, error) {
	identity, ok, err := imageIdentity(pool, id)
	if err != nil || !ok {
		return nil, nil //nolint:nilerr // no image of ours: nothing of ours attached
	}
	devices, err := listDevices()
	if err != nil {
		return nil, err
	}
	var attached []string
	for _, device := range devices {
		if device.Backing == identity {
			attached = append(attached, device.Path)
		}
	}
	return attached, nil
}

// publishBlock bind-mounts volume id's loop device at target (a file): its
// staged read-write device, or a read-only device of its own. A retry
// after a failure or a crash between attach and mount finds that device
// again by its tag.
func (d *Driver) publishBlock(pool *store.Pool, id, target string, readOnly bool) error {
	flags := unix.O_RDWR
	if readOnly {
		flags = unix.O_RDONLY
	}
	image, err := openImage(pool, id, flags)
	if err != nil {
		return err
	}
	defer image.Close()
	identity, err := loop.IdentityOf(image)
	if err != nil {
		return status.Errorf(codes.Internal, "%v", err)
	}
	staged, err := loop.Find(identity, false)
	if err != nil {
		return status.Errorf(codes.Internal, "find the loop device of volume %q: %v", id, err)
	}
	if staged == "" {
		return status.Errorf(codes.FailedPrecondition, "block volume %q is not staged; call NodeStageVolume first", id)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return status.Errorf(codes.Internal, "create parent of %s: %v", target, err)
	}
	mounted, err := d.mounter.IsMountPoint(target)
	if err == nil && mounted {
		return nil
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o640)
	if err != nil {
		return status.Errorf(codes.Internal, "create target file %s: %v", target, err)
	}
	f.Close()
	device, attached, tag := staged, false, readOnlyTag(id, target)
	if readOnly {
		if device, attached, err = readOnlyDevice(image, identity, tag); err != nil {
			return status.Errorf(codes.Internal, "attach volume %q read-only: %v", id, err)
		}
	}
	if err := unix.Mount(device, target, "", unix.MS_BIND, ""); err != nil {
		if attached {
			_, _ = loop.DetachIf(device, func(now loop.Device) bool { return isReadOnlyDevice(now, identity, tag) })
		}
		return status.Errorf(codes.Internal, "bind-mount %s at %s: %v", device, target, err)
	}
	return nil
}

// isReadOnlyDevice reports whether device is the read-only device tagged
// tag serving the image of that identity, and not detaching lazily.
func isReadOnlyDevice(device loop.Device, identity loop.Identity, tag string) bool {
	return device.Backing == identity && device.ReadOnly && device.Tag == tag && !device.AutoClear
}

// readOnlyDevice returns the read-only device tagged tag serving the image,
// attaching one when there is none (attached reports that). A device
// detaching lazily is not reused: it would vanish under the new mount.
func readOnlyDevice(image *os.File, identity loop.Identity, tag string) (device string, attached bool, err error) {
	devices, err := loop.List()
	if err != nil {
		return "", false, err
	}
	for _, dev := range devices {
		if isReadOnlyDevice(dev, identity, tag) {
			return dev.Path, false, nil
		}
	}
	device, held, err := loop.Attach(image, loop.Options{ReadOnly: true, Tag: tag})
	if err != nil {
		return "", false, err
	}
	held.Close()
	return device, true, nil
}

// readOnlyDevicesFor returns the loop devices that may be the read-only
// devices of a publish of volume id at target: the one mounted there, and
// any a failed or crashed publish attached for it without mounting it. They
// are candidates only: detachReadOnlyDevices checks each before detaching.
func readOnlyDevicesFor(id, target string) []string {
	var devices []string
	var st unix.Stat_t
	if err := unix.Stat(target, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK {
		if device := loop.ByNumber(st.Rdev); device != "" {
			devices = append(devices, device)
		}
	}
	all, err := loop.List()
	if err != nil {
		return devices
	}
	tag := readOnlyTag(id, target)
	for _, device := range all {
		if device.ReadOnly && device.Tag == tag && (len(devices) == 0 || devices[0] != device.Path) {
			devices = append(devices, device.Path)
		}
	}
	return devices
}

// detachReadOnlyDevices detaches those of the candidate devices that are
// read-only devices of volume id published at target: tagged so, or (a
// device attached before tags) backed by the volume's image. Whatever else
// is at a candidate's number now, a device of another volume say (a target
// may hold a stale node; a device may be freed and reused since it was
// found), is left alone. Each is checked on the descriptor that detaches
// it.
func (d *Driver) detachReadOnlyDevices(id, target string, candidates []string) error {
	if len(candidates) == 0 {
		return nil
	}
	var image *loop.Identity
	if pool, err := d.locate(id, store.KindVolume); err == nil {
		if identity, ok, err := imageIdentity(pool, id); err == nil && ok {
			image = &identity
		}
	}
	tag := readOnlyTag(id, target)
	ours := func(device loop.Device) bool {
		return device.ReadOnly && (device.Tag == tag || (image != nil && device.Backing == *image))
	}
	for _, device := range candidates {
		detached, err := loop.DetachIf(device, ours)
		if err != nil {
			return status.Errorf(codes.Internal, "detach read-only device %s: %v", device, err)
		}
		if !detached {
			klog.V(2).InfoS("Left a loop device that is no read-only device of the unpublished volume", "volume", id, "target", target, "device", device)
		}
	}
	return nil
}

// detachLeakedDevices runs at start-up: it detaches the loop devices of
// this node's pools that nothing can be using. A block volume's stage is
// its read-write device, with no mount to show for it, so a device of a
// ready volume is kept: the CO still holds it staged and unstages it. Only
// devices no CSI call can reach any more are detached: those whose image
// was deleted from a pool, and those of a volume whose metadata is gone or
// that is not ready (NodeStageVolume needs a ready volume).
func (d *Driver) detachLeakedDevices() {
	devices, err := loop.List()
	if err != nil {
		klog.ErrorS(err, "Cannot look for leaked loop devices")
		return
	}
	for _, device := range devices {
		if device.AutoClear {
			continue // going away on its own
		}
		id := taggedVolume(device.Tag)
		if id == "" {
			id = pathVolume(device.BackingPath)
		}
		pool, err := d.locate(id, store.KindVolume)
		if id == "" || err != nil {
			continue // not a volume of this node's pools
		}
		reason := leakReason(pool, id, device)
		if reason == "" {
			continue
		}
		// Only the attachment judged here: a device freed since and
		// attached again serves another file, or carries another tag.
		detached, err := loop.DetachIf(device.Path, func(now loop.Device) bool {
			return now.Backing == device.Backing && now.Tag == device.Tag
		})
		if err != nil {
			klog.ErrorS(err, "Cannot detach leaked loop device", "device", device.Path, "volume", id, "reason", reason)
			continue
		}
		if !detached {
			continue
		}
		klog.InfoS("Detached leaked loop device", "device", device.Path, "volume", id, "reason", reason)
	}
}

// leakReason says why nothing can be using device, which names volume id
// of pool ("" when something may).
func leakReason(pool *store.Pool, id string, device loop.Device) string {
	if device.BackingDeleted() {
		if servesVolume(device, pool, id, nil) {
			return "its image was deleted"
		}
		return ""
	}
	identity, ok, err := imageIdentity(pool, id)
	if err != nil || !ok || identity != device.Backing {
		return "" // not this pool's image: another pool's, or unsure
	}
	vol, err := pool.LookupVolume(id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return "the volume's metadata is gone"
	case err != nil:
		klog.InfoS("Keeping a loop device whose volume cannot be read", "device", device.Path, "volume", id, "err", err)
		return ""
	case vol.State != store.StateReady:
		return "the volume is " + string(vol.State)
	}
	return ""
}
