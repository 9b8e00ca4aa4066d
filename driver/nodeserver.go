package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"

	"github.com/toposnap/toposnap/driver/store"
	"github.com/toposnap/toposnap/internal/loop"
)

// NodeStageVolume bind-mounts a mount volume's directory at the staging
// path, or attaches a block volume's image to a loop device.
func (d *Driver) NodeStageVolume(_ context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if req.GetStagingTargetPath() == "" {
		return nil, status.Error(codes.InvalidArgument, "staging target path is required")
	}
	if req.GetVolumeCapability() == nil {
		return nil, status.Error(codes.InvalidArgument, "volume capability is required")
	}
	// Every pool path is built from the request's ID (validated by
	// locate), never from the metadata's "id": a zone pool's files are
	// written by every node of the zone.
	id := req.GetVolumeId()
	pool, vol, err := d.lookupVolume(id)
	if err != nil {
		return nil, err
	}
	if err := checkVolumeCapabilities([]*csi.VolumeCapability{req.GetVolumeCapability()}, vol); err != nil {
		return nil, err
	}
	if vol.Block {
		if _, err := attachImage(pool, id); err != nil {
			return nil, err
		}
		return &csi.NodeStageVolumeResponse{}, nil
	}
	if vol.Layout == store.LayoutSealed {
		if err := d.stageSealed(pool, id, req.GetStagingTargetPath()); err != nil {
			return nil, err
		}
		return &csi.NodeStageVolumeResponse{}, nil
	}
	dir, err := pool.OpenVolumeDir(id)
	if err != nil {
		return nil, storeStatus(err, "volume %q", id)
	}
	defer dir.Close()
	if err := d.mountDescriptor(dir, req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

// stageSealed mounts a sealed volume (store.Layout) at target: on a btrfs
// pool its pod directory inside an overlay whose upper layer is the
// volume's upper/, so that no btrfs ioctl a pod makes reaches the pool;
// elsewhere the pod directory itself.
func (d *Driver) stageSealed(pool *store.Pool, id, target string) error {
	dirs, err := pool.OpenSealed(id)
	if err != nil {
		return storeStatus(err, "volume %q", id)
	}
	defer dirs.Close()
	if pool.BackendName() != "btrfs" {
		return d.mountDescriptor(dirs.Pod, target)
	}
	mounted, err := d.mountPoint(target)
	if err != nil || mounted {
		return err
	}
	noexec, err := mountedNoexec(dirs.Upper)
	if err != nil {
		return status.Errorf(codes.Internal, "volume %s: %v", id, err)
	}
	tree, err := overlayPodDir(dirs, noexec)
	if errors.Is(err, errReadOnlyOverlay) {
		// A full volume: its limit refused the overlay's work directory.
		err = pool.WithLimitLifted(id, func() error {
			tree, err = overlayPodDir(dirs, noexec)
			return err
		})
	}
	if err != nil {
		return status.Errorf(codes.Internal, "mount volume %s: %v", id, err)
	}
	defer func() { _ = unix.Close(tree) }()
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return status.Errorf(codes.Internal, "attach volume %s at %s: %v", id, target, err)
	}
	return nil
}

// errReadOnlyOverlay: the kernel mounted the overlay read-only, which it
// does when it cannot make its work directory.
var errReadOnlyOverlay = errors.New("the overlay came up read-only (its work directory could not be made)")

// mountedNoexec reports whether the pool's mount holding dir is noexec,
// which the overlay keeps (its own mount starts with no flags).
func mountedNoexec(dir *os.File) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(dir.Fd()), &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", dir.Name(), err)
	}
	return st.Flags&unix.ST_NOEXEC != 0, nil
}

