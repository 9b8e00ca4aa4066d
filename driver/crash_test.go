package driver

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/toposnap/toposnap/driver/store"
	"github.com/toposnap/toposnap/internal/fscopy/treetest"
)

// driverProcess is the real toposnap-driver binary, run as a child process.
type driverProcess struct {
	cmd        *exec.Cmd
	conn       *grpc.ClientConn
	controller csi.ControllerClient
}

var (
	driverBuild    sync.Once
	driverBin      string
	driverBuildErr error
)

// buildDriver builds the driver binary once per test run.
func buildDriver(t *testing.T) string {
	t.Helper()
	driverBuild.Do(func() {
		dir, err := os.MkdirTemp("", "toposnap-driver-bin-")
		if err != nil {
			driverBuildErr = err
			return
		}
		driverBin = filepath.Join(dir, "toposnap-driver")
		out, err := exec.Command("go", "build", "-o", driverBin, "./cmd/toposnap-driver").CombinedOutput()
		if err != nil {
			driverBuildErr = fmt.Errorf("build driver: %w\n%s", err, out)
		}
	})
	if driverBuildErr != nil {
		t.Fatal(driverBuildErr)
	}
	return driverBin
}

func runDriver(t *testing.T, bin, dir string, extraArgs ...string) *driverProcess {
	t.Helper()
	endpoint := "unix://" + filepath.Join(dir, "csi.sock")
	args := append([]string{"--endpoint", endpoint, "--node-id", "node1", "--data-dir", filepath.Join(dir, "pool"),
		"--capacity", "10Gi", "--zone", "cn-hangzhou-b", "--region", "cn-hangzhou", "--snapshot-wait", "1ms"}, extraArgs...)
	cmd := exec.Command(bin, args...)
	logFile, err := os.OpenFile(filepath.Join(dir, "driver.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); logFile.Close() })
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	identity := csi.NewIdentityClient(conn)
	err = wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := identity.Probe(ctx, &csi.ProbeRequest{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("driver did not come up: %v", err)
	}
	return &driverProcess{cmd: cmd, conn: conn, controller: csi.NewControllerClient(conn)}
}

// kill SIGKILLs the driver and waits for it to be gone.
func (p *driverProcess) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait()
	p.conn.Close()
}

// countFiles counts the entries under dir (0 when it is gone).
func countFiles(dir string) int {
	n := 0
	_ = filepath.WalkDir(dir, func(_ string, _ fs.DirEntry, err error) error {
		if err == nil {
			n++
		}
		return nil
	})
	return n
}

// listVolumeStates lists the driver's volumes: id -> state ("" when ready).
func listVolumeStates(t *testing.T, ctx context.Context, p *driverProcess) map[string]string {
	t.Helper()
	resp, err := p.controller.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for _, entry := range resp.GetEntries() {
		states[entry.GetVolume().GetVolumeId()] = entry.GetVolume().GetVolumeContext()[StateContextKey]
	}
	return states
}

func available(t *testing.T, ctx context.Context, p *driverProcess) int64 {
	t.Helper()
	resp, err := p.controller.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"scope": "node"}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetAvailableCapacity()
}

// TestCrashDuringRestore kills the driver while a restore is being filled.
// The volume it leaves holds its capacity and is listed (state "creating"),
// so orphan checks see it; the CO's repeated CreateVolume completes it with
// the snapshot's data; deleting it frees the capacity.
func TestCrashDuringRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the driver binary")
	}
	bin := buildDriver(t)
	dir := t.TempDir()
	pool := filepath.Join(dir, "pool")
	first := runDriver(t, bin, dir, "--snapshot-wait", "10m")
	ctx := ctxT(t)
	full := available(t, ctx, first)

	vol, err := first.controller.CreateVolume(ctx, volumeRequest("source", "node", 1<<30, nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := treetest.Bench(filepath.Join(pool, "volumes", vol.GetVolume().GetVolumeId()), 16<<20, 6000); err != nil {
		t.Fatal(err)
	}
	snap, err := first.controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: vol.GetVolume().GetVolumeId()})
	if err != nil || !snap.GetSnapshot().GetReadyToUse() {
		t.Fatalf("snapshot: %v, %v", snap, err)
	}
	restoreReq := volumeRequest("restored", "node", 2<<30, nil, nil)
	restoreReq.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}}
	restoreID := store.MakeID(store.KindVolume, "node", "node1", "restored")
	go func() { _, _ = first.controller.CreateVolume(ctx, restoreReq) }()

	// Kill once the fill has visibly started.
	err = wait.PollUntilContextTimeout(ctx, 2*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		return countFiles(filepath.Join(pool, "tmp", restoreID+".node1")) > 10, nil
	})
	if err != nil {
		t.Fatalf("restore never started filling: %v", err)
	}
	first.kill(t)
	if _, err := os.Stat(filepath.Join(pool, "volumes", restoreID)); !os.IsNotExist(err) {
		t.Fatalf("the fill finished before the kill (or left a partial volume in place): %v", err)
	}

	second := runDriver(t, bin, dir, "--snapshot-wait", "10m")
	if state, listed := listVolumeStates(t, ctx, second)[restoreID]; !listed || state != "creating" {
		t.Fatalf("after the crash, ListVolumes shows the restore as listed=%v state=%q; want it listed as creating", listed, state)
	}
	if got, want := available(t, ctx, second), full-(1<<30)-(2<<30); got != want {
		t.Fatalf("available after the crash = %d, want %d (the interrupted restore keeps its reservation)", got, want)
	}
	resp, err := second.controller.CreateVolume(ctx, restoreReq)
	if err != nil {
		t.Fatalf("repeated CreateVolume after the crash: %v", err)
	}
	if resp.GetVolume().GetVolumeId() != restoreID {
		t.Fatalf("repeated CreateVolume returned %s, want %s", resp.GetVolume().GetVolumeId(), restoreID)
	}
	if state := listVolumeStates(t, ctx, second)[restoreID]; state != "" {
		t.Fatalf("completed restore is listed as %q", state)
	}
	want, err := treetest.Describe(filepath.Join(pool, "snapshots", snap.GetSnapshot().GetSnapshotId()))
	if err != nil {
		t.Fatal(err)
	}
	got, err := treetest.Describe(filepath.Join(pool, "volumes", restoreID))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range treetest.Diff(want, got, false) {
		t.Error(d)
	}
	for _, id := range []string{restoreID, vol.GetVolume().GetVolumeId()} {
		if _, err := second.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatal(err)
		}
	}
	if got := available(t, ctx, second); got != full {
		t.Fatalf("available after deleting everything = %d, want %d", got, full)
	}
}

