package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/toposnap/toposnap/internal/loop"
	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/harness"
)

// The compromised node of DESIGN.md's trust boundaries is root on one
// worker of a zone, and so root on the zone's shared pool. The harness runs
// every component with the cluster's admin kubeconfig, so no node
// ServiceAccount token exists to hold here, and none is needed: the attacks
// of issue 19 item 4 are file-system ones, and what these tests exercise is
// root on the zone pool's directory. The test process is the attacker; the
// victim is another worker of the same zone, asked through its CSI socket
// (as its kubelet would be, for a pod the attacker got scheduled there).

// TestCompromisedNodeCannotReachOutsideTheZonePool plants in the shared
// zone pool what a compromised neighbour could, and checks that the victim
// driver deletes, mounts and attaches nothing outside the pool, refuses what
// it did not write with FAILED_PRECONDITION, and keeps serving.
func TestCompromisedNodeCannotReachOutsideTheZonePool(t *testing.T) {
	needEnv(t)
	workers := env.Zones()[cluster.SeedZone]
	if len(workers) < 2 {
		t.Fatalf("zone %s has workers %v; the attack needs two sharing its pool", cluster.SeedZone, workers)
	}
	victim := env.Nodes[workers[1]]
	t.Logf("attacker: root on %s's zone pool; victim: %s's driver", workers[0], victim.Name)

	t.Run("a zone tmp/ symlinked to the victim's node volumes deletes none of them at its restart", func(t *testing.T) {
		symlinkedTempSparesNodeVolumes(t, victim)
	})
	mountAttacks := []struct {
		name  string
		plant func(t *testing.T, zonePool, id, outside string)
	}{
		{"a forged metadata id mounts nothing outside the pool", forgeMetadataID},
		{"a symlinked volume directory mounts nothing outside the pool", symlinkVolumeDir},
	}
	for _, attack := range mountAttacks {
		t.Run(attack.name, func(t *testing.T) { plantedVolumeMountsNothingOutside(t, victim, attack.plant) })
	}
	t.Run("a disk image symlinked to a host file attaches nothing outside the pool", func(t *testing.T) {
		symlinkedImageAttachesNothingOutside(t, victim)
	})
}

// symlinkedTempSparesNodeVolumes: the zone pool's tmp/ replaced by a
// symlink to the victim's node-pool volumes/ makes the victim's restart
// (which cleans stale temporaries) delete none of them; the foreign tmp/ is
// reported, the pools keep serving, and once the attacker's symlink is gone
// the zone pool provisions again.
func symlinkedTempSparesNodeVolumes(t *testing.T, victim *harness.Node) {
	nodePool, zonePool := victim.PoolDirs()
	nodeVolumes := map[string]string{}
	for i := range 2 {
		id := createVictimVolume(t, victim, "node", false)
		nodeVolumes[id] = writeRandom(t, victim.Name, id, 64<<10, uint64(i+1))
	}
	zoneVolume := createVictimVolume(t, victim, "zone", false)
	zoneHash := writeRandom(t, victim.Name, zoneVolume, 64<<10, 3)

	tmp := filepath.Join(zonePool, "tmp")
	aside := filepath.Join(t.TempDir(), "zone-tmp")
	if err := os.Rename(tmp, aside); err != nil {
		t.Fatal(err)
	}
	undo := sync.OnceFunc(func() {
		if info, err := os.Lstat(tmp); err == nil && info.Mode()&os.ModeSymlink != 0 {
			if err := os.Remove(tmp); err != nil {
				t.Errorf("remove the planted zone tmp/: %v", err)
				return
			}
		}
		if err := os.Rename(aside, tmp); err != nil {
			t.Errorf("put the zone tmp/ back: %v", err)
			return
		}
		restartDriver(t, victim) // recovers the zone pool at once, rather than at its next retry
	})
	t.Cleanup(undo)
	if err := os.Symlink(filepath.Join(nodePool, "volumes"), tmp); err != nil {
		t.Fatal(err)
	}
	restartDriver(t, victim)

	for id, want := range nodeVolumes {
		if err := dataIntact(victim.Name, id, want)(ctxFor(t, time.Minute)); err != nil {
			t.Fatalf("the victim restarted over a zone tmp/ symlinked to its node volumes: %v", err)
		}
	}
	if err := dataIntact(victim.Name, zoneVolume, zoneHash)(ctxFor(t, time.Minute)); err != nil {
		t.Fatalf("the zone pool stopped serving its volumes over a foreign tmp/: %v", err)
	}
	waitUnrecoveredReported(t, victim, "zone")
	victimServes(t, victim, "node")

	undo()
	victimServes(t, victim, "zone")
}

// waitUnrecoveredReported waits until the victim's driver reports an
// object of pool it could not recover.
func waitUnrecoveredReported(t *testing.T, victim *harness.Node, pool string) {
	t.Helper()
	ctx := ctxFor(t, time.Minute)
	series := fmt.Sprintf(`toposnap_driver_unrecovered_objects{pool=%q}`, pool)
	var last float64
	var lastErr error
	if err := poll(ctx, 200*time.Millisecond, 30*time.Second, func() (bool, error) {
		last, lastErr = victim.Metric(ctx, "driver", series)
		return lastErr == nil && last >= 1, nil
	}); err != nil {
		t.Fatalf("%s on %s is %v (scrape error: %v), want ≥ 1: the foreign pool file went unreported", series, victim.Name, last, lastErr)
	}
}