// overlayPodDir makes the overlay of dirs with the new mount API, each
// layer given by its descriptor (FSCONFIG_SET_FD, Linux 6.8+; older
// kernels take the layers' /proc/self/fd paths, which name the same
// directories), and returns a detached mount of its pod directory, nosuid
// and nodev (noexec too when the pool is): no pool path is resolved again.
func overlayPodDir(dirs store.SealedDirs, noexec bool) (int, error) {
	fs, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("open an overlay filesystem: %w", err)
	}
	defer func() { _ = unix.Close(fs) }()
	layers := []struct {
		key, legacyKey string
		dir            *os.File
	}{{"lowerdir+", "lowerdir", dirs.Lower}, {"upperdir", "upperdir", dirs.Upper}, {"workdir", "workdir", dirs.Work}}
	for _, l := range layers {
		err := unix.FsconfigSetFd(fs, l.key, int(l.dir.Fd()))
		if errors.Is(err, unix.EINVAL) {
			err = unix.FsconfigSetString(fs, l.legacyKey, "/proc/self/fd/"+strconv.Itoa(int(l.dir.Fd())))
		}
		if err != nil {
			return -1, fmt.Errorf("overlay %s: %w", l.legacyKey, err)
		}
	}
	// No overlay metadata in the upper layer is obeyed: redirects and
	// metacopy would point lookups into the lower layer (empty, but a zone
	// pool's upper layer is written by every node of the zone), and the
	// index follows file handles.
	for _, opt := range [][2]string{{"redirect_dir", "nofollow"}, {"metacopy", "off"}, {"index", "off"}} {
		if err := unix.FsconfigSetString(fs, opt[0], opt[1]); err != nil {
			return -1, fmt.Errorf("overlay option %s=%s: %w", opt[0], opt[1], err)
		}
	}
	if err := unix.FsconfigCreate(fs); err != nil {
		return -1, fmt.Errorf("create the overlay: %w", err)
	}
	attrs := uint32(unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV)
	if noexec {
		attrs |= unix.MOUNT_ATTR_NOEXEC
	}
	mnt, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, int(attrs))
	if err != nil {
		return -1, fmt.Errorf("mount the overlay: %w", err)
	}
	defer func() { _ = unix.Close(mnt) }()
	var st unix.Statfs_t
	if err := unix.Fstatfs(mnt, &st); err != nil {
		return -1, fmt.Errorf("statfs the overlay: %w", err)
	}
	if st.Flags&unix.ST_RDONLY != 0 {
		return -1, errReadOnlyOverlay
	}
	// The pod's directory, looked up in the overlay without symlinks: the
	// overlay's root is merged (its listing cached by the kernel), the pod
	// directory exists in the upper layer only and passes straight through.
	pod, err := unix.Openat2(mnt, store.SealedPodDir, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		return -1, fmt.Errorf("open the pod directory in the overlay: %w", err)
	}
	defer func() { _ = unix.Close(pod) }()
	tree, err := unix.OpenTree(pod, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	if err != nil {
		return -1, fmt.Errorf("clone the pod directory's mount: %w", err)
	}
	return tree, nil
}

