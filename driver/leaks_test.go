package driver

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/toposnap/toposnap/internal/loop"
	"github.com/toposnap/toposnap/internal/topology"
)

// A loop device that outlives its volume keeps the image's blocks (deleted
// or not) until reboot. These tests leave a device behind every way the
// driver could lose track of it and check that it is found again by what
// backs it, not by the volume's metadata.

// attachedTo reports which of devices are still attached to the file they
// were attached to (identity st).
func stillAttached(devices []string, st unix.Stat_t) []string {
	var attached []string
	for _, device := range devices {
		f, err := os.Open(device)
		if err != nil {
			continue
		}
		info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
		f.Close()
		if err == nil && info.Device == st.Dev && info.Inode == st.Ino {
			attached = append(attached, device)
		}
	}
	return attached
}

// createBlock creates a block volume of 16 MiB in the given scope.
func createBlock(t *testing.T, h *harness, name, scope string) string {
	t.Helper()
	req := volumeRequest(name, scope, 16<<20, nil, nil)
	req.VolumeCapabilities = []*csi.VolumeCapability{blockCap()}
	return mustCreate(t, h, req)
}

// stageBlock stages a block volume and returns its image's identity and
// the devices that serve it.
func stageBlock(t *testing.T, h *harness, poolDir, id, staging string) (unix.Stat_t, []string) {
	t.Helper()
	if _, err := h.node.NodeStageVolume(ctxT(t), stageRequest(id, staging, blockCap())); err != nil {
		t.Fatalf("stage %s: %v", id, err)
	}
	image := filepath.Join(poolDir, "volumes", id, "disk.img")
	var st unix.Stat_t
	if err := unix.Stat(image, &st); err != nil {
		t.Fatal(err)
	}
	devices := loopDevicesOf(t, image)
	if len(devices) != 1 {
		t.Fatalf("a staged block volume has loop devices %v; want one", devices)
	}
	t.Cleanup(func() {
		for _, device := range stillAttached(devices, st) {
			detachForTest(device)
		}
	})
	return st, devices
}

// TestUnstageDetachesByImageIdentity: NodeUnstageVolume detaches the
// volume's loop devices whatever became of its metadata or its files.
func TestUnstageDetachesByImageIdentity(t *testing.T) {
	if !isRoot() {
		t.Fatal("loop devices need root")
	}
	cases := []struct {
		name   string
		tamper func(t *testing.T, poolDir, id string)
	}{
		{"metadata is gone", func(t *testing.T, poolDir, id string) {
			removeForTest(t, filepath.Join(poolDir, "meta", id+".json"))
		}},
		{"volume is being deleted", func(t *testing.T, poolDir, id string) {
			rewriteMeta(t, poolDir, id, func(m map[string]any) { m["state"] = "deleting" })
		}},
		{"metadata and image are gone", func(t *testing.T, poolDir, id string) {
			removeForTest(t, filepath.Join(poolDir, "meta", id+".json"))
			removeForTest(t, filepath.Join(poolDir, "volumes", id))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := startDriver(t, "node1", "zone-a", "region-a", "")
			poolDir := h.dataDir
			id := createBlock(t, h, "leaky", "node")
			staging := filepath.Join(t.TempDir(), "staging")
			st, devices := stageBlock(t, h, poolDir, id, staging)
			tc.tamper(t, poolDir, id)

			if _, err := h.node.NodeUnstageVolume(ctxT(t), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
				t.Fatal(err)
			}
			if leaked := stillAttached(devices, st); len(leaked) > 0 {
				t.Fatalf("after NodeUnstageVolume, %v still serve the volume's image", leaked)
			}
		})
	}
}

func removeForTest(t *testing.T, path string) {
	t.Helper()
	if err := os.RemoveAll(path); err != nil {
		t.Fatal(err)
	}
}

