package store_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/toposnap/toposnap/driver/store"
	"github.com/toposnap/toposnap/driver/store/btrfs"
	"github.com/toposnap/toposnap/internal/fscopy"
	"github.com/toposnap/toposnap/internal/fscopy/treetest"
	"github.com/toposnap/toposnap/internal/testpool"
	"github.com/toposnap/toposnap/internal/topology"
)

// BenchmarkBtrfsSnapshotRestore times what a user waits for on a btrfs
// pool: CreateSnapshot until ready, then CreateVolume from it until the
// restore is usable, through the store (metadata, locks, qgroups and all),
// for the two volumes: 1 GiB in 10,000 files, and 10 GiB (one
// large file and the same 10,000 small ones). The baseline is `cp -a` of
// the same tree twice (snapshot, then restore) on the same filesystem, with
// a syncfs so it is as durable as the driver's snapshot; coreutils 9 clones
// extents there (reflink=auto), so the baseline is cp's best case.
func BenchmarkBtrfsSnapshotRestore(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Fatal("needs root for a loop-backed btrfs filesystem")
	}
	for _, size := range []struct {
		name  string
		large int64
	}{
		{"1GiB-10000files", 1<<30 - 45<<20},
		{"10GiB-10000files", 10<<30 - 45<<20},
	} {
		b.Run(size.name, func(b *testing.B) {
			fs, err := testpool.NewBtrfs(b.TempDir(), size.large*3+(4<<30))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() {
				if err := fs.Close(); err != nil {
					b.Error(err)
				}
			})
			pool, err := store.Open(store.Config{
				Scope: topology.ScopeNode, Dir: filepath.Join(fs.Dir, "pool"), Owner: "node1",
				Capacity: 1 << 50, Segment: topology.Segment{topology.NodeKey: "node1"}, Holder: "node1",
				BackendKind: store.BackendBtrfs,
			})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(pool.Close)
			ctx := context.Background()
			source, err := pool.CreateVolume(ctx, store.VolumeRequest{Name: "source", CapacityBytes: size.large + (1 << 30)})
			if err != nil {
				b.Fatal(err)
			}
			sourceDir := pool.VolumeDir(source.ID)
			if err := treetest.Bench(sourceDir, size.large, 10000); err != nil {
				b.Fatal(err)
			}
			if err := fscopy.SyncFS(sourceDir); err != nil {
				b.Fatal(err)
			}
			cleaner, err := btrfs.Open(fs.Dir)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = cleaner.Close() })
			work := filepath.Join(fs.Dir, "cp")
			if err := os.Mkdir(work, 0o755); err != nil {
				b.Fatal(err)
			}

			var snapshotTime, restoreTime, cpTime time.Duration
			var rounds []time.Duration
			for i := 0; b.Loop(); i++ {
				start := time.Now()
				snap, err := pool.CreateSnapshot(fmt.Sprintf("snap-%d", i), source)
				if err != nil {
					b.Fatal(err)
				}
				if snap, err = pool.WaitSnapshot(ctx, snap.ID); err != nil || !snap.Ready() {
					b.Fatalf("snapshot: %+v, %v", snap, err)
				}
				cut := time.Now()
				restored, err := pool.CreateVolume(ctx, store.VolumeRequest{
					Name: fmt.Sprintf("restore-%d", i), CapacityBytes: source.CapacityBytes,
					Source: &store.Source{Pool: pool, SnapshotID: snap.ID},
				})
				if err != nil {
					b.Fatal(err)
				}
				done := time.Now()
				snapshotTime += cut.Sub(start)
				restoreTime += done.Sub(cut)
				rounds = append(rounds, done.Sub(start))

				b.StopTimer()
				var deleted []uint64
				for _, dir := range []string{pool.VolumeDir(restored.ID), pool.SnapshotDir(snap.ID)} {
					id, err := btrfs.SubvolumeID(dir)
					if err != nil {
						b.Fatal(err)
					}
					deleted = append(deleted, id)
				}
				if err := pool.DeleteVolume(ctx, restored.ID); err != nil {
					b.Fatal(err)
				}
				if err := pool.DeleteSnapshot(ctx, snap.ID); err != nil {
					b.Fatal(err)
				}
				start = time.Now()
				copyA(b, sourceDir, filepath.Join(work, "snap"))
				copyA(b, filepath.Join(work, "snap"), filepath.Join(work, "restore"))
				if err := fscopy.SyncFS(work); err != nil {
					b.Fatal(err)
				}
				cpTime += time.Since(start)
				for _, dir := range []string{"snap", "restore"} {
					if err := os.RemoveAll(filepath.Join(work, dir)); err != nil {
						b.Fatal(err)
					}
				}
				// Let the cleaner drop what was deleted before the next
				// timed round, so a round does not pay for the last one.
				for _, id := range deleted {
					if err := cleaner.WaitCleaned(ctx, id); err != nil {
						b.Fatal(err)
					}
				}
				if err := fscopy.SyncFS(work); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			n := float64(b.N)
			b.ReportMetric(snapshotTime.Seconds()/n, "snapshot-s/op")
			b.ReportMetric(restoreTime.Seconds()/n, "restore-s/op")
			b.ReportMetric((snapshotTime+restoreTime).Seconds()/n, "toposnap-s/op")
			b.ReportMetric(cpTime.Seconds()/n, "cp-a-s/op")
			b.ReportMetric((snapshotTime+restoreTime).Seconds()/cpTime.Seconds(), "ratio-vs-cp")
			// The machine may be shared: the median and the fastest round
			// say what the operations cost, the mean what a busy machine adds.
			slices.Sort(rounds)
			b.ReportMetric(rounds[len(rounds)/2].Seconds(), "median-toposnap-s")
			b.ReportMetric(rounds[0].Seconds(), "min-toposnap-s")
		})
	}
}

func copyA(b *testing.B, from, to string) {
	b.Helper()
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		b.Fatalf("cp -a %s %s: %v\n%s", from, to, err, out)
	}
}
