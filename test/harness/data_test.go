package harness

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestTreeHash: the hash changes with any name, content or symlink target,
// and not with modification times.
func TestTreeHash(t *testing.T) {
	build := func(t *testing.T, change func(dir string)) string {
		t.Helper()
		dir := t.TempDir()
		must(t, os.MkdirAll(filepath.Join(dir, "sub"), 0o755))
		must(t, os.WriteFile(filepath.Join(dir, "sub", "a"), []byte("alpha"), 0o644))
		must(t, os.WriteFile(filepath.Join(dir, DataFile), []byte("data"), 0o644))
		must(t, os.Symlink("sub/a", filepath.Join(dir, "link")))
		if change != nil {
			change(dir)
		}
		hash, err := TreeHash(dir)
		must(t, err)
		return hash
	}
	base := build(t, nil)
	tests := []struct {
		name   string
		change func(dir string)
		same   bool
	}{
		{"same tree hashes alike", func(string) {}, true},
		{"touched file hashes alike", func(dir string) {
			must(t, os.Chtimes(filepath.Join(dir, DataFile), timeZero, timeZero))
		}, true},
		{"changed content", func(dir string) { must(t, os.WriteFile(filepath.Join(dir, DataFile), []byte("dat4"), 0o644)) }, false},
		{"renamed file", func(dir string) { must(t, os.Rename(filepath.Join(dir, "sub", "a"), filepath.Join(dir, "sub", "b"))) }, false},
		{"extra empty dir", func(dir string) { must(t, os.Mkdir(filepath.Join(dir, "empty"), 0o755)) }, false},
		{"retargeted symlink", func(dir string) {
			must(t, os.Remove(filepath.Join(dir, "link")))
			must(t, os.Symlink(DataFile, filepath.Join(dir, "link")))
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := build(t, tt.change); (got == base) != tt.same {
				t.Errorf("hash %s vs base %s: same = %v, want %v", got, base, got == base, tt.same)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

var timeZero = time.Unix(0, 0)