// TestDeleteVolumeRefusesAnAttachedImage: a block volume still staged on
// this node is not deleted (its device would keep the deleted image's
// blocks); the refusal names the device, and once unstaged it deletes.
func TestDeleteVolumeRefusesAnAttachedImage(t *testing.T) {
	if !isRoot() {
		t.Fatal("loop devices need root")
	}
	h := startDriver(t, "node1", "zone-a", "region-a", "")
	id := createBlock(t, h, "staged", "node")
	staging := filepath.Join(t.TempDir(), "staging")
	_, devices := stageBlock(t, h, h.dataDir, id, staging)

	_, err := h.controller.DeleteVolume(ctxT(t), &csi.DeleteVolumeRequest{VolumeId: id})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), devices[0]) {
		t.Fatalf("DeleteVolume of a staged block volume = %v; want FailedPrecondition naming %s", err, devices[0])
	}
	if _, err := h.node.NodeUnstageVolume(ctxT(t), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.controller.DeleteVolume(ctxT(t), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatalf("DeleteVolume once unstaged: %v", err)
	}
}

// TestReadOnlyPublishDoesNotLeakADevice: a read-only block publish that
// fails after its device could have been attached, then is retried, leaves
// one read-only device, and none once unpublished.
func TestReadOnlyPublishDoesNotLeakADevice(t *testing.T) {
	if !isRoot() {
		t.Fatal("loop devices need root")
	}
	h := startDriver(t, "node1", "zone-a", "region-a", "")
	id := createBlock(t, h, "shared", "node")
	base := t.TempDir()
	staging := filepath.Join(base, "staging")
	st, _ := stageBlock(t, h, h.dataDir, id, staging)
	readOnlyDevices := func() []string {
		return loopDevicesWith(t, func(device loop.Device) bool {
			return device.Backing == loop.Identity{Device: st.Dev, Inode: st.Ino} && device.ReadOnly
		})
	}
	t.Cleanup(func() {
		for _, device := range readOnlyDevices() {
			detachForTest(device)
		}
	})
	publish := func(target string) error {
		_, err := h.node.NodePublishVolume(ctxT(t), &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
			TargetPath: target, VolumeCapability: blockCap(), Readonly: true})
		return err
	}
	// The kubelet's target cannot be created (a dangling symlink into a
	// directory that is not there): the first attempt fails.
	target := filepath.Join(base, "dev")
	if err := os.Symlink(filepath.Join(base, "missing", "dev"), target); err != nil {
		t.Fatal(err)
	}
	if err := publish(target); err == nil {
		t.Fatal("publishing at a target that cannot be created succeeded")
	}
	removeForTest(t, target)
	if err := publish(target); err != nil {
		t.Fatal(err)
	}
	if devices := readOnlyDevices(); len(devices) != 1 {
		t.Fatalf("after a failed and a successful read-only publish, read-only devices %v; want one", devices)
	}
	if _, err := h.node.NodeUnpublishVolume(ctxT(t), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if devices := readOnlyDevices(); len(devices) != 0 {
		t.Fatalf("after unpublish, read-only devices %v remain", devices)
	}
}

