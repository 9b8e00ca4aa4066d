package driver

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/toposnap/toposnap/driver/store"
	"github.com/toposnap/toposnap/driver/store/btrfs"
	"github.com/toposnap/toposnap/internal/fscopy/treetest"
	"github.com/toposnap/toposnap/internal/tenantops"
	"github.com/toposnap/toposnap/internal/testpool"
)

// startBtrfsDriver runs a driver whose node pool is on a fresh loop-backed
// btrfs filesystem of fsSize bytes, with --capacity capacity.
func startBtrfsDriver(t *testing.T, fsSize, capacity int64) (*harness, string) {
	t.Helper()
	mnt := testpool.ForTest(t, fsSize)
	pool := filepath.Join(mnt, "pool")
	h := startDriver(t, "node1", "cn-hangzhou-b", "cn-hangzhou", "", func(o *Options) {
		o.DataDir, o.Backend, o.Capacity = pool, store.BackendBtrfs, capacity
	})
	return h, pool
}

func restoreRequest(name string, size int64, snapshotID string) *csi.CreateVolumeRequest {
	req := volumeRequest(name, "node", size, nil, nil)
	req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snapshotID}}}
	return req
}

func hashFile(t *testing.T, path string) [32]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(data)
}

// TestSizeIsEnforced: on a btrfs pool, a write past a volume's size fails
// (ENOSPC/EDQUOT) and its neighbour is untouched: its data is unchanged and
// it can still write.
func TestSizeIsEnforced(t *testing.T) {
	h, _ := startBtrfsDriver(t, 2<<30, 100<<30)
	small := mustCreate(t, h, volumeRequest("small", "node", 64<<20, nil, nil))
	neighbour := mustCreate(t, h, volumeRequest("neighbour", "node", 64<<20, nil, nil))
	smallPath, neighbourPath := publish(t, h, small, false), publish(t, h, neighbour, false)
	if _, err := tenantops.Fill(filepath.Join(neighbourPath, "kept"), 16<<20); err != nil {
		t.Fatal(err)
	}
	before := hashFile(t, filepath.Join(neighbourPath, "kept"))

	written, err := tenantops.Fill(filepath.Join(smallPath, "flood"), 512<<20)
	if !errors.Is(err, unix.ENOSPC) && !errors.Is(err, unix.EDQUOT) {
		t.Fatalf("writing 512 MiB into a 64 MiB volume: %d bytes written, err %v; want ENOSPC or EDQUOT", written, err)
	}
	if written > 64<<20 {
		t.Fatalf("the 64 MiB volume took %d bytes", written)
	}
	t.Logf("a 64 MiB volume stopped a writer at %.1f MiB", float64(written)/(1<<20))
	if after := hashFile(t, filepath.Join(neighbourPath, "kept")); after != before {
		t.Fatal("the neighbour's data changed")
	}
	if n, err := tenantops.Fill(filepath.Join(neighbourPath, "more"), 16<<20); err != nil {
		t.Fatalf("the neighbour cannot write any more: %d bytes, %v", n, err)
	}
}

