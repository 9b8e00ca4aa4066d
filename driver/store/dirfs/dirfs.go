// Package dirfs is the driver's backend for pools on any filesystem (and
// for zone pools, which are shared): a volume is a plain directory, and
// snapshots, restores and clones are copies walked by file descriptor
// (internal/fscopy), so the tenant who owns a volume cannot make the
// driver read or write outside it, or block on a FIFO. Sizes are accounted
// by the pool, not enforced: a pod can write past its volume's size.
package dirfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/toposnap/toposnap/internal/atomicfile"
	"github.com/toposnap/toposnap/internal/fscopy"
)

// Backend serves directory pools. It holds no state.
type Backend struct{}

// Name is "dir".
func (Backend) Name() string { return "dir" }

// Enforced: no, sizes are only accounted, and Usage walks the tree.
func (Backend) Enforced() bool { return false }

// Create makes final an empty, world-writable directory, like a fresh
// filesystem's root; the limit is not enforced.
func (Backend) Create(_, final string, _ int64) error {
	if err := os.Mkdir(final, 0o777); err != nil {
		return fmt.Errorf("create volume directory: %w", err)
	}
	// Mkdir applies the umask. Chmod through a descriptor opened without
	// following a symlink: one swapped in for the new directory must not
	// make a file elsewhere world-writable.
	dir, err := os.OpenFile(final, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open volume directory: %w", err)
	}
	defer dir.Close()
	if err := dir.Chmod(0o777); err != nil {
		return fmt.Errorf("chmod volume directory: %w", err)
	}
	return atomicfile.SyncDir(filepath.Dir(final))
}

// Snapshot copies the volume at source into tmp and renames it to final.
// The copy is read-only by convention: nothing publishes a snapshot.
func (Backend) Snapshot(ctx context.Context, source, tmp, final string, progress func(copied, total int64)) error {
	return copyTree(ctx, source, tmp, final, progress)
}

// Clone copies the snapshot or volume at source into tmp and renames it to
// final.
func (Backend) Clone(ctx context.Context, source, tmp, final string, _ int64, progress func(copied, total int64)) error {
	return copyTree(ctx, source, tmp, final, progress)
}

func copyTree(ctx context.Context, source, tmp, final string, progress func(copied, total int64)) error {
	total, err := fscopy.Size(source)
	if err != nil {
		return fmt.Errorf("measure %s: %w", source, err)
	}
	if progress != nil {
		progress(0, total)
	}
	// Tree ends with syncfs: every copied byte is durable before the rename.
	_, err = fscopy.Tree(ctx, source, tmp, fscopy.Options{Progress: func(copied int64) {
		if progress != nil {
			progress(copied, total)
		}
	}})
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("move %s into place: %w", final, err)
	}
	return atomicfile.SyncDir(filepath.Dir(final))
}

// Expand has nothing to do: the directory grows with its pool.
func (Backend) Expand(string, int64) error { return nil }

// Delete removes the tree at path, whatever its tenant left in it: with
// fscopy.RemoveTree, which never follows a symlink (one at path itself is
// unlinked), holds a bounded number of descriptors however deep the tree
// (os.RemoveAll holds one per level, and fails forever on a chain deeper
// than the open-file limit) and memory that does not grow with the names
// on the way down, and clears the immutable and append-only flags that
// would make it fail with EPERM. A tree its tenant keeps writing into
// (still mounted) fails with fscopy.ErrContended rather than run forever;
// the store retries it. Backend.Delete takes no context, so a writer that
// only ever adds new names is not cut short here (RemoveTreeContext
// would, given one).
func (Backend) Delete(path string) error {
	return fscopy.RemoveTree(path)
}

// Usage walks the tree and sums the bytes allocated to it.
func (Backend) Usage(path string) (int64, error) {
	bytes, _, err := fscopy.Usage(path)
	return bytes, err
}
