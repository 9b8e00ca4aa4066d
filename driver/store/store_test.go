package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/toposnap/toposnap/driver/store/dirfs"
	"github.com/toposnap/toposnap/internal/topology"
)

func openPool(t *testing.T, dir, holder string, capacity int64) *Pool {
	t.Helper()
	p, err := Open(Config{Scope: topology.ScopeZone, Dir: dir, Owner: "r/b", Capacity: capacity,
		Segment: topology.Segment{topology.ZoneKey: "b"}, Holder: holder})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func TestIDs(t *testing.T) {
	id := MakeID(KindVolume, topology.ScopeZone, "r/b", "pvc-1")
	parsed, err := ParseID(id)
	if err != nil || parsed.Kind != KindVolume || parsed.Scope != topology.ScopeZone {
		t.Fatalf("ParseID(%s) = %+v, %v", id, parsed, err)
	}
	if MakeID(KindVolume, topology.ScopeZone, "r/b", "pvc-1") != id {
		t.Fatal("IDs are not deterministic")
	}
	for _, bad := range []string{"", "../../etc/passwd", "vn-0123", "vx-0123456789abcdef-0123456789abcdef", id + "/..", strings.ToUpper(id)} {
		if _, err := ParseID(bad); err == nil {
			t.Errorf("ParseID(%q) accepted", bad)
		}
	}
}

// Two processes' worth of pools on one zone directory share capacity.
func TestSharedPoolCapacity(t *testing.T) {
	dir := t.TempDir()
	node1, node2 := openPool(t, dir, "node1", 100), openPool(t, dir, "node2", 100)
	ctx := context.Background()
	if _, err := node1.CreateVolume(ctx, VolumeRequest{Name: "a", CapacityBytes: 60}); err != nil {
		t.Fatal(err)
	}
	if _, err := node2.CreateVolume(ctx, VolumeRequest{Name: "b", CapacityBytes: 60}); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("second 60 of 100 on the shared pool: %v, want ErrNoSpace", err)
	}
	if vol, err := node2.CreateVolume(ctx, VolumeRequest{Name: "a", CapacityBytes: 60}); err != nil || vol.State != StateReady {
		t.Fatalf("repeating node1's create from node2 is not idempotent: %+v, %v", vol, err)
	}
	if avail, _ := node2.Available(); avail != 40 {
		t.Fatalf("available = %d, want 40", avail)
	}
}

func TestConcurrentOperationIsAborted(t *testing.T) {
	p := openPool(t, t.TempDir(), "node1", 100)
	lock, err := p.tryLock(p.VolumeID("busy"))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.unlock()
	if _, err := p.CreateVolume(context.Background(), VolumeRequest{Name: "busy", CapacityBytes: 1}); !errors.Is(err, ErrInFlight) {
		t.Fatalf("create while another holds the name: %v, want ErrInFlight", err)
	}
}

// A create that crashed after reserving leaves metadata in "creating" and a
// temp directory; reopening cleans the temp and a retry completes.
func TestCrashedCreateIsRedone(t *testing.T) {
	dir := t.TempDir()
	p := openPool(t, dir, "node1", 100)
	id := p.VolumeID("v")
	if err := p.writeMeta(id, Volume{ID: id, Name: "v", CapacityBytes: 10, State: StateCreating}); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(p.tempPath(id), "half"), 0o755); err != nil {
		t.Fatal(err)
	}
	reopened := openPool(t, dir, "node1", 100)
	if _, err := os.Stat(reopened.tempPath(id)); !os.IsNotExist(err) {
		t.Fatalf("stale temp survived reopening: %v", err)
	}
	vol, err := reopened.CreateVolume(context.Background(), VolumeRequest{Name: "v", CapacityBytes: 10})
	if err != nil || vol.State != StateReady {
		t.Fatalf("retry after crash: %+v, %v", vol, err)
	}
	if _, err := os.Stat(reopened.VolumeDir(id)); err != nil {
		t.Fatalf("volume directory missing: %v", err)
	}
}

func TestExpand(t *testing.T) {
	p := openPool(t, t.TempDir(), "node1", 100)
	vol, err := p.CreateVolume(context.Background(), VolumeRequest{Name: "v", CapacityBytes: 50})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExpandVolume(vol.ID, 101); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("expand past the pool: %v, want ErrNoSpace", err)
	}
	got, err := p.ExpandVolume(vol.ID, 100)
	if err != nil || got.CapacityBytes != 100 {
		t.Fatalf("expand to the pool's size: %+v, %v", got, err)
	}
}

// slowBackend is the dir backend whose snapshots of one volume block until
// released: a huge volume's walk or copy.
type slowBackend struct {
	dirfs.Backend
	slowSource       string
	entered, release chan struct{}
}