// TestCrashDuringDelete kills the driver while it removes a volume's files.
// After the restart the volume is gone for good (the delete is finished on
// start-up) and its capacity is free; it is never listed as a ready volume
// with half its files.
func TestCrashDuringDelete(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the driver binary")
	}
	bin := buildDriver(t)
	dir := t.TempDir()
	pool := filepath.Join(dir, "pool")
	first := runDriver(t, bin, dir)
	ctx := ctxT(t)
	full := available(t, ctx, first)
	vol, err := first.controller.CreateVolume(ctx, volumeRequest("doomed", "node", 1<<30, nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	id := vol.GetVolume().GetVolumeId()
	volumeDir := filepath.Join(pool, "volumes", id)
	if err := treetest.Bench(volumeDir, 1<<20, 20000); err != nil {
		t.Fatal(err)
	}
	before := countFiles(volumeDir)
	go func() { _, _ = first.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}) }()
	err = wait.PollUntilContextTimeout(ctx, time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		return countFiles(volumeDir) < before-10, nil
	})
	if err != nil {
		t.Fatalf("delete never started removing files: %v", err)
	}
	first.kill(t)
	if countFiles(volumeDir) == 0 {
		t.Fatal("the delete finished before the kill")
	}

	second := runDriver(t, bin, dir)
	if state, listed := listVolumeStates(t, ctx, second)[id]; listed {
		t.Fatalf("after a crashed delete the volume is still listed (state %q)", state)
	}
	if _, err := os.Stat(volumeDir); !os.IsNotExist(err) {
		t.Fatalf("files of the deleted volume survived the restart: %v", err)
	}
	if got := available(t, ctx, second); got != full {
		t.Fatalf("available after the crashed delete = %d, want %d", got, full)
	}
}

