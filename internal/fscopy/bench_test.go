package fscopy

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/toposnap/toposnap/internal/fscopy/treetest"
)

var (
	benchOnce sync.Once
	benchSrc  string
	benchErr  error
)

// benchTree is the 1 GiB volume: one large file and 10,000 small
// ones (about 45 MiB together), built once per run in a temp directory on
// the same disk as the copies.
func benchTree(b *testing.B) string {
	benchOnce.Do(func() {
		dir, err := os.MkdirTemp("", "toposnap-bench-")
		if err != nil {
			benchErr = err
			return
		}
		benchSrc = filepath.Join(dir, "volume")
		if benchErr = os.Mkdir(benchSrc, 0o755); benchErr != nil {
			return
		}
		benchErr = treetest.Bench(benchSrc, 1<<30-45<<20, 10000)
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchSrc
}

// TestMain removes the benchmark tree, which outlives a single benchmark.
func TestMain(m *testing.M) {
	code := m.Run()
	if benchSrc != "" {
		_ = os.RemoveAll(filepath.Dir(benchSrc))
	}
	os.Exit(code)
}

func run(b *testing.B, name string, args ...string) {
	b.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		b.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// BenchmarkSnapshotRestore times a snapshot plus a restore of the 1 GiB
// tree with toposnap's copier (durable: it ends in syncfs) against the same
// two copies made with `cp -a`, and with `tar czf` + `tar xzf` (how
// csi-driver-host-path snapshots), interleaved in every iteration so all
// three see the same machine. It reports seconds per method and the ratios.
// Plain cp -a leaves its writeback unflushed, so it is also reported with a
// syncfs after it (the durability toposnap pays for); writeback left by
// cp and tar is otherwise flushed outside their timing.
func BenchmarkSnapshotRestore(b *testing.B) {
	src := benchTree(b)
	work := b.TempDir()
	var ours, cp, cpSynced, tar time.Duration
	for i := 0; b.Loop(); i++ {
		snap, restore := filepath.Join(work, "snap"), filepath.Join(work, "restore")

		start := time.Now()
		if _, err := Tree(context.Background(), src, snap, Options{}); err != nil {
			b.Fatal(err)
		}
		if _, err := Tree(context.Background(), snap, restore, Options{}); err != nil {
			b.Fatal(err)
		}
		ours += time.Since(start)
		clean(b, work, snap, restore)

		start = time.Now()
		run(b, "cp", "-a", src, snap)
		run(b, "cp", "-a", snap, restore)
		cp += time.Since(start)
		if err := SyncFS(work); err != nil {
			b.Fatal(err)
		}
		cpSynced += time.Since(start)
		clean(b, work, snap, restore)

		archive := filepath.Join(work, "snap.tgz")
		start = time.Now()
		run(b, "tar", "czf", archive, "-C", src, ".")
		if err := os.Mkdir(restore, 0o755); err != nil {
			b.Fatal(err)
		}
		run(b, "tar", "xzf", archive, "-C", restore)
		tar += time.Since(start)
		clean(b, work, archive, restore)
	}
	n := float64(b.N)
	b.ReportMetric(ours.Seconds()/n, "toposnap-s/op")
	b.ReportMetric(cp.Seconds()/n, "cp-a-s/op")
	b.ReportMetric(tar.Seconds()/n, "tar-s/op")
	b.ReportMetric(ours.Seconds()/cp.Seconds(), "ratio-vs-cp")
	b.ReportMetric(ours.Seconds()/cpSynced.Seconds(), "ratio-vs-cp+syncfs")
	b.ReportMetric(ours.Seconds()/tar.Seconds(), "ratio-vs-tar")
}

func clean(b *testing.B, work string, paths ...string) {
	b.Helper()
	b.StopTimer()
	defer b.StartTimer()
	for _, p := range paths {
		if err := os.RemoveAll(p); err != nil {
			b.Fatal(err)
		}
	}
	if err := SyncFS(work); err != nil {
		b.Fatal(err)
	}
}
