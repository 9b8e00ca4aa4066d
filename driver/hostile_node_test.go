package driver

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/toposnap/toposnap/internal/loop"
)

// Root on one node of a zone is root on the zone's shared pool: these tests
// plant in a zone pool what such a node could, and check that another
// node's driver mounts and attaches nothing outside the pool.

// outsideDir makes a directory outside every pool holding a canary file,
// as a victim node's kubelet directory would hold its secrets.
func outsideDir(t *testing.T) (dir, canary string) {
	t.Helper()
	dir = t.TempDir()
	canary = filepath.Join(dir, "canary")
	if err := os.WriteFile(canary, []byte("a secret of the node"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, canary
}

// outsideImage makes a 16 MiB file outside every pool, standing for a host
// disk an attacker wants attached.
func outsideImage(t *testing.T) string {
	t.Helper()
	image := filepath.Join(t.TempDir(), "host-disk")
	if err := os.WriteFile(image, bytes.Repeat([]byte("host data "), 1024), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(image, 16<<20); err != nil {
		t.Fatal(err)
	}
	return image
}

// rewriteMeta changes fields of an object's metadata file in the pool.
func rewriteMeta(t *testing.T, poolDir, id string, change func(map[string]any)) {
	t.Helper()
	path := filepath.Join(poolDir, "meta", id+".json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]any{}
	if err := json.Unmarshal(data, &fields); err != nil {
		t.Fatal(err)
	}
	change(fields)
	if data, err = json.Marshal(fields); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// replaceWithSymlink swaps path for a symlink to target.
func replaceWithSymlink(t *testing.T, path, target string) {
	t.Helper()
	if err := os.RemoveAll(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
}

// traversal is what a forged metadata "id" needs to reach dir from the
// pool's volumes/ directory.
func traversal(t *testing.T, poolDir, dir string) string {
	t.Helper()
	rel, err := filepath.Rel(filepath.Join(poolDir, "volumes"), dir)
	if err != nil {
		t.Fatal(err)
	}
	return rel
}

// loopDevicesOf lists the loop devices whose backing file is the file at
// path (by device and inode number).
func loopDevicesOf(t *testing.T, path string) []string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	backing := loop.Identity{Device: st.Dev, Inode: st.Ino}
	return loopDevicesWith(t, func(device loop.Device) bool { return device.Backing == backing })
}

// loopDevicesWith lists the attached loop devices that match.
func loopDevicesWith(t *testing.T, match func(loop.Device) bool) []string {
	t.Helper()
	attached, err := loop.List()
	if err != nil {
		t.Fatal(err)
	}
	var devices []string
	for _, device := range attached {
		if match(device) {
			devices = append(devices, device.Path)
		}
	}
	return devices
}

// loopDevicesOfVolume lists the loop devices whose backing file is, or was
// before it was deleted, the image of volume id.
func loopDevicesOfVolume(t *testing.T, id string) []string {
	t.Helper()
	suffix := "/volumes/" + id + "/disk.img"
	return loopDevicesWith(t, func(device loop.Device) bool {
		return strings.HasSuffix(strings.TrimSuffix(device.BackingPath, " (deleted)"), suffix)
	})
}

func isMountPoint(t *testing.T, path string) bool {
	t.Helper()
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		if fields := strings.Fields(line); len(fields) > 4 && fields[4] == path {
			return true
		}
	}
	return false
}

func stageRequest(id, staging string, capability *csi.VolumeCapability) *csi.NodeStageVolumeRequest {
	return &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: capability}
}

// TestNodeStageMountsOnlyThePoolsVolume: a zone pool's volumes/<id> or its
// metadata's "id" pointing outside the pool never gets a directory outside
// the pool mounted: a symlink is refused with FAILED_PRECONDITION, and
// paths are built from the request's ID, whatever the metadata says.
func TestNodeStageMountsOnlyThePoolsVolume(t *testing.T) {
	if !isRoot() {
		t.Fatal("mounts need root")
	}
	cases := []struct {
		name string
		// plant tampers with the pool; outside holds the canary.
		plant func(t *testing.T, poolDir, id, outside string)
		// want is the code NodeStage answers; OK means it may succeed,
		// mounting the volume's own directory.
		want codes.Code
	}{
		{"volumes/<id> is a symlink to a directory outside the pool", func(t *testing.T, poolDir, id, outside string) {
			replaceWithSymlink(t, filepath.Join(poolDir, "volumes", id), outside)
		}, codes.FailedPrecondition},
		{"metadata id walks out of the pool", func(t *testing.T, poolDir, id, outside string) {
			rewriteMeta(t, poolDir, id, func(m map[string]any) { m["id"] = traversal(t, poolDir, outside) })
		}, codes.OK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			zoneDir := t.TempDir()
			h := startDriver(t, "node1", "zone-a", "region-a", zoneDir)
			id := mustCreate(t, h, volumeRequest("victim", "zone", 16<<20, nil, nil))
			outside, _ := outsideDir(t)
			tc.plant(t, zoneDir, id, outside)

			staging := filepath.Join(t.TempDir(), "staging")
			_, err := h.node.NodeStageVolume(ctxT(t), stageRequest(id, staging, mountCap()))
			t.Cleanup(func() { _ = unix.Unmount(staging, unix.MNT_DETACH) })
			if _, statErr := os.Stat(filepath.Join(staging, "canary")); statErr == nil {
				t.Fatalf("the staging path shows a directory outside the pool (NodeStage: %v)", err)
			}
			switch code := status.Code(err); {
			case tc.want == codes.OK && code != codes.OK && code != codes.FailedPrecondition:
				t.Fatalf("NodeStage = %v; want success on the volume's own directory or FailedPrecondition", err)
			case tc.want != codes.OK && code != tc.want:
				t.Fatalf("NodeStage = %v; want %s", err, tc.want)
			case code != codes.OK && isMountPoint(t, staging):
				t.Fatal("NodeStage failed but left a mount at the staging path")
			}
		})
	}
}

// TestBlockAttachesOnlyThePoolsImage: a zone pool's block volume whose
// disk.img is a symlink to a file or a device outside the pool, or whose
// metadata id walks out of the pool, never gets that file attached or a
// device outside the pool published.
func TestBlockAttachesOnlyThePoolsImage(t *testing.T) {
	if !isRoot() {
		t.Fatal("loop devices need root")
	}
	cases := []struct {
		name string
		// plant tampers with the pool after the volume is created; host is
		// a file outside it, already attached to hostDevice.
		plant func(t *testing.T, poolDir, id, host, hostDevice string)
		// staged: plant after NodeStage, before NodePublish.
		staged bool
		// refusedBy is the call that must answer FailedPrecondition; ""
		// when serving the pool's own image is also right.
		refusedBy string
	}{
		{"disk.img is a symlink to a host file", func(t *testing.T, poolDir, id, host, _ string) {
			replaceWithSymlink(t, filepath.Join(poolDir, "volumes", id, "disk.img"), host)
		}, false, "stage"},
		{"disk.img is a symlink to a host block device", func(t *testing.T, poolDir, id, _, hostDevice string) {
			replaceWithSymlink(t, filepath.Join(poolDir, "volumes", id, "disk.img"), hostDevice)
		}, false, "stage"},
		{"disk.img is a device node of a host block device", func(t *testing.T, poolDir, id, _, hostDevice string) {
			var st unix.Stat_t
			if err := unix.Stat(hostDevice, &st); err != nil {
				t.Fatal(err)
			}
			image := filepath.Join(poolDir, "volumes", id, "disk.img")
			if err := os.Remove(image); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mknod(image, unix.S_IFBLK|0o600, int(st.Rdev)); err != nil {
				t.Fatal(err)
			}
		}, false, "stage"},
		{"metadata id walks out of the pool", func(t *testing.T, poolDir, id, host, _ string) {
			dir := filepath.Join(t.TempDir(), "volume")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(host, filepath.Join(dir, "disk.img")); err != nil {
				t.Fatal(err)
			}
			rewriteMeta(t, poolDir, id, func(m map[string]any) { m["id"] = traversal(t, poolDir, dir) })
		}, false, ""},
		{"disk.img becomes a symlink to an attached host file after staging", func(t *testing.T, poolDir, id, host, _ string) {
			replaceWithSymlink(t, filepath.Join(poolDir, "volumes", id, "disk.img"), host)
		}, true, "publish"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			zoneDir := t.TempDir()
			h := startDriver(t, "node1", "zone-a", "region-a", zoneDir)
			req := volumeRequest("victim", "zone", 16<<20, nil, nil)
			req.VolumeCapabilities = []*csi.VolumeCapability{blockCap()}
			id := mustCreate(t, h, req)
			host := outsideImage(t)
			hostDevice := attachForTest(t, host)
			hostDevices := len(loopDevicesOf(t, host))

			ctx := ctxT(t)
			base := t.TempDir()
			staging, target := filepath.Join(base, "staging"), filepath.Join(base, "dev")
			t.Cleanup(func() {
				_ = unix.Unmount(target, unix.MNT_DETACH)
				for _, device := range append(loopDevicesOfVolume(t, id), loopDevicesOf(t, hostDevice)...) {
					detachForTest(device)
				}
			})
			if !tc.staged {
				tc.plant(t, zoneDir, id, host, hostDevice)
			}
			_, stageErr := h.node.NodeStageVolume(ctx, stageRequest(id, staging, blockCap()))
			if tc.staged {
				if stageErr != nil {
					t.Fatal(stageErr)
				}
				tc.plant(t, zoneDir, id, host, hostDevice)
			}
			_, publishErr := h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id,
				StagingTargetPath: staging, TargetPath: target, VolumeCapability: blockCap()})

			if n := len(loopDevicesOf(t, host)); n != hostDevices {
				t.Fatalf("the host file has %d loop devices, had %d (stage: %v, publish: %v)", n, hostDevices, stageErr, publishErr)
			}
			if devices := loopDevicesOf(t, hostDevice); len(devices) > 0 {
				t.Fatalf("the host's block device was attached to %v", devices)
			}
			var planted unix.Stat_t
			if err := unix.Lstat(filepath.Join(zoneDir, "volumes", id, "disk.img"), &planted); err == nil && planted.Mode&unix.S_IFMT != unix.S_IFREG {
				attached := loopDevicesWith(t, func(device loop.Device) bool {
					return device.Backing == loop.Identity{Device: planted.Dev, Inode: planted.Ino}
				})
				if len(attached) > 0 {
					t.Fatalf("what was planted as disk.img (mode %#o) was attached to %v", planted.Mode&unix.S_IFMT, attached)
				}
			}
			var st, hostSt unix.Stat_t
			if unix.Stat(target, &st) == nil && unix.Stat(hostDevice, &hostSt) == nil && st.Rdev == hostSt.Rdev {
				t.Fatalf("the host's device %s was published at the target (stage: %v, publish: %v)", hostDevice, stageErr, publishErr)
			}
			refusal := map[string]error{"stage": stageErr, "publish": publishErr}[tc.refusedBy]
			if tc.refusedBy != "" && status.Code(refusal) != codes.FailedPrecondition {
				t.Fatalf("%s = %v; want FailedPrecondition", tc.refusedBy, refusal)
			}
		})
	}
}

// attachForTest attaches file to a loop device with raw ioctls and
// detaches it at cleanup.
func attachForTest(t *testing.T, file string) string {
	t.Helper()
	backing, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer backing.Close()
	control, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()
	for range 16 {
		index, err := unix.IoctlRetInt(int(control.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			t.Fatal(err)
		}
		path := "/dev/loop" + strconv.Itoa(index)
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			if err := unix.Mknod(path, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(index)))); err != nil {
				t.Fatal(err)
			}
		}
		device, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		err = unix.IoctlLoopConfigure(int(device.Fd()), &unix.LoopConfig{Fd: uint32(backing.Fd())})
		device.Close()
		if errors.Is(err, unix.EBUSY) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { detachForTest(path) })
		return path
	}
	t.Fatal("no free loop device")
	return ""
}

func detachForTest(device string) {
	if f, err := os.Open(device); err == nil {
		_ = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
		f.Close()
	}
}