// TestCrashDuringSnapshot kills the driver (SIGKILL) in the middle of a
// large snapshot copy, restarts it, and repeats the CreateSnapshot call: the
// snapshot is never reported ready before it is complete, the repeated call
// finishes it with identical data, and no temporary files remain.
func TestCrashDuringSnapshot(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the driver binary")
	}
	bin := buildDriver(t)
	dir := t.TempDir()
	pool := filepath.Join(dir, "pool")
	first := runDriver(t, bin, dir)
	ctx := ctxT(t)

	vol, err := first.controller.CreateVolume(ctx, volumeRequest("big", "node", 2<<30, nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	volumeDir := filepath.Join(pool, "volumes", vol.GetVolume().GetVolumeId())
	if err := treetest.Bench(volumeDir, 64<<20, 20000); err != nil {
		t.Fatal(err)
	}
	snapReq := &csi.CreateSnapshotRequest{Name: "big-snap", SourceVolumeId: vol.GetVolume().GetVolumeId()}
	resp, err := first.controller.CreateSnapshot(ctx, snapReq)
	if err != nil {
		t.Fatal(err)
	}
	snapID := resp.GetSnapshot().GetSnapshotId()
	if resp.GetSnapshot().GetReadyToUse() {
		t.Fatal("a 20,000-file snapshot was ready within 1ms; the crash would not hit a copy")
	}

	// Kill once the copy has visibly started.
	tmpDir := filepath.Join(pool, "tmp", snapID+".node1")
	err = wait.PollUntilContextTimeout(ctx, 2*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		entries, _ := os.ReadDir(filepath.Join(tmpDir, "small"))
		return len(entries) > 0, nil
	})
	if err != nil {
		t.Fatalf("copy never started: %v", err)
	}
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = first.cmd.Wait()
	meta, err := os.ReadFile(filepath.Join(pool, "meta", snapID+".json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(meta), `"state": "creating"`) {
		t.Fatalf("copy finished before the kill; metadata: %s", meta)
	}
	if _, err := os.Stat(filepath.Join(pool, "snapshots", snapID)); !os.IsNotExist(err) {
		t.Fatalf("a partial snapshot is in place: %v", err)
	}

	second := runDriver(t, bin, dir)
	if entries, _ := os.ReadDir(filepath.Join(pool, "tmp")); len(entries) != 0 {
		t.Fatalf("restart left temporary work: %v", entries)
	}
	listed, err := second.controller.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: snapID})
	if err != nil {
		t.Fatal(err)
	}
	for _, entry := range listed.GetEntries() {
		if entry.GetSnapshot().GetReadyToUse() {
			t.Fatal("the interrupted snapshot is listed as ready")
		}
	}

	// Repeat the call until it reports ready; every answer before that is "not ready".
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		resp, err := second.controller.CreateSnapshot(ctx, snapReq)
		if err != nil {
			return false, err
		}
		if resp.GetSnapshot().GetSnapshotId() != snapID {
			t.Fatalf("repeated call returned snapshot %s, want %s", resp.GetSnapshot().GetSnapshotId(), snapID)
		}
		return resp.GetSnapshot().GetReadyToUse(), nil
	})
	if err != nil {
		t.Fatalf("repeated CreateSnapshot never completed: %v", err)
	}
	want, err := treetest.Describe(volumeDir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := treetest.Describe(filepath.Join(pool, "snapshots", snapID))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range treetest.Diff(want, got, false) {
		t.Error(d)
	}
	if entries, _ := os.ReadDir(filepath.Join(pool, "tmp")); len(entries) != 0 {
		t.Fatalf("temporary work left after completion: %v", entries)
	}
	if _, err := store.ParseID(snapID); err != nil {
		t.Fatal(err)
	}
}
