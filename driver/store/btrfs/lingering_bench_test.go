package btrfs

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/toposnap/toposnap/internal/testpool"
)

// BenchmarkLingeringCharge: what counting deleted volumes' charges adds to
// a capacity measurement, which already reads each volume's usage (one
// qgroup lookup per volume). With 500 volumes, 100 of them deleted while a
// clone holds their blocks: LingeringCharge (two tree searches) against
// the 500 Usage calls of the same measurement, same run.
func BenchmarkLingeringCharge(b *testing.B) {
	dir := testpool.ForTest(b, 4<<30)
	backend, err := Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = backend.Close() })
	const volumes, deleted = 500, 100
	paths := make([]string, 0, volumes)
	for i := range volumes {
		path := filepath.Join(dir, fmt.Sprintf("v%d", i))
		if err := backend.Create("", path, 1<<20); err != nil {
			b.Fatal(err)
		}
		paths = append(paths, path)
	}
	for i := range deleted {
		if err := os.WriteFile(filepath.Join(paths[i], "data"), make([]byte, 64<<10), 0o644); err != nil {
			b.Fatal(err)
		}
		clone := filepath.Join(dir, fmt.Sprintf("clone%d", i))
		if err := backend.Clone(b.Context(), paths[i], "", clone, 1<<20, nil); err != nil {
			b.Fatal(err)
		}
		if err := backend.Delete(paths[i]); err != nil {
			b.Fatal(err)
		}
	}
	live := paths[deleted:]
	b.Run("usage-of-each-volume", func(b *testing.B) {
		for b.Loop() {
			for _, path := range live {
				if _, err := backend.Usage(path); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("lingering-charge", func(b *testing.B) {
		for b.Loop() {
			if _, err := backend.LingeringCharge(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