// TestStartUpDetachesLeakedLoopDevices: a restarted driver detaches the
// loop devices of its pools' block volumes that nothing can have staged (a
// volume whose metadata is gone or that is being deleted, an image that is
// deleted) and keeps those of ready volumes, which the CO unstages.
func TestStartUpDetachesLeakedLoopDevices(t *testing.T) {
	if !isRoot() {
		t.Fatal("loop devices need root")
	}
	cases := []struct {
		name string
		// tamper runs while the driver is down.
		tamper   func(t *testing.T, poolDir, id string)
		detached bool
	}{
		{"ready volume stays staged", func(*testing.T, string, string) {}, false},
		{"metadata is gone", func(t *testing.T, poolDir, id string) {
			removeForTest(t, filepath.Join(poolDir, "meta", id+".json"))
		}, true},
		{"volume is being deleted", func(t *testing.T, poolDir, id string) {
			rewriteMeta(t, poolDir, id, func(m map[string]any) { m["state"] = "deleting" })
		}, true},
		{"image is deleted", func(t *testing.T, poolDir, id string) {
			removeForTest(t, filepath.Join(poolDir, "meta", id+".json"))
			removeForTest(t, filepath.Join(poolDir, "volumes", id))
		}, true},
	}
	dir := t.TempDir()
	opts := Options{NodeID: "node1", DataDir: filepath.Join(dir, "pool"), ZoneDataDir: filepath.Join(dir, "zone"), Capacity: 1 << 30}
	location := topology.Location{Node: "node1", Zone: "zone-a", Region: "region-a"}
	first, err := New(opts, location)
	if err != nil {
		t.Fatal(err)
	}
	type staged struct {
		poolDir string
		id      string
		st      unix.Stat_t
		devices []string
	}
	volumes := make([]staged, len(cases))
	for i, tc := range cases {
		scope, poolDir := "node", opts.DataDir
		if i%2 == 1 {
			scope, poolDir = "zone", opts.ZoneDataDir
		}
		req := volumeRequest("v"+string(rune('a'+i)), scope, 16<<20, nil, nil)
		req.VolumeCapabilities = []*csi.VolumeCapability{blockCap()}
		resp, err := first.CreateVolume(ctxT(t), req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		id := resp.GetVolume().GetVolumeId()
		if _, err := first.NodeStageVolume(ctxT(t), stageRequest(id, filepath.Join(dir, id), blockCap())); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		image := filepath.Join(poolDir, "volumes", id, "disk.img")
		var st unix.Stat_t
		if err := unix.Stat(image, &st); err != nil {
			t.Fatal(err)
		}
		volumes[i] = staged{poolDir, id, st, loopDevicesOf(t, image)}
		t.Cleanup(func() {
			for _, device := range stillAttached(volumes[i].devices, st) {
				detachForTest(device)
			}
		})
	}
	first.Close()
	for i, tc := range cases {
		tc.tamper(t, volumes[i].poolDir, volumes[i].id)
	}

	second, err := New(opts, location)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	for i, tc := range cases {
		attached := stillAttached(volumes[i].devices, volumes[i].st)
		if tc.detached && len(attached) > 0 {
			t.Errorf("%s: the restarted driver left %v attached", tc.name, attached)
		}
		if !tc.detached && len(attached) != 1 {
			t.Errorf("%s: the restarted driver detached the staged device (%v left of %v)", tc.name, attached, volumes[i].devices)
		}
	}
}

// TestReadOnlyDeviceOfACrashedPublishIsFoundAgain: a driver that crashed
// between attaching a read-only publish's device and mounting it left the
// device tagged with the volume and the target; the retried publish mounts
// that device, or, if the CO gives up, NodeUnpublishVolume detaches it.
func TestReadOnlyDeviceOfACrashedPublishIsFoundAgain(t *testing.T) {
	if !isRoot() {
		t.Fatal("loop devices need root")
	}
	cases := []struct {
		name    string
		retried bool
	}{
		{"the publish is retried", true},
		{"the CO unpublishes instead", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := startDriver(t, "node1", "zone-a", "region-a", "")
			id := createBlock(t, h, "crashed", "node")
			base := t.TempDir()
			staging, target := filepath.Join(base, "staging"), filepath.Join(base, "dev")
			stageBlock(t, h, h.dataDir, id, staging)
			image, err := os.Open(filepath.Join(h.dataDir, "volumes", id, "disk.img"))
			if err != nil {
				t.Fatal(err)
			}
			defer image.Close()
			leftover, held, err := loop.Attach(image, loop.Options{ReadOnly: true, Tag: readOnlyTag(id, target)})
			if err != nil {
				t.Fatal(err)
			}
			held.Close()
			t.Cleanup(func() { detachForTest(leftover) })
			var st unix.Stat_t
			if err := unix.Fstat(int(image.Fd()), &st); err != nil {
				t.Fatal(err)
			}

			if tc.retried {
				if _, err := h.node.NodePublishVolume(ctxT(t), &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
					TargetPath: target, VolumeCapability: blockCap(), Readonly: true}); err != nil {
					t.Fatal(err)
				}
				var published unix.Stat_t
				if err := unix.Stat(target, &published); err != nil || loop.ByNumber(published.Rdev) != leftover {
					t.Fatalf("the retried publish mounted %s, not the device the crashed one attached (%s): %v",
						loop.ByNumber(published.Rdev), leftover, err)
				}
			}
			if _, err := h.node.NodeUnpublishVolume(ctxT(t), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
				t.Fatal(err)
			}
			if attached := stillAttached([]string{leftover}, st); len(attached) > 0 {
				t.Fatalf("after unpublish, the crashed publish's device %s is still attached", leftover)
			}
		})
	}
}
