// Package treetest builds directory trees that exercise everything a copy
// must keep (random contents, holes, symlinks, hard links, odd modes and
// owners, empty directories) and describes trees so two can be compared.
// It is shared by the tests and benchmarks of fscopy, the store and the driver.
package treetest

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Tricky writes the integrity fixture under root (which must exist).
func Tricky(root string) error {
	steps := []func() error{
		func() error { return os.MkdirAll(filepath.Join(root, "data", "nested", "deeper"), 0o755) },
		func() error { return os.Mkdir(filepath.Join(root, "empty"), 0o700) },
		func() error { return randomFile(filepath.Join(root, "data", "random.bin"), 3<<20+17, 0o644) },
		func() error {
			return randomFile(filepath.Join(root, "data", "nested", "deeper", "small.txt"), 100, 0o600)
		},
		func() error { return randomFile(filepath.Join(root, "data", "empty-file"), 0, 0o444) },
		func() error { return sparseFile(filepath.Join(root, "data", "sparse.img")) },
		func() error {
			return os.Symlink("nested/deeper/small.txt", filepath.Join(root, "data", "link-to-small"))
		},
		func() error { return os.Symlink("/does/not/exist", filepath.Join(root, "dangling")) },
		func() error {
			return os.Link(filepath.Join(root, "data", "random.bin"), filepath.Join(root, "hardlink.bin"))
		},
		func() error { return randomFile(filepath.Join(root, "setuid-tool"), 4096, 0o755) },
		func() error { return unix.Chmod(filepath.Join(root, "setuid-tool"), 0o4751) },
		func() error { return unix.Chmod(filepath.Join(root, "empty"), 0o1777) },
		func() error { return unix.Mkfifo(filepath.Join(root, "fifo"), 0o640) },
		func() error { return os.Lchown(filepath.Join(root, "data", "nested"), 1234, 5678) },
		func() error { return os.Lchown(filepath.Join(root, "data", "link-to-small"), 4321, 8765) },
		func() error {
			old := time.Date(2001, 2, 3, 4, 5, 6, 7000, time.UTC)
			return os.Chtimes(filepath.Join(root, "data", "nested", "deeper", "small.txt"), old, old)
		},
	}
	for i, step := range steps {
		if err := step(); err != nil {
			return fmt.Errorf("build fixture step %d: %w", i, err)
		}
	}
	return nil
}

// Bench writes the benchmark tree: one large file of largeBytes and
// smallFiles files of 1–8 KiB spread over 100 directories.
func Bench(root string, largeBytes int64, smallFiles int) error {
	if err := randomFile(filepath.Join(root, "large.bin"), largeBytes, 0o644); err != nil {
		return err
	}
	for i := range smallFiles {
		dir := filepath.Join(root, "small", fmt.Sprintf("d%02d", i%100))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := randomFile(filepath.Join(dir, fmt.Sprintf("f%05d", i)), int64(1024+(i*97)%7168), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func randomFile(path string, size int64, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Chmod(path, mode)
}

// sparseFile is 64 MiB long with data only at 1 MiB and at the very end.
func sparseFile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	chunk := make([]byte, 8192)
	if _, err := rand.Read(chunk); err != nil {
		return err
	}
	if _, err := f.WriteAt(chunk, 1<<20); err != nil {
		return err
	}
	if _, err := f.WriteAt(chunk[:10], 64<<20-10); err != nil {
		return err
	}
	return nil
}

// Entry describes one path of a tree.
type Entry struct {
	Type     string
	Mode     uint32
	UID, GID uint32
	Size     int64
	MtimeNs  int64 // directories' and files' mtime; symlinks' too
	SHA256   string
	Target   string
	Blocks   int64  // allocated 512-byte blocks, for hole checks
	LinkID   string // first path sharing this inode (hard links)
}

// Describe walks root and returns its entries by relative path.
func Describe(root string) (map[string]Entry, error) {
	out := map[string]Entry{}
	inodes := map[uint64]string{}
	err := filepath.WalkDir(root, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return err
		}
		e := Entry{Mode: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid, MtimeNs: st.Mtim.Nano(), Blocks: st.Blocks}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			e.Type = "dir"
			if rel == "." {
				e.MtimeNs = 0 // the root is created by the copier's caller
			}
		case unix.S_IFREG:
			e.Type, e.Size = "file", st.Size
			if first, ok := inodes[st.Ino]; ok && st.Nlink > 1 {
				e.LinkID = first
			} else {
				inodes[st.Ino] = rel
			}
			sum, err := hashFile(path)
			if err != nil {
				return err
			}
			e.SHA256 = sum
		case unix.S_IFLNK:
			e.Type = "symlink"
			e.Mode = 0
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			e.Target = target
		case unix.S_IFIFO:
			e.Type = "fifo"
		default:
			e.Type = fmt.Sprintf("other(%o)", st.Mode&unix.S_IFMT)
		}
		out[rel] = e
		return nil
	})
	return out, err
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Diff compares two descriptions and lists every difference; holes must
// stay holes (a copy may allocate at most 64 KiB more than the original).
// ignoreRootMode skips the root directory's mode and owner.
func Diff(want, got map[string]Entry, ignoreRootMode bool) []string {
	var diffs []string
	for path, w := range want {
		g, ok := got[path]
		if !ok {
			diffs = append(diffs, "missing "+path)
			continue
		}
		if path == "." && ignoreRootMode {
			w.Mode, w.UID, w.GID, g.Mode, g.UID, g.GID = 0, 0, 0, 0, 0, 0
		}
		wantBlocks, gotBlocks := w.Blocks, g.Blocks
		w.Blocks, g.Blocks = 0, 0
		if w.Type == "dir" {
			w.Size, g.Size = 0, 0
		}
		if w != g {
			diffs = append(diffs, fmt.Sprintf("%s: want %+v, got %+v", path, w, g))
		}
		if w.Type == "file" && gotBlocks > wantBlocks+128 {
			diffs = append(diffs, fmt.Sprintf("%s: holes filled: %d blocks, original %d", path, gotBlocks, wantBlocks))
		}
	}
	for path := range got {
		if _, ok := want[path]; !ok {
			diffs = append(diffs, "unexpected "+path)
		}
	}
	sort.Strings(diffs)
	return diffs
}

// Summary is a one-line description for failure messages.
func Summary(entries map[string]Entry) string {
	paths := make([]string, 0, len(entries))
	for p := range entries {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	return strings.Join(paths, " ")
}
