package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/toposnap/toposnap/internal/testpool"
	"github.com/toposnap/toposnap/internal/topology"
)

// The pool hands its backend paths through held descriptors
// (/proc/self/fd/N/<id>): the btrfs backend's subvolume ioctls, limits and
// deletes must work through them as through plain paths.
func TestPoolOnBtrfsThroughHeldDirectories(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root for a loop-backed btrfs filesystem")
	}
	dir := testpool.ForTest(t, 512<<20)
	open := func() *Pool {
		p, err := Open(Config{Scope: topology.ScopeNode, Dir: dir, Owner: "node1", Capacity: 256 << 20,
			Segment: topology.Segment{}, Holder: "node1", BackendKind: BackendBtrfs})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		return p
	}
	p := open()
	if p.BackendName() != BackendBtrfs {
		t.Fatalf("backend %s, want btrfs", p.BackendName())
	}
	ctx := context.Background()
	vol, err := p.CreateVolume(ctx, VolumeRequest{Name: "fs", CapacityBytes: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.VolumeDir(vol.ID), "data"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	block, err := p.CreateVolume(ctx, VolumeRequest{Name: "block", CapacityBytes: 16 << 20, Block: true})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := p.CreateSnapshot("snap", vol)
	if err == nil {
		snap, err = p.WaitSnapshot(ctx, snap.ID)
	}
	if err != nil || !snap.Ready() {
		t.Fatalf("snapshot on btrfs: %+v, %v", snap, err)
	}
	if _, err := p.CreateSnapshot("block-snap", block); err != nil {
		t.Fatal(err)
	}
	restored, err := p.CreateVolume(ctx, VolumeRequest{Name: "restored", CapacityBytes: 32 << 20,
		Source: &Source{Pool: p, SnapshotID: snap.ID}})
	if err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(filepath.Join(p.VolumeDir(restored.ID), "data")); err != nil || string(data) != "hello" {
		t.Fatalf("restored data = %q, %v", data, err)
	}
	if _, err := p.ExpandVolume(vol.ID, 64<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := p.VolumeUsage(vol.ID); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{restored.ID, vol.ID, block.ID} {
		if err := p.DeleteVolume(ctx, id); err != nil {
			t.Fatalf("delete %s: %v", id, err)
		}
	}
	for _, id := range []string{snap.ID, p.SnapshotID("block-snap")} {
		if err := p.DeleteSnapshot(ctx, id); err != nil {
			t.Fatalf("delete %s: %v", id, err)
		}
	}
	p.Close()
	reopened := open()
	if u := reopened.Unrecovered(); len(u) != 0 {
		t.Fatalf("a clean btrfs pool reopened with unrecovered work: %+v", u)
	}
	if _, err := reopened.LookupVolume(vol.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted volume: %v", err)
	}
}
