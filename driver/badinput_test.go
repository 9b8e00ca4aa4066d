package driver

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestBadInput: every malformed request gets the spec's code and a message
// naming what was wrong, and leaves the pools exactly as they were.
func TestBadInput(t *testing.T) {
	zoneDir := t.TempDir()
	h := startDriver(t, "node1", "cn-hangzhou-b", "cn-hangzhou", zoneDir)
	ctx := ctxT(t)
	existing := mustCreate(t, h, volumeRequest("existing", "node", 1<<20, nil, nil))
	other := startDriver(t, "node2", "cn-hangzhou-b", "cn-hangzhou", "")
	otherVolume := mustCreate(t, other, volumeRequest("on-node2", "node", 1<<20, nil, nil))

	withName := func(name string) *csi.CreateVolumeRequest { return volumeRequest(name, "node", 1<<20, nil, nil) }
	tweak := func(f func(*csi.CreateVolumeRequest)) *csi.CreateVolumeRequest {
		req := withName("tweaked")
		f(req)
		return req
	}
	blockCap := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	multiNode := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER},
	}
	create := func(req *csi.CreateVolumeRequest) func(context.Context) error {
		return func(ctx context.Context) error { _, err := h.controller.CreateVolume(ctx, req); return err }
	}
	tests := []struct {
		name     string
		call     func(context.Context) error
		want     codes.Code
		mentions string
	}{
		{"empty volume name", create(withName("")), codes.InvalidArgument, "name is required"},
		{"129-byte volume name", create(withName(strings.Repeat("a", 129))), codes.InvalidArgument, "129 bytes"},
		{"128-byte volume name is fine but pool is checked", create(tweak(func(r *csi.CreateVolumeRequest) {
			r.Name = strings.Repeat("b", 128)
			r.CapacityRange.RequiredBytes = 4 << 30
		})), codes.OutOfRange, "total capacity"},
		{"volume name with ../", create(withName("../escape")), codes.InvalidArgument, "'/'"},
		{"volume name with /", create(withName("a/b")), codes.InvalidArgument, "'/'"},
		{"volume name ..", create(withName("..")), codes.InvalidArgument, "starting with a letter or digit"},
		{"size over the pool", create(tweak(func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = 2 << 30 })), codes.OutOfRange, "exceeds the pool"},
		{"limit below required", create(tweak(func(r *csi.CreateVolumeRequest) {
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: 2 << 20, LimitBytes: 1 << 20}
		})), codes.OutOfRange, "below the required"},
		{"negative size", create(tweak(func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = -1 })), codes.InvalidArgument, "negative"},
		{"missing capabilities", create(tweak(func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = nil })), codes.InvalidArgument, "capabilities are required"},
		{"block and mount access at once", create(tweak(func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = []*csi.VolumeCapability{blockCap, mountCap()}
		})), codes.InvalidArgument, "mix block and mount"},
		{"stage a mount volume as block", func(ctx context.Context) error {
			_, err := h.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: existing, StagingTargetPath: t.TempDir(), VolumeCapability: blockCap})
			return err
		}, codes.InvalidArgument, "mount volume"},
		{"multi-node access on node scope", create(tweak(func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = []*csi.VolumeCapability{multiNode} })), codes.InvalidArgument, "scope=zone"},
		{"unknown scope", create(tweak(func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{"scope": "rack"} })), codes.InvalidArgument, "scope"},
		{"same name, other size", create(tweak(func(r *csi.CreateVolumeRequest) { r.Name, r.CapacityRange.RequiredBytes = "existing", 2<<20 })), codes.AlreadyExists, "existing"},
		{"delete without id", func(ctx context.Context) error {
			_, err := h.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{})
			return err
		}, codes.InvalidArgument, "volume id"},
		{"delete another node's volume", func(ctx context.Context) error {
			_, err := h.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: otherVolume})
			return err
		}, codes.FailedPrecondition, "another node"},
		{"snapshot name with ../", func(ctx context.Context) error {
			_, err := h.controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "../snap", SourceVolumeId: existing})
			return err
		}, codes.InvalidArgument, "'/'"},
		{"snapshot without source", func(ctx context.Context) error {
			_, err := h.controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap"})
			return err
		}, codes.InvalidArgument, "source volume id"},
		{"snapshot of unknown volume", func(ctx context.Context) error {
			_, err := h.controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: h.driver.nodePool.VolumeID("nope")})
			return err
		}, codes.NotFound, "not found"},
		{"snapshot of a path-like volume id", func(ctx context.Context) error {
			_, err := h.controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: "../../etc"})
			return err
		}, codes.NotFound, "not found"},
		{"delete snapshot without id", func(ctx context.Context) error {
			_, err := h.controller.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{})
			return err
		}, codes.InvalidArgument, "snapshot id"},
		{"stage unknown volume", func(ctx context.Context) error {
			_, err := h.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "../../etc", StagingTargetPath: t.TempDir(), VolumeCapability: mountCap()})
			return err
		}, codes.NotFound, "volume"},
		{"publish without target", func(ctx context.Context) error {
			_, err := h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: existing, StagingTargetPath: t.TempDir(), VolumeCapability: mountCap()})
			return err
		}, codes.InvalidArgument, "target path"},
		{"publish unstaged volume", func(ctx context.Context) error {
			_, err := h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: existing, StagingTargetPath: t.TempDir(), TargetPath: filepath.Join(t.TempDir(), "t"), VolumeCapability: mountCap()})
			return err
		}, codes.FailedPrecondition, "not staged"},
		{"validate unknown volume", func(ctx context.Context) error {
			_, err := h.controller.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: h.driver.nodePool.VolumeID("nope"), VolumeCapabilities: []*csi.VolumeCapability{mountCap()}})
			return err
		}, codes.NotFound, "volume"},
		{"expand unknown volume", func(ctx context.Context) error {
			_, err := h.controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "vn-0000000000000000-0000000000000000", CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 20}})
			return err
		}, codes.NotFound, "volume"},
		{"expand beyond the pool", func(ctx context.Context) error {
			_, err := h.controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: existing, CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 30}})
			return err
		}, codes.OutOfRange, "exceeds the pool"},
		{"list with a bad token", func(ctx context.Context) error {
			_, err := h.controller.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "zzz"})
			return err
		}, codes.Aborted, "starting token"},
		{"get unknown snapshot", func(ctx context.Context) error {
			_, err := h.controller.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: "sn-0000000000000000-0000000000000000"})
			return err
		}, codes.NotFound, "snapshot"},
	}
	before := listTree(t, h.dataDir, zoneDir)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call(ctx)
			st := status.Convert(err)
			if st.Code() != tt.want {
				t.Fatalf("code = %v (%q), want %v", st.Code(), st.Message(), tt.want)
			}
			if !strings.Contains(st.Message(), tt.mentions) {
				t.Fatalf("message %q does not say %q", st.Message(), tt.mentions)
			}
		})
	}
	if after := listTree(t, h.dataDir, zoneDir); after != before {
		t.Fatalf("bad requests changed the pools:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// listTree renders every path under the roots with its type, size and mode.
func listTree(t *testing.T, roots ...string) string {
	t.Helper()
	var b strings.Builder
	for _, root := range roots {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, "%s %v %d\n", path, info.Mode(), info.Size())
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

// TestProbeReportsLostPool: a zone pool whose shared storage went away makes
// the driver not ready, and ready again when it is back.
func TestProbeReportsLostPool(t *testing.T) {
	zoneDir := t.TempDir()
	h := startDriver(t, "node1", "cn-hangzhou-b", "cn-hangzhou", zoneDir)
	ready := func() bool {
		resp, err := h.identity.Probe(ctxT(t), &csi.ProbeRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetReady().GetValue()
	}
	if !ready() {
		t.Fatal("a healthy driver is not ready")
	}
	meta, moved := filepath.Join(zoneDir, "meta"), filepath.Join(zoneDir, "meta.gone")
	if err := os.Rename(meta, moved); err != nil {
		t.Fatal(err)
	}
	if ready() {
		t.Fatal("driver is ready with its zone pool gone")
	}
	if err := os.Rename(moved, meta); err != nil {
		t.Fatal(err)
	}
	if !ready() {
		t.Fatal("driver is not ready after its zone pool came back")
	}
}
