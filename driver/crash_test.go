package driver

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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

func buildDriver(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "toposnap-driver")
	out, err := exec.Command("go", "build", "-o", bin, "./cmd/toposnap-driver").CombinedOutput()
	if err != nil {
		t.Fatalf("build driver: %v\n%s", err, out)
	}
	return bin
}

func runDriver(t *testing.T, bin, dir string) *driverProcess {
	t.Helper()
	endpoint := "unix://" + filepath.Join(dir, "csi.sock")
	cmd := exec.Command(bin, "--endpoint", endpoint, "--node-id", "node1", "--data-dir", filepath.Join(dir, "pool"),
		"--capacity", "10Gi", "--zone", "cn-hangzhou-b", "--region", "cn-hangzhou", "--snapshot-wait", "1ms")
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