// TestSnapshotIsPointInTime: a writer appends numbered records to two files
// in a fixed order (first a, then b), each made durable before the next
// (fdatasync, as a log or a database does), while snapshots are cut. On
// btrfs every snapshot is one instant of the whole volume, so every restore
// shows a consistent prefix: b holds records 0..n-1 and a holds 0..n-1 or
// 0..n. (A copy, file after file, would catch b later than a.) Writes never
// made durable carry no order, as after a power cut: a crash-consistent
// snapshot may hold any subset of them.
func TestSnapshotIsPointInTime(t *testing.T) {
	h, _ := startBtrfsDriver(t, 4<<30, 100<<30)
	ctx := ctxT(t)
	volume := mustCreate(t, h, volumeRequest("log", "node", 128<<20, nil, nil))
	dir := publish(t, h, volume, false)
	a, err := os.OpenFile(filepath.Join(dir, "a"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := os.OpenFile(filepath.Join(dir, "b"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var records int
	var writeErr error
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				records = i
				return
			default:
			}
			record := []byte(fmt.Sprintf("%08d\n", i))
			for _, f := range []*os.File{a, b} {
				if _, err := f.Write(record); err != nil {
					writeErr = err
					return
				}
				if err := unix.Fdatasync(int(f.Fd())); err != nil {
					writeErr = err
					return
				}
			}
		}
	})
	var snapshots []string
	for i := range 12 {
		resp, err := h.controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: fmt.Sprintf("pit-%d", i), SourceVolumeId: volume})
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatal(err)
		}
		if !resp.GetSnapshot().GetReadyToUse() {
			t.Errorf("btrfs snapshot %d not ready at once", i)
		}
		snapshots = append(snapshots, resp.GetSnapshot().GetSnapshotId())
	}
	close(stop)
	wg.Wait()
	if writeErr != nil {
		t.Fatal(writeErr)
	}
	nonEmpty := 0
	for i, snapshot := range snapshots {
		restored := publish(t, h, mustCreate(t, h, restoreRequest(fmt.Sprintf("pit-restore-%d", i), 128<<20, snapshot)), true)
		countA := readRecords(t, filepath.Join(restored, "a"))
		countB := readRecords(t, filepath.Join(restored, "b"))
		if countA != countB && countA != countB+1 {
			t.Errorf("snapshot %d is not one instant: a has %d records, b has %d", i, countA, countB)
		}
		if countB > 0 {
			nonEmpty++
		}
	}
	if nonEmpty < len(snapshots)/2 {
		t.Fatalf("only %d of %d snapshots caught the writer; the test proved little", nonEmpty, len(snapshots))
	}
	t.Logf("%d records written; %d snapshots, each a consistent prefix", records, len(snapshots))
}

// readRecords checks that path holds records 0..n-1, each whole, and
// returns n.
func readRecords(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	n := 0
	for scanner.Scan() {
		got, err := strconv.Atoi(scanner.Text())
		if err != nil || got != n {
			t.Fatalf("%s: record %d reads %q", path, n, scanner.Text())
		}
		n++
	}
	if err := scanner.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestRestoreOutlivesTheDeadline: on a directory pool, a restore whose
// copy takes longer than every CreateVolume call's deadline still
// completes: each call answers ABORTED with progress while the fill goes
// on in the background, and a later call returns the volume, with the
// snapshot's data.
func TestRestoreOutlivesTheDeadline(t *testing.T) {
	h := startDriver(t, "node1", "cn-hangzhou-b", "cn-hangzhou", "", func(o *Options) { o.Backend = store.BackendDir })
	source := mustCreate(t, h, volumeRequest("big-source", "node", 512<<20, nil, nil))
	sourceDir := h.driver.nodePool.VolumeDir(source)
	if err := treetest.Bench(sourceDir, 64<<20, 5000); err != nil {
		t.Fatal(err)
	}
	snapshot := mustSnapshot(t, h, "big-snap", source)

	const callDeadline = 300 * time.Millisecond
	req := restoreRequest("slow-restore", 512<<20, snapshot)
	aborted, start := 0, time.Now()
	var volumeID string
	for time.Since(start) < 3*time.Minute {
		ctx, cancel := context.WithTimeout(context.Background(), callDeadline)
		resp, err := h.controller.CreateVolume(ctx, req)
		cancel()
		if err == nil {
			volumeID = resp.GetVolume().GetVolumeId()
			break
		}
		switch status.Code(err) {
		case codes.Aborted, codes.DeadlineExceeded:
			aborted++
		default:
			t.Fatalf("CreateVolume of a restore in progress: %v; want ABORTED (or the deadline)", err)
		}
	}
	if volumeID == "" {
		t.Fatalf("the restore never completed (%d calls answered in progress)", aborted)
	}
	if aborted == 0 {
		t.Fatal("the copy finished within one call's deadline; the test proved nothing")
	}
	t.Logf("restore completed after %d calls of %v answered in progress (%v in all)", aborted, callDeadline, time.Since(start).Round(time.Millisecond))
	want, err := treetest.Describe(sourceDir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := treetest.Describe(h.driver.nodePool.VolumeDir(volumeID))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range treetest.Diff(want, got, false) {
		t.Error(d)
	}
}

// TestDeleteVolumeWithNestedSubvolumes: a pod nests subvolumes (and a
// read-only snapshot) in its btrfs volume; DeleteVolume leaves nothing
// behind: no path, no subvolume once the cleaner ran, no qgroup.
func TestDeleteVolumeWithNestedSubvolumes(t *testing.T) {
	h, pool := startBtrfsDriver(t, 2<<30, 100<<30)
	ctx := ctxT(t)
	volume := mustCreate(t, h, allowNested(volumeRequest("nesting", "node", 256<<20, nil, nil)))
	mounted := publish(t, h, volume, false)
	ids := []uint64{}
	parent := mounted
	for level := range 3 {
		nested := filepath.Join(parent, fmt.Sprintf("nested%d", level))
		if err := btrfs.CreateSubvolume(nested); err != nil {
			t.Fatal(err)
		}
		if _, err := tenantops.Fill(filepath.Join(nested, "data"), 2<<20); err != nil {
			t.Fatal(err)
		}
		id, err := btrfs.SubvolumeID(nested)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		parent = nested
	}
	volumeDir := h.driver.nodePool.VolumeDir(volume)
	volumeSubvol, err := btrfs.SubvolumeID(volumeDir)
	if err != nil {
		t.Fatal(err)
	}
	ids = append(ids, volumeSubvol)

	// Unpublish (as the kubelet would) before deleting.
	for _, call := range []func() error{
		func() error {
			_, err := h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volume, TargetPath: mounted})
			return err
		},
	} {
		if err := call(); err != nil {
			t.Fatal(err)
		}
	}
	unstageAll(t, h, volume)
	if _, err := h.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: volume}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(volumeDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("volume directory survived: %v", err)
	}
	backend, err := btrfs.Open(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = backend.Close() }()
	waitCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for _, id := range ids {
		if err := backend.WaitCleaned(waitCtx, id); err != nil {
			t.Fatal(err)
		}
	}
	if exists, err := backend.QgroupExists(volumeSubvol); err != nil || exists {
		t.Fatalf("the volume's qgroup: exists=%v, %v", exists, err)
	}
	if entries, _ := os.ReadDir(filepath.Join(pool, "tmp")); len(entries) != 0 {
		t.Fatalf("temporary work left: %v", entries)
	}
}

