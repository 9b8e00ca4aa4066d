package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