// NodeUnstageVolume unmounts the staging path and removes it, and detaches
// a block volume's loop device.
func (d *Driver) NodeUnstageVolume(_ context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if req.GetStagingTargetPath() == "" {
		return nil, status.Error(codes.InvalidArgument, "staging target path is required")
	}
	// Detached by what backs the devices, not by the metadata: a volume
	// whose metadata is gone or that is being deleted may still have one.
	if pool, err := d.locate(req.GetVolumeId(), store.KindVolume); err == nil {
		if err := detachVolume(pool, req.GetVolumeId()); err != nil {
			return nil, err
		}
	}
	if err := d.unmountAndRemove(req.GetStagingTargetPath()); err != nil {
		return nil, status.Errorf(codes.Internal, "unmount staging path %s: %v", req.GetStagingTargetPath(), err)
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// NodePublishVolume bind-mounts the staged volume at the target path,
// read-only when asked.
func (d *Driver) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	switch {
	case req.GetVolumeId() == "":
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	case req.GetTargetPath() == "":
		return nil, status.Error(codes.InvalidArgument, "target path is required")
	case req.GetStagingTargetPath() == "":
		return nil, status.Error(codes.InvalidArgument, "staging target path is required (this driver stages volumes)")
	case req.GetVolumeCapability() == nil:
		return nil, status.Error(codes.InvalidArgument, "volume capability is required")
	}
	pool, vol, err := d.lookupVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if err := checkVolumeCapabilities([]*csi.VolumeCapability{req.GetVolumeCapability()}, vol); err != nil {
		return nil, err
	}
	if vol.Block {
		if err := d.publishBlock(pool, req.GetVolumeId(), req.GetTargetPath(), req.GetReadonly()); err != nil {
			return nil, err
		}
		return &csi.NodePublishVolumeResponse{}, nil
	}
	staged, err := d.mounter.IsMountPoint(req.GetStagingTargetPath())
	if err != nil || !staged {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %q is not staged at %s; call NodeStageVolume first", req.GetVolumeId(), req.GetStagingTargetPath())
	}
	if err := d.bindMount(req.GetStagingTargetPath(), req.GetTargetPath(), req.GetReadonly()); err != nil {
		return nil, err
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// NodeUnpublishVolume unmounts the target path and removes it.
func (d *Driver) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if req.GetTargetPath() == "" {
		return nil, status.Error(codes.InvalidArgument, "target path is required")
	}
	// A read-only block publish has a loop device of its own, found by what
	// is mounted at the target before it is unmounted, or by its tag when a
	// publish failed or crashed before mounting it.
	readOnlyDevices := readOnlyDevicesFor(req.GetVolumeId(), req.GetTargetPath())
	if err := d.unmountAndRemove(req.GetTargetPath()); err != nil {
		return nil, status.Errorf(codes.Internal, "unmount target path %s: %v", req.GetTargetPath(), err)
	}
	if err := d.detachReadOnlyDevices(req.GetVolumeId(), req.GetTargetPath(), readOnlyDevices); err != nil {
		return nil, err
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// mountPoint creates the directory target and reports whether it is
// already a mount point (then a mount step is done: idempotence).
func (d *Driver) mountPoint(target string) (bool, error) {
	if err := os.MkdirAll(target, 0o750); err != nil {
		return false, status.Errorf(codes.Internal, "create mount point %s: %v", target, err)
	}
	mounted, err := d.mounter.IsMountPoint(target)
	if err != nil {
		return false, status.Errorf(codes.Internal, "check mount point %s: %v", target, err)
	}
	return mounted, nil
}

// mountDescriptor bind-mounts the directory open as dir at target
// (creating target), idempotently. The mount is cloned from the descriptor
// (open_tree) and attached (move_mount): no path is resolved again between
// the pool's check and the mount, and a clone that fails to attach is gone
// when its descriptor closes. (mount(2) of /proc/self/fd/N would resolve a
// magic link through /proc instead, with a half-done mount to undo.)
func (d *Driver) mountDescriptor(dir *os.File, target string) error {
	mounted, err := d.mountPoint(target)
	if err != nil || mounted {
		return err
	}
	tree, err := unix.OpenTree(int(dir.Fd()), "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	if err != nil {
		return status.Errorf(codes.Internal, "clone the mount of %s: %v", dir.Name(), err)
	}
	defer func() { _ = unix.Close(tree) }()
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return status.Errorf(codes.Internal, "bind-mount %s at %s: %v", dir.Name(), target, err)
	}
	return nil
}

// bindMount mounts source at target (creating target), idempotently: a
// target that is already a mount point is left as it is. Both are the
// CO's paths (staging and target), never a pool's.
func (d *Driver) bindMount(source, target string, readOnly bool) error {
	mounted, err := d.mountPoint(target)
	if err != nil || mounted {
		return err
	}
	// mount(2) itself, not mount(8): the image holds no mount binary.
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		return status.Errorf(codes.Internal, "bind-mount %s at %s: %v", source, target, err)
	}
	if readOnly {
		// A bind mount takes MS_RDONLY only on a remount.
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			_ = unix.Unmount(target, 0)
			return status.Errorf(codes.Internal, "make %s read-only: %v", target, err)
		}
	}
	return nil
}

// unmountAndRemove undoes bindMount idempotently: unmount when mounted
// (also when the mount is corrupted, e.g. its source vanished), then remove
// the directory; a path that is already gone is done.
func (d *Driver) unmountAndRemove(target string) error {
	mounted, err := d.mounter.IsMountPoint(target)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil && mount.IsCorruptedMnt(err):
		mounted = true
	case err != nil:
		return err
	}
	if mounted {
		if err := unix.Unmount(target, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount: %w", err)
		}
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove mount point: %w", err)
	}
	return nil
}