// forgeMetadataID rewrites the volume's metadata so that its "id" walks
// from the pool's volumes/ to outside, restoring the file at cleanup.
func forgeMetadataID(t *testing.T, zonePool, id, outside string) {
	t.Helper()
	path := filepath.Join(zonePool, "meta", id+".json")
	original, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(path, original, 0o600); err != nil {
			t.Errorf("restore the metadata of %s: %v", id, err)
		}
	})
	fields := map[string]any{}
	if err := json.Unmarshal(original, &fields); err != nil {
		t.Fatal(err)
	}
	traversal, err := filepath.Rel(filepath.Join(zonePool, "volumes"), outside)
	if err != nil {
		t.Fatal(err)
	}
	fields["id"] = traversal
	forged, err := json.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, forged, 0o600); err != nil {
		t.Fatal(err)
	}
}

// symlinkVolumeDir replaces the volume's directory by a symlink to outside,
// putting the directory back at cleanup.
func symlinkVolumeDir(t *testing.T, zonePool, id, outside string) {
	t.Helper()
	replaceBySymlink(t, filepath.Join(zonePool, "volumes", id), outside)
}

// replaceBySymlink moves path aside and puts a symlink to target in its
// place; cleanup undoes both.
func replaceBySymlink(t *testing.T, path, target string) {
	t.Helper()
	aside := filepath.Join(t.TempDir(), filepath.Base(path))
	if err := os.Rename(path, aside); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("remove the planted symlink %s: %v", path, err)
			return
		}
		if err := os.Rename(aside, path); err != nil {
			t.Errorf("put %s back: %v", path, err)
		}
	})
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
}

// plantedVolumeMountsNothingOutside: the victim asked to stage and publish
// a zone volume the attacker tampered with mounts no directory outside the
// pool, and refuses the stage with FAILED_PRECONDITION.
func plantedVolumeMountsNothingOutside(t *testing.T, victim *harness.Node, plant func(t *testing.T, zonePool, id, outside string)) {
	_, zonePool := victim.PoolDirs()
	id := createVictimVolume(t, victim, "zone", false)
	writeRandom(t, victim.Name, id, 16<<10, 4)
	outside, secret := canaryDir(t)
	base := t.TempDir()
	staging, target := filepath.Join(base, "staging"), filepath.Join(base, "target")
	capability := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	plant(t, zonePool, id, outside)
	t.Cleanup(func() { // before the plant is undone and base removed
		ctx := ctxFor(t, time.Minute)
		_, _ = victim.NodeClient.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
		_, _ = victim.NodeClient.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
		for _, mountPoint := range mountPointsUnder(t, base) {
			if err := unix.Unmount(mountPoint, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", mountPoint, err)
			}
		}
	})

	ctx := ctxFor(t, time.Minute)
	_, stageErr := victim.NodeClient.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id,
		StagingTargetPath: staging, VolumeCapability: capability})
	_, publishErr := victim.NodeClient.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id,
		StagingTargetPath: staging, TargetPath: target, VolumeCapability: capability})
	for _, mountPoint := range mountPointsUnder(t, base) {
		if _, err := os.Stat(filepath.Join(mountPoint, secret)); err == nil {
			t.Fatalf("the victim mounted %s, outside the pool, at %s (stage: %v, publish: %v)", outside, mountPoint, stageErr, publishErr)
		}
	}
	if status.Code(stageErr) != codes.FailedPrecondition {
		t.Fatalf("NodeStageVolume of the tampered volume = %v; want FailedPrecondition", stageErr)
	}
	victimServes(t, victim, "zone")
}

