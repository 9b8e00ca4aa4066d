package driver

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/toposnap/toposnap/driver/store"
	"github.com/toposnap/toposnap/internal/fscopy/treetest"
	"github.com/toposnap/toposnap/internal/testpool"
)

// publish plays the kubelet's volume part: stage, then publish, on h's node.
// It returns the target path and unpublishes/unstages at cleanup.
func publish(t *testing.T, h *harness, volumeID string, readOnly bool) string {
	t.Helper()
	ctx := ctxT(t)
	base := t.TempDir()
	staging, target := filepath.Join(base, "staging"), filepath.Join(base, "target")
	if _, err := h.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volumeID, StagingTargetPath: staging, VolumeCapability: mountCap()}); err != nil {
		t.Fatalf("stage %s: %v", volumeID, err)
	}
	if _, err := h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: volumeID, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap(), Readonly: readOnly}); err != nil {
		t.Fatalf("publish %s: %v", volumeID, err)
	}
	t.Cleanup(func() {
		ctx := ctxT(t)
		if _, err := h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volumeID, TargetPath: target}); err != nil {
			t.Errorf("unpublish %s: %v", volumeID, err)
		}
		if _, err := h.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volumeID, StagingTargetPath: staging}); err != nil {
			t.Errorf("unstage %s: %v", volumeID, err)
		}
	})
	return target
}

// TestDataIntegrity writes a tree with every kind of entry through a
// published volume, then snapshots, restores and clones it: each copy, read
// through its own published volume, matches byte for byte and in metadata,
// on directory pools (copies) and btrfs pools (subvolume snapshots).
func TestDataIntegrity(t *testing.T) {
	for _, backend := range []string{store.BackendDir, store.BackendBtrfs} {
		for _, scope := range []string{"node", "zone"} {
			t.Run(backend+"/"+scope, func(t *testing.T) { testDataIntegrity(t, backend, scope) })
		}
	}
}

func testDataIntegrity(t *testing.T, backend, scope string) {
	zoneDir := t.TempDir()
	var nodeDir string
	if backend == store.BackendBtrfs {
		nodeDir, zoneDir = testpool.ForTest(t, 2<<30), testpool.ForTest(t, 2<<30)
	}
	h := startDriver(t, "node1", "cn-hangzhou-b", "cn-hangzhou", zoneDir, func(o *Options) {
		o.Backend, o.ZoneBackend = backend, backend
		if nodeDir != "" {
			o.DataDir = filepath.Join(nodeDir, "pool")
		}
	})
	source := mustCreate(t, h, volumeRequest("source", scope, 256<<20, nil, nil))
	mounted := publish(t, h, source, false)
	if err := treetest.Tricky(mounted); err != nil {
		t.Fatal(err)
	}
	want, err := treetest.Describe(mounted)
	if err != nil {
		t.Fatal(err)
	}
	snapshot := mustSnapshot(t, h, "snap", source)

	restoreReq := volumeRequest("restored", scope, 256<<20, nil, nil)
	restoreReq.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snapshot}}}
	cloneReq := volumeRequest("cloned", scope, 512<<20, nil, nil)
	cloneReq.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: source}}}
	for _, req := range []*csi.CreateVolumeRequest{restoreReq, cloneReq} {
		copyPath := publish(t, h, mustCreate(t, h, req), true)
		got, err := treetest.Describe(copyPath)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range treetest.Diff(want, got, false) {
			t.Errorf("%s: %s", req.GetName(), d)
		}
	}

	// A restore smaller than the snapshot is refused.
	small := volumeRequest("too-small", scope, 128<<20, nil, nil)
	small.VolumeContentSource = restoreReq.VolumeContentSource
	if _, err := h.controller.CreateVolume(ctxT(t), small); status.Code(err) != codes.OutOfRange {
		t.Errorf("restore into a volume smaller than the snapshot: %v, want OutOfRange", err)
	}
}

// TestPublishModes: a read-only publish refuses writes (mount(2) has no
// "ro" option for bind mounts; the remount must happen), a read-write one
// shows what was written in the volume, and unpublishing twice is fine.
func TestPublishModes(t *testing.T) {
	h := startDriver(t, "node1", "cn-hangzhou-b", "cn-hangzhou", t.TempDir())
	volume := mustCreate(t, h, volumeRequest("modes", "node", 64<<20, nil, nil))
	writable := publish(t, h, volume, false)
	if err := os.WriteFile(filepath.Join(writable, "data"), []byte("written"), 0o600); err != nil {
		t.Fatalf("write through a read-write publish: %v", err)
	}
	readOnly := publish(t, h, volume, true)
	if got, err := os.ReadFile(filepath.Join(readOnly, "data")); err != nil || string(got) != "written" {
		t.Fatalf("read through the read-only publish: %q, %v", got, err)
	}
	err := os.WriteFile(filepath.Join(readOnly, "other"), []byte("x"), 0o600)
	if !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write through a read-only publish: got %v, want EROFS", err)
	}
	ctx := ctxT(t)
	for range 2 {
		if _, err := h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volume, TargetPath: readOnly}); err != nil {
			t.Fatalf("unpublish: %v", err)
		}
	}
	if _, err := os.Stat(readOnly); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("target path left behind after unpublish: %v", err)
	}
}