// NodeGetVolumeStats reports a volume's bytes in use against its capacity
// (btrfs: what is charged against its limit, read from its qgroup;
// directories: a walk counting what is really stored, holes excluded) and
// the filesystem's inodes. A block volume reports its size only.
func (d *Driver) NodeGetVolumeStats(_ context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if req.GetVolumePath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path is required")
	}
	pool, vol, err := d.lookupVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(req.GetVolumePath()); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume path %s: %v", req.GetVolumePath(), err)
	}
	if vol.Block {
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
			{Unit: csi.VolumeUsage_BYTES, Total: vol.CapacityBytes},
		}}, nil
	}
	// Measured in the pool, not at the path the caller gave: the pool's
	// copy is the volume, and the walk never follows the tenant's links.
	usedBytes, err := pool.VolumeUsage(req.GetVolumeId())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "measure volume %s: %v", req.GetVolumeId(), err)
	}
	var fsStat unix.Statfs_t
	if err := unix.Statfs(req.GetVolumePath(), &fsStat); err != nil {
		return nil, status.Errorf(codes.Internal, "statfs %s: %v", req.GetVolumePath(), err)
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: vol.CapacityBytes, Used: usedBytes, Available: max(vol.CapacityBytes-usedBytes, 0)},
		{Unit: csi.VolumeUsage_INODES, Total: int64(fsStat.Files), Used: int64(fsStat.Files - fsStat.Ffree), Available: int64(fsStat.Ffree)},
	}}, nil
}

// NodeExpandVolume tells a block volume's loop device that its image grew;
// a mount volume has nothing to resize (its limit was raised by the
// controller).
func (d *Driver) NodeExpandVolume(_ context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if req.GetVolumePath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path is required")
	}
	pool, vol, err := d.lookupVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if vol.Block {
		identity, ok, err := imageIdentity(pool, req.GetVolumeId())
		if err != nil {
			return nil, err
		}
		device := ""
		if ok {
			if device, err = loop.Find(identity, false); err != nil {
				return nil, status.Errorf(codes.Internal, "find the loop device of volume %s: %v", req.GetVolumeId(), err)
			}
		}
		if device != "" {
			if err := loop.Resize(device); err != nil {
				return nil, status.Errorf(codes.Internal, "resize %s: %v", device, err)
			}
		}
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: max(vol.CapacityBytes, req.GetCapacityRange().GetRequiredBytes())}, nil
}

// NodeGetCapabilities lists the node RPCs served.
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	rpcs := []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
	}
	caps := make([]*csi.NodeServiceCapability, 0, len(rpcs))
	for _, rpc := range rpcs {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{
			Rpc: &csi.NodeServiceCapability_RPC{Type: rpc},
		}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// NodeGetInfo reports the node id and every topology key it can be found by.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             d.location.Node,
		AccessibleTopology: &csi.Topology{Segments: d.location.NodeSegment()},
	}, nil
}
