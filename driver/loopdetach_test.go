package driver

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/toposnap/toposnap/internal/loop"
)

// TestUnpublishLeavesAReadOnlyDeviceOfAnotherVolume: the device node at a
// target may no longer be the read-only device of the volume unpublished
// (it was detached and its number given to another volume's publish).
// NodeUnpublishVolume unmounts the target but detaches only a device of its
// own volume and target.
func TestUnpublishLeavesAReadOnlyDeviceOfAnotherVolume(t *testing.T) {
	if !isRoot() {
		t.Fatal("loop devices need root")
	}
	h := startDriver(t, "node1", "zone-a", "region-a", "")
	mine := createBlock(t, h, "mine", "node")
	other := createBlock(t, h, "other", "node")
	otherTarget := publishBlock(t, h, other, true)
	var published unix.Stat_t
	if err := unix.Stat(otherTarget, &published); err != nil {
		t.Fatal(err)
	}
	othersDevice := loop.ByNumber(published.Rdev)

	target := filepath.Join(t.TempDir(), "dev")
	if err := os.WriteFile(target, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(othersDevice, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(target, unix.MNT_DETACH) })
	if _, err := h.node.NodeUnpublishVolume(ctxT(t), &csi.NodeUnpublishVolumeRequest{VolumeId: mine, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if device, err := loop.Stat(othersDevice); err != nil || device.Tag != readOnlyTag(other, otherTarget) || device.AutoClear {
		t.Fatalf("unpublishing %s at %s detached %s, the read-only device of %s (%+v, %v)", mine, target, othersDevice, other, device, err)
	}
}

// TestRestageAfterALazyUnstageGetsALiveDevice: a block volume unstaged
// while something still held its device open (a pod's process) leaves the
// device detaching lazily, bound until the holder closes it. Staging the
// volume again attaches a device of its own instead of reusing that one,
// which would vanish under the new pod.
func TestRestageAfterALazyUnstageGetsALiveDevice(t *testing.T) {
	if !isRoot() {
		t.Fatal("loop devices need root")
	}
	h := startDriver(t, "node1", "zone-a", "region-a", "")
	id := createBlock(t, h, "restaged", "node")
	staging := filepath.Join(t.TempDir(), "staging")
	st, devices := stageBlock(t, h, h.dataDir, id, staging)
	holder, err := os.Open(devices[0])
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if _, err := h.node.NodeUnstageVolume(ctxT(t), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}

	restaged, err := os.MkdirTemp(t.TempDir(), "restaged")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.node.NodeStageVolume(ctxT(t), stageRequest(id, restaged, blockCap())); err != nil {
		t.Fatal(err)
	}
	attached := loopDevicesOf(t, filepath.Join(h.dataDir, "volumes", id, "disk.img"))
	t.Cleanup(func() {
		for _, device := range stillAttached(attached, st) {
			detachForTest(device)
		}
	})
	holder.Close()
	if live := stillAttached(attached, st); len(live) != 1 || live[0] == devices[0] {
		t.Fatalf("after the re-stage and the holder's close, the volume has devices %v (the lazily detached one was %s); want one live device of its own", live, devices[0])
	}
}