func (b *slowBackend) Snapshot(ctx context.Context, source, tmp, final string, progress func(copied, total int64)) error {
	// The pool hands its backend paths through held descriptors
	// (/proc/self/fd/N/<id>): the object is the last element.
	if filepath.Base(source) == b.slowSource {
		close(b.entered)
		select {
		case <-b.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return b.Backend.Snapshot(ctx, source, tmp, final, progress)
}

// A slow snapshot (a size walk and copy of a huge volume) must not stall
// the rest of the pool: CreateSnapshot registers its job under the jobs
// mutex and measures and copies in the job.
func TestSlowSnapshotDoesNotStallThePool(t *testing.T) {
	slow := &slowBackend{entered: make(chan struct{}), release: make(chan struct{})}
	dir := t.TempDir()
	p, err := Open(Config{Scope: topology.ScopeZone, Dir: dir, Owner: "r/b", Capacity: 100,
		Segment: topology.Segment{topology.ZoneKey: "b"}, Holder: "node1", Backend: slow})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	ctx := context.Background()
	big, err := p.CreateVolume(ctx, VolumeRequest{Name: "big", CapacityBytes: 10})
	if err != nil {
		t.Fatal(err)
	}
	small, err := p.CreateVolume(ctx, VolumeRequest{Name: "small", CapacityBytes: 10})
	if err != nil {
		t.Fatal(err)
	}
	slow.slowSource = big.ID
	defer close(slow.release)
	bigDone := make(chan error, 1)
	go func() { _, err := p.CreateSnapshot("big-snap", big); bigDone <- err }()

	// While the big volume is being walked, everything else in the pool
	// answers promptly.
	within := func(what string, fn func() error) {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- fn() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s is stalled behind the big volume's walk", what)
		}
	}
	within("CreateSnapshot of the big volume", func() error { return <-bigDone })
	select {
	case <-slow.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the big snapshot never started")
	}
	within("snapshot of another volume", func() error {
		snap, err := p.CreateSnapshot("small-snap", small)
		if err != nil {
			return err
		}
		_, err = p.WaitSnapshot(ctx, snap.ID)
		return err
	})
	within("repeated CreateSnapshot of the big volume", func() error {
		snap, err := p.CreateSnapshot("big-snap", big)
		if err == nil && snap.Ready() {
			err = errors.New("reported ready while its copy is blocked")
		}
		return err
	})
	within("progress of the big snapshot", func() error {
		if _, ok := p.Progress(p.SnapshotID("big-snap")); !ok {
			return errors.New("no progress for a running job")
		}
		return nil
	})
	within("delete of the other snapshot", func() error { return p.DeleteSnapshot(ctx, p.SnapshotID("small-snap")) })
}

// A volume left "creating" by a crash holds its capacity, is listed (so
// orphan checks see it), and frees its capacity when deleted.
func TestCreatingVolumeIsListedAndCounted(t *testing.T) {
	dir := t.TempDir()
	p := openPool(t, dir, "node1", 100)
	id := p.VolumeID("v")
	if err := p.writeMeta(id, Volume{ID: id, Name: "v", CapacityBytes: 70, State: StateCreating}); err != nil {
		t.Fatal(err)
	}
	reopened := openPool(t, dir, "node1", 100)
	listed, err := reopened.ListVolumes()
	if err != nil || len(listed) != 1 || listed[0].ID != id {
		t.Fatalf("ListVolumes after a crashed create = %+v, %v; want the creating volume", listed, err)
	}
	if avail, _ := reopened.Available(); avail != 30 {
		t.Fatalf("available = %d, want 30 (the crashed create still holds its 70)", avail)
	}
	if err := reopened.DeleteVolume(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if avail, _ := reopened.Available(); avail != 100 {
		t.Fatalf("available after deleting the crashed create = %d, want 100", avail)
	}
}

// A delete interrupted after it began (files partly gone) is finished when
// the pool is opened: no volume is ever "ready" with half its files.
func TestInterruptedDeleteIsFinishedOnOpen(t *testing.T) {
	dir := t.TempDir()
	p := openPool(t, dir, "node1", 100)
	vol, err := p.CreateVolume(context.Background(), VolumeRequest{Name: "v", CapacityBytes: 60})
	if err != nil {
		t.Fatal(err)
	}
	// What DeleteVolume leaves when killed while removing files.
	vol.State = StateDeleting
	if err := p.writeMeta(vol.ID, vol); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.VolumeDir(vol.ID), "left"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	reopened := openPool(t, dir, "node1", 100)
	if _, err := reopened.LookupVolume(vol.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("volume after reopening: %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(reopened.VolumeDir(vol.ID)); !os.IsNotExist(err) {
		t.Fatalf("files of the deleted volume survived: %v", err)
	}
	if avail, _ := reopened.Available(); avail != 100 {
		t.Fatalf("available = %d, want 100", avail)
	}
}

// Stale temporaries of metadata writes are removed on open; live metadata stays.
func TestMetadataTemporariesAreCleaned(t *testing.T) {
	dir := t.TempDir()
	p := openPool(t, dir, "node1", 100)
	vol, err := p.CreateVolume(context.Background(), VolumeRequest{Name: "v", CapacityBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "meta", "."+vol.ID+".json.tmp-123")
	if err := os.WriteFile(stale, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	reopened := openPool(t, dir, "node1", 100)
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale metadata temporary survived: %v", err)
	}
	if _, err := reopened.LookupVolume(vol.ID); err != nil {
		t.Fatal(err)
	}
}

// A volume cannot be deleted while a copy reads from it, and a copy cannot
// start from a volume being deleted.
func TestSourceLease(t *testing.T) {
	p := openPool(t, t.TempDir(), "node1", 100)
	vol, err := p.CreateVolume(context.Background(), VolumeRequest{Name: "v", CapacityBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	src := &Source{Pool: p, VolumeID: vol.ID}
	lease, err := src.lease()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteVolume(context.Background(), vol.ID); !errors.Is(err, ErrInFlight) {
		t.Fatalf("delete while a copy reads the volume: %v, want ErrInFlight", err)
	}
	lease.unlock()
	deleting, err := p.deleteLease(vol.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.lease(); !errors.Is(err, ErrInFlight) {
		t.Fatalf("lease on a volume being deleted: %v, want ErrInFlight", err)
	}
	deleting.unlock()
	if err := p.DeleteVolume(context.Background(), vol.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := src.lease(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("lease on a deleted volume: %v, want ErrNotFound", err)
	}
}
