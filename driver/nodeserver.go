package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"
)

// NodeStageVolume bind-mounts the volume's directory at the staging path.
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
	pool, vol, err := d.lookupVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if err := checkCapabilities([]*csi.VolumeCapability{req.GetVolumeCapability()}, vol.Scope); err != nil {
		return nil, err
	}
	if err := d.bindMount(pool.VolumeDir(vol.ID), req.GetStagingTargetPath(), false); err != nil {
		return nil, err
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

// NodeUnstageVolume unmounts the staging path and removes it.
func (d *Driver) NodeUnstageVolume(_ context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if req.GetStagingTargetPath() == "" {
		return nil, status.Error(codes.InvalidArgument, "staging target path is required")
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
	_, vol, err := d.lookupVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if err := checkCapabilities([]*csi.VolumeCapability{req.GetVolumeCapability()}, vol.Scope); err != nil {
		return nil, err
	}
	staged, err := d.mounter.IsMountPoint(req.GetStagingTargetPath())
	if err != nil || !staged {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %q is not staged at %s; call NodeStageVolume first", vol.ID, req.GetStagingTargetPath())
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
	if err := d.unmountAndRemove(req.GetTargetPath()); err != nil {
		return nil, status.Errorf(codes.Internal, "unmount target path %s: %v", req.GetTargetPath(), err)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// bindMount mounts source at target (creating target), idempotently: a
// target that is already a mount point is left as it is.
func (d *Driver) bindMount(source, target string, readOnly bool) error {
	if err := os.MkdirAll(target, 0o750); err != nil {
		return status.Errorf(codes.Internal, "create mount point %s: %v", target, err)
	}
	mounted, err := d.mounter.IsMountPoint(target)
	if err != nil {
		return status.Errorf(codes.Internal, "check mount point %s: %v", target, err)
	}
	if mounted {
		return nil
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

// NodeGetVolumeStats reports a volume's bytes and inodes in use against its
// capacity; the walk counts what is really stored (holes excluded).
func (d *Driver) NodeGetVolumeStats(_ context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if req.GetVolumePath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path is required")
	}
	_, vol, err := d.lookupVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(req.GetVolumePath()); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume path %s: %v", req.GetVolumePath(), err)
	}
	usedBytes, usedInodes, err := usage(req.GetVolumePath())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "measure %s: %v", req.GetVolumePath(), err)
	}
	var fsStat unix.Statfs_t
	if err := unix.Statfs(req.GetVolumePath(), &fsStat); err != nil {
		return nil, status.Errorf(codes.Internal, "statfs %s: %v", req.GetVolumePath(), err)
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: vol.CapacityBytes, Used: usedBytes, Available: max(vol.CapacityBytes-usedBytes, 0)},
		{Unit: csi.VolumeUsage_INODES, Total: int64(fsStat.Files), Used: usedInodes, Available: int64(fsStat.Ffree)},
	}}, nil
}

// usage sums allocated bytes and counts inodes under root.
func usage(root string) (bytes, inodes int64, err error) {
	err = filepath.WalkDir(root, func(path string, entry fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking
			}
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return fmt.Errorf("stat %s: %w", path, err)
		}
		bytes += st.Blocks * 512
		inodes++
		return nil
	})
	return bytes, inodes, err
}

// NodeExpandVolume has nothing to resize: a directory grows with its pool.
func (d *Driver) NodeExpandVolume(_ context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if req.GetVolumePath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path is required")
	}
	_, vol, err := d.lookupVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
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
