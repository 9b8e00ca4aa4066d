package store

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
)

// Block volumes have no filesystem limit, so each snapshot of one may pin
// up to the image's size as the device is overwritten: the pool counts a
// block volume's snapshots against its capacity, refuses one it cannot
// hold, and frees the bytes when the snapshot is deleted.
func TestBlockSnapshotsCountAgainstCapacity(t *testing.T) {
	tests := []struct {
		name      string
		capacity  int64
		block     bool
		snapshots int
		// wantAvailable after every snapshot that fitted; refusedAt is the
		// first snapshot refused (0: none).
		wantAvailable int64
		refusedAt     int
	}{
		{"snapshot of a block volume larger than what is left is refused", 100, true, 1, 40, 1},
		{"each snapshot of a block volume holds its size", 200, true, 3, 20, 3},
		{"snapshots of a filesystem volume are bounded by its limit, not counted", 100, false, 3, 40, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := openPool(t, t.TempDir(), "node1", tt.capacity)
			ctx := context.Background()
			vol, err := p.CreateVolume(ctx, VolumeRequest{Name: "v", CapacityBytes: 60, Block: tt.block})
			if err != nil {
				t.Fatal(err)
			}
			var taken []string
			for i := 1; i <= tt.snapshots; i++ {
				name := "s" + strconv.Itoa(i)
				snap, err := p.CreateSnapshot(name, vol)
				if i == tt.refusedAt {
					if !errors.Is(err, ErrNoSpace) {
						t.Fatalf("snapshot %d: %v, want ErrNoSpace", i, err)
					}
					for _, want := range []string{p.cfg.Dir, p.SnapshotID(name), "60 bytes"} {
						if !strings.Contains(err.Error(), want) {
							t.Errorf("the refusal %q does not name %q", err, want)
						}
					}
					if _, err := p.LookupSnapshot(p.SnapshotID(name)); !errors.Is(err, ErrNotFound) {
						t.Errorf("a refused snapshot left metadata: %v", err)
					}
					break
				}
				if err != nil {
					t.Fatalf("snapshot %d: %v", i, err)
				}
				if _, err := p.WaitSnapshot(ctx, snap.ID); err != nil {
					t.Fatal(err)
				}
				taken = append(taken, snap.ID)
			}
			if avail, _ := p.Available(); avail != tt.wantAvailable {
				t.Fatalf("available = %d, want %d", avail, tt.wantAvailable)
			}
			for _, id := range taken {
				if err := p.DeleteSnapshot(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			if avail, _ := p.Available(); avail != tt.capacity-60 {
				t.Fatalf("available after deleting the snapshots = %d, want %d", avail, tt.capacity-60)
			}
		})
	}
}