// unstageAll unstages the volume at every staging path publish used (the
// staging mount keeps the subvolume busy otherwise).
func unstageAll(t *testing.T, h *harness, volume string) {
	t.Helper()
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range bytes.Split(mounts, []byte("\n")) {
		fields := bytes.Fields(line)
		if len(fields) < 5 || !bytes.HasSuffix(fields[4], []byte("/staging")) {
			continue
		}
		staging := string(fields[4])
		if !bytes.Contains(fields[3], []byte(volume)) {
			continue
		}
		if _, err := h.node.NodeUnstageVolume(ctxT(t), &csi.NodeUnstageVolumeRequest{VolumeId: volume, StagingTargetPath: staging}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCapacityIsHonest: a pool never promises more than its filesystem
// holds, whatever --capacity says, and counts what volumes may still write.
func TestCapacityIsHonest(t *testing.T) {
	const fsSize = 1 << 30
	h, _ := startBtrfsDriver(t, fsSize, 100<<30)
	ctx := ctxT(t)
	capacity := func() int64 {
		resp, err := h.controller.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"scope": "node"}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetAvailableCapacity()
	}
	first := capacity()
	if first <= 0 || first > fsSize {
		t.Fatalf("a 1 GiB filesystem with --capacity 100Gi reports %d bytes available; want (0, 1 GiB]", first)
	}
	if _, err := h.controller.CreateVolume(ctx, volumeRequest("too-big", "node", 2<<30, nil, nil)); status.Code(err) != codes.OutOfRange {
		t.Fatalf("a 2 GiB volume on a 1 GiB filesystem: %v, want OutOfRange", err)
	}
	half := first / 2
	mustCreate(t, h, volumeRequest("half", "node", half, nil, nil))
	// A fresh subvolume is charged its first 16 KiB of metadata: allow a MiB.
	if after := capacity(); after > first-half+(1<<20) {
		t.Fatalf("after promising %d bytes, %d are available (was %d)", half, after, first)
	}
	if _, err := h.controller.CreateVolume(ctx, volumeRequest("other-half-and-more", "node", first-half+(64<<20), nil, nil)); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a volume larger than what is left: %v, want ResourceExhausted", err)
	}
}

// TestBlockVolumeRoundTrip, on both backends: data written through a block
// volume's device survives a snapshot and restore byte for byte, a
// read-only publish refuses writes, and expansion reaches the device.
func TestBlockVolumeRoundTrip(t *testing.T) {
	for _, backend := range []string{store.BackendDir, store.BackendBtrfs} {
		t.Run(backend, func(t *testing.T) {
			var h *harness
			if backend == store.BackendBtrfs {
				h, _ = startBtrfsDriver(t, 2<<30, 100<<30)
			} else {
				h = startDriver(t, "node1", "cn-hangzhou-b", "cn-hangzhou", "", func(o *Options) { o.Backend = backend })
			}
			ctx := ctxT(t)
			req := volumeRequest("raw", "node", 32<<20, nil, nil)
			req.VolumeCapabilities = []*csi.VolumeCapability{blockCap()}
			volume := mustCreate(t, h, req)
			device := publishBlock(t, h, volume, false)
			pattern := bytes.Repeat([]byte("toposnap block "), 4096)
			if err := writeAt(device, pattern, 5<<20); err != nil {
				t.Fatal(err)
			}
			snapshot := mustSnapshot(t, h, "raw-snap", volume)
			if err := writeAt(device, bytes.Repeat([]byte{0}, len(pattern)), 5<<20); err != nil {
				t.Fatal(err) // after the snapshot: must not show in the restore
			}
			restoreReq := restoreRequest("raw-restored", 32<<20, snapshot)
			restoreReq.VolumeCapabilities = []*csi.VolumeCapability{blockCap()}
			restored := publishBlock(t, h, mustCreate(t, h, restoreReq), true)
			got := make([]byte, len(pattern))
			f, err := os.Open(restored)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.ReadAt(got, 5<<20); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, pattern) {
				t.Fatal("the restored block volume does not hold what was written before the snapshot")
			}
			if err := writeAt(restored, []byte("x"), 0); err == nil {
				t.Fatal("a read-only published block device accepted a write")
			}

			// Expansion: the controller grows the image, the node the device.
			resp, err := h.controller.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
				VolumeId: volume, CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}})
			if err != nil || !resp.GetNodeExpansionRequired() {
				t.Fatalf("ControllerExpandVolume = %v, %v; want node expansion required", resp, err)
			}
			if _, err := h.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: volume, VolumePath: device,
				CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}}); err != nil {
				t.Fatal(err)
			}
			if size := blockSize(t, device); size != 64<<20 {
				t.Fatalf("device size after expansion: %d, want 64 MiB", size)
			}
		})
	}
}

func blockCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// publishBlock stages and publishes a block volume at a target file and
// undoes both at cleanup (which detaches its loop devices).
func publishBlock(t *testing.T, h *harness, volumeID string, readOnly bool) string {
	t.Helper()
	ctx := ctxT(t)
	base := t.TempDir()
	staging, target := filepath.Join(base, "staging"), filepath.Join(base, "dev")
	if err := os.Mkdir(staging, 0o750); err != nil {
		t.Fatal(err)
	}
	if _, err := h.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volumeID, StagingTargetPath: staging, VolumeCapability: blockCap()}); err != nil {
		t.Fatalf("stage %s: %v", volumeID, err)
	}
	if _, err := h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: volumeID, StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: blockCap(), Readonly: readOnly}); err != nil {
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

func writeAt(device string, data []byte, offset int64) error {
	f, err := os.OpenFile(device, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt(data, offset); err != nil {
		return err
	}
	return f.Sync()
}

func blockSize(t *testing.T, device string) uint64 {
	t.Helper()
	f, err := os.Open(device)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		t.Fatal(err)
	}
	return size
}
