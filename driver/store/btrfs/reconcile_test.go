package btrfs

import (
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/toposnap/toposnap/internal/tenantops"
)

// A tenant's subvolumes made with its own inheritance list (none, or a
// neighbour's qgroup) are put back under their volume's limit by
// Reconcile: what they wrote moves to the volume, the neighbour gets its
// charge back, and a second pass has nothing to do. The writes made before
// it ran are not undone (the window: see issue 19).
func TestReconcileReturnsChargesToTheVolume(t *testing.T) {
	b, dir := openTestBackend(t)
	vol, victim := filepath.Join(dir, "vol"), filepath.Join(dir, "victim")
	for _, path := range []string{vol, victim} {
		if err := b.Create("", path, 32<<20); err != nil {
			t.Fatal(err)
		}
	}
	victimID, err := SubvolumeID(victim)
	if err != nil {
		t.Fatal(err)
	}
	pod := newTenant(t, vol)
	pod.must("subvolume-inherit", "none", tenantops.Request{Inherit: []uint64{}})
	pod.must("subvolume-inherit", "neighbours", tenantops.Request{Inherit: []uint64{qgroupID(1, victimID)}})
	pod.must("fill", "none/data.bin", tenantops.Request{Size: 16 << 20})
	pod.must("fill", "neighbours/data.bin", tenantops.Request{Size: 24 << 20})

	if changed, err := b.Reconcile(vol); err != nil || changed != 3 {
		t.Fatalf("Reconcile changed %d memberships (%v), want 3", changed, err)
	}
	if err := unix.Syncfs(int(b.root.Fd())); err != nil {
		t.Fatal(err)
	}
	if used, err := b.Usage(vol); err != nil || used < 40<<20 {
		t.Errorf("volume usage after Reconcile: %d (%v), want the tenant's 40 MiB", used, err)
	}
	if used, err := b.Usage(victim); err != nil || used > 1<<20 {
		t.Errorf("neighbour usage after Reconcile: %d (%v), want its charge back", used, err)
	}
	if res := pod.do("fill", "none/more.bin", tenantops.Request{Size: 1 << 20}); !isQuotaError(res.Failure()) {
		t.Errorf("the tenant wrote %d more bytes over its limit (%v)", res.Written, res.Failure())
	}
	if res := newTenant(t, victim).do("fill", "mine.bin", tenantops.Request{Size: 16 << 20}); res.Failure() != nil {
		t.Errorf("the neighbour wrote only %d bytes: %v", res.Written, res.Failure())
	}
	if changed, err := b.Reconcile(vol); err != nil || changed != 0 {
		t.Errorf("second Reconcile changed %d (%v), want nothing", changed, err)
	}
}
