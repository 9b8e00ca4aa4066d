package driver

import (
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestSnapshotRetryAfterItsSourceIsGone: a CreateSnapshot retried after
// the source volume was deleted (the first answer was lost) finds the
// snapshot the first call cut, so the caller can delete it; a name never
// cut is NOT_FOUND.
func TestSnapshotRetryAfterItsSourceIsGone(t *testing.T) {
	if !isRoot() {
		t.Skip("needs root")
	}
	h := startDriver(t, "node1", "", "", "")
	volumeID := mustCreate(t, h, &csi.CreateVolumeRequest{Name: "source", VolumeCapabilities: []*csi.VolumeCapability{mountCap()},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}})
	snapshotID := mustSnapshot(t, h, "cut", volumeID)
	if _, err := h.controller.DeleteVolume(ctxT(t), &csi.DeleteVolumeRequest{VolumeId: volumeID}); err != nil {
		t.Fatal(err)
	}
	resp, err := h.controller.CreateSnapshot(ctxT(t), &csi.CreateSnapshotRequest{Name: "cut", SourceVolumeId: volumeID})
	if err != nil || resp.GetSnapshot().GetSnapshotId() != snapshotID {
		t.Fatalf("retry after the source went: %v, %v; want snapshot %s", resp, err, snapshotID)
	}
	_, err = h.controller.CreateSnapshot(ctxT(t), &csi.CreateSnapshotRequest{Name: "never-cut", SourceVolumeId: volumeID})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("a name never cut from a deleted source: %v, want NOT_FOUND", err)
	}
}
