package fscopy

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// removeBenchTree is a volume's worth of small files: 5 directories of 5
// subdirectories of 40 files (1,000 files, 31 directories), and a chain
// of 100 nested directories, where RemoveTree pays most for going back up
// by "..".
func removeBenchTree(b *testing.B, root string) {
	b.Helper()
	for i := range 5 {
		for j := range 5 {
			dir := filepath.Join(root, "d"+strconv.Itoa(i), "s"+strconv.Itoa(j))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				b.Fatal(err)
			}
			for k := range 40 {
				if err := os.WriteFile(filepath.Join(dir, "f"+strconv.Itoa(k)), []byte("data"), 0o644); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	deepChain(b, root, 100)
}

// BenchmarkRemoveTree compares RemoveTree with os.RemoveAll on the same
// tree: RemoveTree's bounded descriptors cost a listing read again each
// time the walk comes back up into a directory, and a few stats.
func BenchmarkRemoveTree(b *testing.B) {
	for _, remover := range []struct {
		name   string
		remove func(string) error
	}{
		{"RemoveTree", RemoveTree},
		{"os.RemoveAll", os.RemoveAll},
	} {
		b.Run(remover.name, func(b *testing.B) {
			base := b.TempDir()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				root := filepath.Join(base, strconv.Itoa(i))
				removeBenchTree(b, root)
				b.StartTimer()
				if err := remover.remove(root); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