// symlinkedImageAttachesNothingOutside: a zone block volume whose disk.img
// the attacker replaced by a symlink to a host file is not attached: no loop
// device is backed by the host file, and the stage is refused with
// FAILED_PRECONDITION.
func symlinkedImageAttachesNothingOutside(t *testing.T, victim *harness.Node) {
	_, zonePool := victim.PoolDirs()
	id := createVictimVolume(t, victim, "zone", true)
	host := hostFile(t)
	replaceBySymlink(t, filepath.Join(zonePool, "volumes", id, "disk.img"), host)
	staging := filepath.Join(t.TempDir(), "staging")
	capability := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	t.Cleanup(func() { // before the image is put back
		_, _ = victim.NodeClient.NodeUnstageVolume(ctxFor(t, time.Minute), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
		for _, device := range loopDevicesBackedBy(t, host) {
			detachLoop(t, device)
		}
	})

	_, stageErr := victim.NodeClient.NodeStageVolume(ctxFor(t, time.Minute), &csi.NodeStageVolumeRequest{VolumeId: id,
		StagingTargetPath: staging, VolumeCapability: capability})
	if devices := loopDevicesBackedBy(t, host); len(devices) > 0 {
		t.Fatalf("the victim attached %s, outside the pool, to %v (stage: %v)", host, devices, stageErr)
	}
	if status.Code(stageErr) != codes.FailedPrecondition {
		t.Fatalf("NodeStageVolume of the block volume with a symlinked image = %v; want FailedPrecondition", stageErr)
	}
	victimServes(t, victim, "zone")
}

// createVictimVolume creates a volume of scope through the victim's driver,
// accessible from the victim, and deletes it at cleanup.
func createVictimVolume(t *testing.T, victim *harness.Node, scope string, block bool) string {
	t.Helper()
	capability := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	if block {
		capability.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	}
	request := &csi.CreateVolumeRequest{
		Name:               fmt.Sprintf("compromised-node-%s-%016x", scope, rand.Uint64()),
		CapacityRange:      &csi.CapacityRange{RequiredBytes: 16 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{capability},
		Parameters:         map[string]string{"scope": scope},
		AccessibilityRequirements: &csi.TopologyRequirement{Requisite: []*csi.Topology{
			{Segments: map[string]string{topology.NodeKey: victim.Name}}}},
	}
	resp, err := victim.Controller.CreateVolume(ctxFor(t, time.Minute), request)
	if err != nil {
		t.Fatalf("create a %s volume on %s: %v", scope, victim.Name, err)
	}
	id := resp.GetVolume().GetVolumeId()
	t.Cleanup(func() {
		if _, err := victim.Controller.DeleteVolume(ctxFor(t, time.Minute), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Errorf("delete volume %s: %v", id, err)
		}
	})
	return id
}

// victimServes: a legitimate request still works on the victim: a new
// volume of scope is created, written and read back through its staging
// and publishing, and deleted.
func victimServes(t *testing.T, victim *harness.Node, scope string) {
	t.Helper()
	id := createVictimVolume(t, victim, scope, false)
	want := writeRandom(t, victim.Name, id, 16<<10, rand.Uint64())
	if err := dataIntact(victim.Name, id, want)(ctxFor(t, time.Minute)); err != nil {
		t.Fatalf("the victim no longer serves a new %s volume: %v", scope, err)
	}
	if _, err := victim.Controller.DeleteVolume(ctxFor(t, time.Minute), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatalf("the victim no longer deletes a %s volume: %v", scope, err)
	}
}

// restartDriver kills the node's driver and starts it again, waiting until
// it answers on the socket the node's clients use.
func restartDriver(t *testing.T, n *harness.Node) {
	t.Helper()
	n.Kill("driver")
	if err := n.Restart("driver"); err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 2*time.Minute)
	if err := poll(ctx, 100*time.Millisecond, time.Minute, func() (bool, error) {
		_, err := n.NodeClient.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
		return err == nil, nil
	}); err != nil {
		t.Fatalf("the driver on %s did not come back (see %s): %v", n.Name, env.LogPath(n.Name, "driver"), err)
	}
}

// canaryDir makes a directory outside every pool holding a file of a name
// nothing else has, standing for the victim's kubelet directory and its
// secrets.
func canaryDir(t *testing.T) (dir, secret string) {
	t.Helper()
	dir = t.TempDir()
	secret = fmt.Sprintf("secret-%016x", rand.Uint64())
	if err := os.WriteFile(filepath.Join(dir, secret), []byte("a token of the node"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, secret
}

// hostFile makes a 16 MiB file outside every pool, standing for a host
// disk the attacker wants attached.
func hostFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "host-disk")
	if err := os.WriteFile(path, []byte("host data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 16<<20); err != nil {
		t.Fatal(err)
	}
	return path
}

// mountPointsUnder lists the mount points at or under dir in this mount
// namespace, which the harness's drivers share.
func mountPointsUnder(t *testing.T, dir string) []string {
	t.Helper()
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var mountPoints []string
	for _, line := range strings.Split(string(info), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 5 {
			continue
		}
		mountPoint := fields[4]
		if mountPoint == dir || strings.HasPrefix(mountPoint, dir+"/") {
			mountPoints = append(mountPoints, mountPoint)
		}
	}
	return mountPoints
}

// loopDevicesBackedBy lists the loop devices whose backing file is file,
// by the path /sys shows or by device and inode number.
func loopDevicesBackedBy(t *testing.T, file string) []string {
	t.Helper()
	var want unix.Stat_t
	if err := unix.Stat(file, &want); err != nil {
		t.Fatal(err)
	}
	attached, err := loop.List()
	if err != nil {
		t.Fatal(err)
	}
	var devices []string
	for _, device := range attached {
		if strings.TrimSuffix(device.BackingPath, " (deleted)") == file ||
			device.Backing == (loop.Identity{Device: want.Dev, Inode: want.Ino}) {
			devices = append(devices, device.Path)
		}
	}
	return devices
}

func detachLoop(t *testing.T, device string) {
	t.Helper()
	f, err := os.Open(device)
	if err != nil {
		t.Errorf("detach %s: %v", device, err)
		return
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0); err != nil {
		t.Errorf("detach %s: %v", device, err)
	}
}
