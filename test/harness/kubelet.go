package harness

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// Publish plays the kubelet's volume part on this node: NodeStageVolume,
// then NodePublishVolume under dir. It returns the published path and a
// function that unpublishes and unstages.
func (n *Node) Publish(ctx context.Context, volumeID, dir string) (string, func(context.Context), error) {
	staging, target := filepath.Join(dir, "staging"), filepath.Join(dir, "target")
	capability := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	if _, err := n.NodeClient.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volumeID, StagingTargetPath: staging, VolumeCapability: capability}); err != nil {
		return "", nil, fmt.Errorf("stage %s on %s: %w", volumeID, n.Name, err)
	}
	if _, err := n.NodeClient.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: volumeID, StagingTargetPath: staging, TargetPath: target, VolumeCapability: capability}); err != nil {
		return "", nil, fmt.Errorf("publish %s on %s: %w", volumeID, n.Name, err)
	}
	cleanup := func(ctx context.Context) {
		_, _ = n.NodeClient.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volumeID, TargetPath: target})
		_, _ = n.NodeClient.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volumeID, StagingTargetPath: staging})
	}
	return target, cleanup, nil
}
