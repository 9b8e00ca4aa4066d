// Package btrfs is the driver's backend for pools on btrfs, all through
// ioctls (no cgo, no btrfs-progs): a volume is a subvolume whose size is a
// quota-group limit, a snapshot is a read-only snapshot of it (one instant of
// the whole volume, in constant time), a restore or clone is a writable
// snapshot of the snapshot or volume with a limit of its own.
//
// Quotas. The backend enables simple quotas (squota, Linux 6.7+) on a
// filesystem whose quotas are off. Each volume V gets a level-1 qgroup 1/V
// holding its subvolume's qgroup 0/V and the limit. Simple quotas make a
// subvolume a pod creates inside V join V's parent qgroups on creation, so
// it counts against V's limit from its first byte, unless the pod passes
// its own qgroup inheritance list to the create or snapshot ioctl, which
// any user may: then it joins the qgroups the pod names (a neighbour's
// 1/N), or none. Watch undoes that: it makes the qgroup of every subvolume
// nested in a volume a member of exactly 1/V, for all of them when it
// starts and for each new one as it appears (woken by fanotify, measured
// 0.1-2 ms after the ioctl returns; by a poll once a second where fanotify
// is unavailable). The charge moves with the relation: what the pod wrote
// meanwhile lands on V, which refuses writes until it is back under its
// limit, and a neighbour gets its charge back, provided the subvolume is
// still there when the pass runs. A pod that wins the race outright does
// escape for good: nest N in no qgroup, write into it, reflink the data
// into V (`cp --reflink=always`), remove the file and N, all before the
// pass; the extents stay charged to the removed N's qgroup, in no limit
// group, and V is charged nothing for them. No pass can find where N was
// (its link is gone); Watch reports the orphaned charge (OrphanedCharge,
// logged) so an operator sees it. What holds, measured
// (TestWatchBoundsInheritanceEscape): with fanotify, a pod writing at once
// and as fast as it can got no byte past its limit; by polling alone, up
// to a second of writes (96 MiB past a 32 MiB limit). Not closed, as the
// kernel offers no hook before the create: that window, and the probe (an
// inheritance list naming a qgroup that does not exist answers ENOENT,
// which tells a pod which volume ids exist). Simple quotas charge each
// extent to the subvolume that wrote it, for as long as the extent exists:
//
//   - a snapshot's blocks count against its volume's limit (ZFS "quota", not
//     "refquota"): data a volume overwrote or deleted while a snapshot still
//     holds it stays charged to the volume until the snapshot is deleted;
//   - a restore or clone starts with nothing charged (its data is charged to
//     the volume that wrote it) and is limited in what it writes itself.
//
// Nested subvolumes. btrfs snapshots are not recursive: a snapshot shows an
// empty directory where its source had a nested subvolume. Snapshot and
// Clone refuse such a source with a NestedSubvolumeError naming them, also
// when one appears while the snapshot is cut. Delete lifts the limits that
// would make removing nested subvolumes fail with EDQUOT.
//
// On a filesystem whose quotas an administrator already enabled in full
// (traditional) mode, the limit goes on the volume's own qgroup 0/V instead
// (referenced bytes: "refquota" semantics) and subvolumes nested by a pod are
// not counted; the driver logs this at start.
package btrfs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/atomicfile"
	"github.com/toposnap/toposnap/internal/fscopy"
)

// ErrNotBtrfs means the pool is on another filesystem.
var ErrNotBtrfs = errors.New("not a btrfs filesystem")

// Backend serves one pool directory on btrfs.
type Backend struct {
	// root is the pool directory, held open for filesystem-wide ioctls.
	root *os.File
	// simple is true when the filesystem uses simple quotas.
	simple bool
	// membership serialises the changes of nested subvolumes' qgroup
	// memberships (Watch, Reconcile) with Delete's, one subvolume at a
	// time: a watcher joining a nested subvolume to a volume's limit group
	// between Delete listing the group's members and removing it would
	// keep the group from being removed.
	membership sync.Mutex

	// deletedMu guards deleted: the subvolumes Delete destroyed, whose
	// qgroups keep a charge while a snapshot or reflink holds their blocks
	// and are no escape (see Watch's orphan report). An entry goes once
	// the watcher sees its qgroup's charge at zero.
	deletedMu sync.Mutex
	deleted   map[uint64]bool
}

// IsBtrfs reports whether dir is on btrfs.
func IsBtrfs(dir string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return st.Type == unix.BTRFS_SUPER_MAGIC, nil
}

// Open prepares the pool directory dir, enabling quotas on its filesystem
// when they are off.
func Open(dir string) (*Backend, error) {
	ok, err := IsBtrfs(dir)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%s: %w", dir, ErrNotBtrfs)
	}
	root, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open pool %s: %w", dir, err)
	}
	status, err := readQuotaStatus(root)
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("read quota status of %s: %w", dir, err)
	}
	if !status.enabled {
		// Simple quotas first (they count nested subvolumes); full ones on
		// kernels older than 6.7.
		if err := quotaCtl(root, quotaCtlEnableSimpleQuota); err != nil {
			klog.InfoS("Simple quotas unavailable, enabling full quotas", "pool", dir, "err", err)
			if err := quotaCtl(root, quotaCtlEnable); err != nil {
				root.Close()
				return nil, fmt.Errorf("enable quotas on %s: %w", dir, err)
			}
		}
		if status, err = readQuotaStatus(root); err != nil {
			root.Close()
			return nil, fmt.Errorf("read quota status of %s: %w", dir, err)
		}
	}
	b := &Backend{root: root, simple: status.simple}
	if b.simple {
		klog.InfoS("btrfs pool with simple quotas: nested subvolumes count against their volume", "pool", dir)
	} else {
		klog.InfoS("btrfs pool with full quotas: subvolumes a pod nests in its volume are NOT counted against its size", "pool", dir)
	}
	return b, nil
}

// Name is "btrfs".
func (b *Backend) Name() string { return "btrfs" }

// Enforced: sizes are enforced and Usage is cheap.
func (b *Backend) Enforced() bool { return true }

// SimpleQuotas reports whether the filesystem uses simple quotas.
func (b *Backend) SimpleQuotas() bool { return b.simple }

// Close releases the pool directory.
func (b *Backend) Close() error { return b.root.Close() }

// Create makes final an empty subvolume limited to limit bytes (0: no
// limit). Creation is one step; a crash before the limit is set leaves a
// volume the pool still calls "creating", and redoes.
func (b *Backend) Create(_, final string, limit int64) error {
	parent, err := os.Open(filepath.Dir(final))
	if err != nil {
		return fmt.Errorf("open %s: %w", filepath.Dir(final), err)
	}
	defer parent.Close()
	if err := createSubvolume(parent, filepath.Base(final)); err != nil {
		return err
	}
	// A fresh filesystem's root is world-writable; the subvolume's is not.
	// Made so through a descriptor of what was just created: a chmod by
	// path would follow a symlink swapped in at final.
	fd, err := unix.Openat(int(parent.Fd()), filepath.Base(final), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open new subvolume %s: %w", final, err)
	}
	err = unix.Fchmod(fd, 0o777)
	_ = unix.Close(fd)
	if err != nil {
		return fmt.Errorf("chmod %s: %w", final, err)
	}
	return b.setLimit(final, limit)
}

// Snapshot makes final a read-only snapshot of the volume at source: one
// instant of the whole subvolume, made and committed by one ioctl, so it is
// created in place (a read-only subvolume could not be moved anyway: its
// ".." would change). A source that is not a subvolume of this filesystem
// (a directory from before the pool was btrfs) is copied instead.
func (b *Backend) Snapshot(ctx context.Context, source, tmp, final string, progress func(copied, total int64)) error {
	done, err := b.trySnapshot(source, final, true)
	if done || err != nil {
		return err
	}
	return copyTree(ctx, source, tmp, final, false, progress)
}

// Clone makes final a writable volume of limit bytes holding source's
// data: a writable snapshot when source is a subvolume of this filesystem,
// else a new subvolume filled by copying at tmp, then moved.
func (b *Backend) Clone(ctx context.Context, source, tmp, final string, limit int64, progress func(copied, total int64)) error {
	done, err := b.trySnapshot(source, final, false)
	if err != nil {
		return err
	}
	if done {
		return b.setLimit(final, limit)
	}
	if err := b.Create("", tmp, limit); err != nil {
		return err
	}
	return copyTree(ctx, source, tmp, final, true, progress)
}

// trySnapshot snapshots source into path when source is the root of a
// subvolume of this filesystem, and reports whether it did. The check
// matters: the kernel snapshots the subvolume holding whatever directory it
// is given, so a plain directory would silently yield its whole subvolume.
//
// A source holding nested subvolumes is refused with a
// NestedSubvolumeError (the snapshot would show empty directories in their
// place), and so is one where a nested subvolume appeared while the
// snapshot was cut: see refuseHoles.
func (b *Backend) trySnapshot(source, path string, readOnly bool) (bool, error) {
	src, err := os.OpenFile(source, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false, fmt.Errorf("open snapshot source %s: %w", source, err)
	}
	defer src.Close()
	var fsStat unix.Statfs_t
	var st unix.Stat_t
	if err := unix.Fstatfs(int(src.Fd()), &fsStat); err != nil {
		return false, fmt.Errorf("statfs %s: %w", source, err)
	}
	if err := unix.Fstat(int(src.Fd()), &st); err != nil {
		return false, fmt.Errorf("stat %s: %w", source, err)
	}
	if fsStat.Type != unix.BTRFS_SUPER_MAGIC || st.Ino != firstFreeObjectID {
		return false, nil
	}
	parent, err := os.Open(filepath.Dir(path))
	if err != nil {
		return false, fmt.Errorf("open %s: %w", filepath.Dir(path), err)
	}
	defer parent.Close()
	mark, err := b.refuseNested(src, source)
	if err != nil {
		return false, err
	}
	if testHookBeforeSnapshot != nil {
		testHookBeforeSnapshot(source)
	}
	err = snapshot(src, parent, filepath.Base(path), readOnly)
	if errors.Is(err, unix.EXDEV) {
		return false, nil // another btrfs filesystem
	}
	if err != nil {
		return false, err
	}
	if err := b.refuseHoles(source, path, mark); err != nil {
		return false, err
	}
	return true, nil
}

// testHookBeforeSnapshot, when set by a test, runs between the look for
// nested subvolumes and the snapshot: where a tenant's race would strike.
var testHookBeforeSnapshot func(source string)

// refuseNested refuses a source holding nested subvolumes, and returns the
// filesystem generation read before it looked: a subvolume nested after
// the look is linked in a transaction no older than that mark.
func (b *Backend) refuseNested(src *os.File, source string) (uint64, error) {
	mark, err := fsGeneration(src)
	if err != nil {
		return 0, err
	}
	id, err := subvolumeID(src)
	if err != nil {
		return 0, err
	}
	refs, err := rootRefs(src, id)
	if err != nil {
		return 0, fmt.Errorf("list subvolumes nested in %s: %w", source, err)
	}
	if len(refs) == 0 {
		return mark, nil
	}
	nested := &NestedSubvolumeError{Source: source}
	for _, ref := range refs {
		dir, err := inodePath(src, id, ref.dirID)
		if err != nil {
			return 0, err
		}
		nested.Paths = append(nested.Paths, dir+ref.name)
	}
	return 0, nested
}

// refuseHoles closes the race refuseNested leaves open: a tenant may nest
// a subvolume between that look and the snapshot. Any such link in the
// snapshot sits in a leaf written at or after mark, so a search of the
// snapshot's tree that skips older leaves finds it, at a cost that grows
// with what changed since mark, not with the volume's size. A snapshot
// with a link is deleted and refused.
func (b *Backend) refuseHoles(source, path string, mark uint64) error {
	f, err := os.OpenFile(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open snapshot %s: %w", path, err)
	}
	id, err := subvolumeID(f)
	var links []string
	if err == nil {
		links, err = subvolumeLinksSince(f, id, mark)
	}
	f.Close()
	if err == nil && len(links) == 0 {
		return nil
	}
	checkErr := err
	if err := b.Delete(path); err != nil {
		return fmt.Errorf("remove snapshot %s with nested subvolumes: %w", path, err)
	}
	if checkErr != nil {
		return fmt.Errorf("check snapshot %s for nested subvolumes: %w", path, checkErr)
	}
	return &NestedSubvolumeError{Source: source, Paths: links}
}

// copyTree copies source into tmp by file descriptor (see fscopy) and
// renames it to final.
func copyTree(ctx context.Context, source, tmp, final string, intoExisting bool, progress func(copied, total int64)) error {
	total, err := fscopy.Size(source)
	if err != nil {
		return fmt.Errorf("measure %s: %w", source, err)
	}
	_, err = fscopy.Tree(ctx, source, tmp, fscopy.Options{
		IntoExisting: intoExisting,
		Progress: func(copied int64) {
			if progress != nil {
				progress(copied, total)
			}
		},
	})
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("move %s into place: %w", final, err)
	}
	return atomicfile.SyncDir(filepath.Dir(final))
}

// Expand sets the volume's limit to limit bytes (0: no limit).
func (b *Backend) Expand(path string, limit int64) error { return b.setLimit(path, limit) }

// setLimit puts the volume's limit on its level-1 qgroup (simple quotas:
// created here, with the volume's own qgroup as its member) or on the
// volume's qgroup itself (full quotas).
func (b *Backend) setLimit(path string, limit int64) error {
	f, id, isRoot, err := openSubvolume(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if !isRoot {
		// A directory made before the pool was btrfs: nothing to limit.
		return nil
	}
	target := qgroupID(0, id)
	if b.simple {
		target = qgroupID(1, id)
		if err := createQgroup(b.root, target); err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
		if err := assignQgroup(b.root, qgroupID(0, id), target, true); err != nil && !errors.Is(err, unix.EEXIST) {
			return err
		}
	}
	return limitQgroup(b.root, target, uint64(max(limit, 0)))
}

// Usage is the bytes charged against the volume's limit, as of the last
// transaction commit (at most the filesystem's commit interval old).
func (b *Backend) Usage(path string) (int64, error) {
	f, id, isRoot, err := openSubvolume(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if !isRoot {
		bytes, _, err := fscopy.Usage(path) // a directory made before the pool was btrfs
		return bytes, err
	}
	group := qgroupID(0, id)
	if b.simple {
		group = qgroupID(1, id)
	}
	used, _, err := qgroupReferenced(b.root, group)
	if err != nil {
		return 0, fmt.Errorf("read usage of %s: %w", path, err)
	}
	return int64(used), nil
}

// LingeringCharge is what simple quotas still charge to subvolumes that
// were deleted: blocks of a deleted volume that a snapshot of it, or a
// reflink a tenant made into another of its volumes, still holds (an extent
// stays charged to the subvolume that wrote it for as long as it exists).
// No volume's limit bounds these bytes, so the pool counts them as
// promised until they are freed. A deleted subvolume is one no directory
// links any more (no ROOT_BACKREF), whether or not the cleaner has dropped
// it yet. Under full quotas each volume is charged what it references, so
// nothing lingers: 0.
func (b *Backend) LingeringCharge() (int64, error) {
	if !b.simple {
		return 0, nil
	}
	items, err := treeSearch(b.root, quotaTreeID, 0, 0, qgroupInfoKey, qgroupInfoKey, firstFreeObjectID, qgroupID(1, 0)-1)
	if err != nil {
		return 0, fmt.Errorf("list qgroups: %w", err)
	}
	// Every linked subvolume, in one search of the root tree.
	backrefs, err := treeSearch(b.root, rootTreeID, firstFreeObjectID, ^uint64(0), rootBackrefKey, rootBackrefKey, 0, ^uint64(0))
	if err != nil {
		return 0, fmt.Errorf("list subvolumes: %w", err)
	}
	linked := make(map[uint64]bool, len(backrefs))
	for _, ref := range backrefs {
		linked[ref.objectID] = true
	}
	var total int64
	for _, item := range items {
		if len(item.data) < 16 || linked[item.offset] {
			continue
		}
		total += int64(binary.LittleEndian.Uint64(item.data[8:]))
	}
	return total, nil
}

// Delete removes the volume or snapshot at path with every subvolume nested
// in it, deepest first, and its level-1 qgroup. A path that is not a
// subvolume (partial work) is removed as a directory tree (fscopy.RemoveTree).
func (b *Backend) Delete(path string) error {
	f, err := os.OpenFile(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
		return os.Remove(path)
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Ino != firstFreeObjectID {
		// Partial work, or a tenant's tree: its depth and flags are theirs,
		// so the removal holds a bounded number of descriptors.
		f.Close()
		return fscopy.RemoveTree(path)
	}
	defer f.Close()
	id, err := subvolumeID(f)
	if err != nil {
		return err
	}
	if err := b.deleteSubvolumeTree(f, id); err != nil {
		return fmt.Errorf("delete %s: %w", path, err)
	}
	if b.simple {
		b.removeVolumeQgroup(id)
	}
	return nil
}

// deleteSubvolumeTree deletes the subvolume id, held open as volume, and
// every subvolume nested in it, at any depth: it lists the whole tree
// breadth first and deletes it in reverse, so children always go before
// their parents, with no recursion a tenant's nesting could exhaust. A
// subvolume created inside meanwhile makes a parent's delete fail with
// ENOTEMPTY; the tree is then listed again.
//
// Removing a nested subvolume's link reserves metadata against the quota
// groups of the subvolume holding it, so a tenant that filled its volume
// (or joined a nested subvolume to a full qgroup) would make the delete
// fail with EDQUOT forever: the limits are lifted first (releaseLimits).
// A tenant owns the subvolumes it nests and may make one read-only (then
// removing what is linked in it fails with EROFS), a privileged one may
// make a subvolume's root or the directory holding it immutable (EPERM):
// a destroy refused so has those flags cleared (unlockForDestroy) and is
// retried. Clearing only on refusal costs nothing for the usual tree.
//
// The membership lock is taken per step, not for the whole tree: a tenant's
// huge tree must not stall every reconcile. What it guards is a qgroup's
// list-then-change sequences (releaseLimits' per subvolume, and
// removeVolumeQgroup's list-detach-remove, which a watcher joining a member
// in between would make fail); destroying a subvolume changes no relation.
func (b *Backend) deleteSubvolumeTree(volume *os.File, id uint64) error {
	for attempt := 0; ; attempt++ {
		order := []uint64{id}
		for i := 0; i < len(order); i++ {
			children, err := childSubvolumes(b.root, order[i])
			if err != nil {
				return err
			}
			order = append(order, children...)
		}
		if err := b.releaseLimits(order); err != nil {
			return err
		}
		var err error
		for i := len(order) - 1; i >= 0; i-- {
			if err = b.destroyUnlocking(volume, id, order[i]); err != nil {
				break
			}
			b.noteDeleted(order[i])
			if b.simple && i > 0 {
				b.removeVolumeQgroup(order[i]) // a nested subvolume's own, if it had one
			}
		}
		if errors.Is(err, unix.ENOTEMPTY) && attempt < 5 {
			continue
		}
		return err
	}
}

// noteDeleted records that Delete destroyed the subvolume id.
func (b *Backend) noteDeleted(id uint64) {
	b.deletedMu.Lock()
	defer b.deletedMu.Unlock()
	if b.deleted == nil {
		b.deleted = make(map[uint64]bool)
	}
	b.deleted[id] = true
}

// deletedByDriver reports whether Delete destroyed the subvolume id, and
// forgets it when its qgroup's charge is gone.
func (b *Backend) deletedByDriver(id uint64, charged bool) bool {
	b.deletedMu.Lock()
	defer b.deletedMu.Unlock()
	deleted := b.deleted[id]
	if deleted && !charged {
		delete(b.deleted, id)
	}
	return deleted
}

// maxUnlocks bounds the retries of a destroy refused for a flag: a tenant
// still in its volume could set the flag again after each clearing.
const maxUnlocks = 3

// destroyUnlocking destroys the subvolume id of the tree of the volume
// (subvolume volumeID, held open as volume); one gone already is fine. A
// destroy refused with EROFS or EPERM is retried after unlockForDestroy.
func (b *Backend) destroyUnlocking(volume *os.File, volumeID, id uint64) error {
	for unlocks := 0; ; unlocks++ {
		err := destroySubvolume(b.root, id)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if (!errors.Is(err, unix.EROFS) && !errors.Is(err, unix.EPERM)) || unlocks == maxUnlocks {
			return err
		}
		if unlockErr := b.unlockForDestroy(volume, volumeID, id); unlockErr != nil {
			return errors.Join(err, unlockErr)
		}
	}
}

// unlockForDestroy clears what makes destroying the subvolume id (nested
// in the volume, or the volume itself) fail: the read-only flag of the
// subvolume holding its link (EROFS) and FS_IMMUTABLE_FL/FS_APPEND_FL on
// the directory holding the link (EPERM); and on id itself its read-only
// flag, which would refuse clearing its root's immutable flag, and that
// flag (EPERM). The volume's own parent is the pool's, not the tenant's,
// and is left alone. Every subvolume is opened beneath the volume's
// descriptor without following symlinks (openNested), by the names its
// links hold, not by a path a tenant could swap.
func (b *Backend) unlockForDestroy(volume *os.File, volumeID, id uint64) error {
	if id != volumeID {
		link, linked, err := linkOf(b.root, id)
		if err != nil || !linked {
			return err // unlinked meanwhile: the retry answers ENOENT
		}
		parent, err := openNested(b.root, volume, volumeID, link.parent)
		if err != nil {
			return err
		}
		defer closeFd(parent)
		if err := clearReadOnly(parent); err != nil {
			return err
		}
		dir, err := inodePath(b.root, link.parent, link.dirID)
		if err != nil {
			return err
		}
		holder := parent
		if dir != "" {
			if holder, err = openBeneath(parent, dir); err != nil {
				return fmt.Errorf("open directory holding subvolume %d: %w", id, err)
			}
			defer closeFd(holder)
		}
		if err := clearImmutable(holder); err != nil {
			return err
		}
	}
	self, err := openNested(b.root, volume, volumeID, id)
	if err != nil {
		return err
	}
	defer closeFd(self)
	if err := clearReadOnly(self); err != nil {
		return err
	}
	return clearImmutable(self)
}

// openNested opens the root directory of the subvolume id, nested at any
// depth in the volume (subvolume volumeID, held open as volume), by
// following its links from the volume down, one subvolume at a time,
// beneath the volume's descriptor without following symlinks; and checks
// that what it opened is that subvolume's root.
func openNested(fsFile, volume *os.File, volumeID, id uint64) (int, error) {
	var chain []subvolumeLink
	for current := id; current != volumeID; {
		if len(chain) >= maxNestingWalk {
			return -1, fmt.Errorf("subvolume %d: nested deeper than %d", id, maxNestingWalk)
		}
		link, linked, err := linkOf(fsFile, current)
		if err != nil {
			return -1, err
		}
		if !linked {
			return -1, fmt.Errorf("subvolume %d is not nested in subvolume %d", id, volumeID)
		}
		chain = append(chain, link)
		current = link.parent
	}
	fd, err := openBeneath(int(volume.Fd()), ".")
	if err != nil {
		return -1, fmt.Errorf("reopen volume %d: %w", volumeID, err)
	}
	for i := len(chain) - 1; i >= 0; i-- {
		dir, err := inodePath(fsFile, chain[i].parent, chain[i].dirID)
		if err == nil {
			var next int
			next, err = openBeneath(fd, dir+chain[i].name)
			_ = unix.Close(fd)
			fd = next
		}
		if err != nil {
			_ = unix.Close(fd)
			return -1, fmt.Errorf("open subvolume %d: %w", chain[i].id, err)
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Ino != firstFreeObjectID {
		_ = unix.Close(fd)
		return -1, errors.Join(fmt.Errorf("open subvolume %d: not a subvolume root", id), err)
	}
	args := inoLookupArgs{objectID: firstFreeObjectID}
	if err := ioctl(uintptr(fd), iocInoLookup, unsafe.Pointer(&args)); err != nil || args.treeID != id {
		_ = unix.Close(fd)
		return -1, errors.Join(fmt.Errorf("open subvolume %d: found subvolume %d", id, args.treeID), err)
	}
	return fd, nil
}

// openBeneath opens the directory rel beneath dirfd, refusing symlinks,
// magic links, mount crossings and any escape from dirfd.
func openBeneath(dirfd int, rel string) (int, error) {
	return unix.Openat2(dirfd, rel, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
}

// closeFd closes a directory descriptor opened for reading: nothing to report.
func closeFd(fd int) { _ = unix.Close(fd) }

// clearReadOnly makes the subvolume whose root directory fd is writable.
func clearReadOnly(fd int) error {
	flags, err := subvolumeFlags(fd)
	if err != nil || flags&subvolReadOnly == 0 {
		return err
	}
	return setSubvolumeFlags(fd, flags&^subvolReadOnly)
}

// FS_IMMUTABLE_FL and FS_APPEND_FL (linux/fs.h).
const (
	fsImmutable = 0x10
	fsAppend    = 0x20
)

// clearImmutable clears FS_IMMUTABLE_FL and FS_APPEND_FL on the directory
// fd (CAP_LINUX_IMMUTABLE, which the driver holds as root).
func clearImmutable(fd int) error {
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		return fmt.Errorf("read inode flags: %w", err)
	}
	if flags&(fsImmutable|fsAppend) == 0 {
		return nil
	}
	if err := unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags&^(fsImmutable|fsAppend))); err != nil {
		return fmt.Errorf("clear immutable and append-only flags: %w", err)
	}
	return nil
}

// releaseLimits lifts what could make deleting the subvolume tree (the
// volume first, then what is nested in it) fail with EDQUOT: the volume's
// own limit (its level-1 qgroup's, or its qgroup's under full quotas), and
// every membership of a nested subvolume's qgroup in a qgroup other than
// the volume's, which is dropped rather than lifted: it is a neighbour's,
// joined through an inheritance list, and its limit is not ours to lift.
// Dropping it also returns the charge to the neighbour. Each step is
// idempotent, so a delete that failed midway can simply be repeated.
func (b *Backend) releaseLimits(tree []uint64) error {
	volume := tree[0]
	own := []uint64{qgroupID(0, volume)}
	if b.simple {
		own = append(own, qgroupID(1, volume))
	}
	for _, group := range own {
		if err := limitQgroup(b.root, group, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
	for _, nested := range tree[1:] {
		if err := b.leaveForeignQgroups(volume, nested); err != nil {
			return err
		}
	}
	return nil
}

// leaveForeignQgroups drops every membership of the nested subvolume's
// qgroup in a qgroup other than the volume's limit group.
func (b *Backend) leaveForeignQgroups(volume, nested uint64) error {
	b.membership.Lock()
	defer b.membership.Unlock()
	parents, err := qgroupParents(b.root, qgroupID(0, nested))
	if err != nil {
		return err
	}
	for _, parent := range parents {
		if parent == qgroupID(1, volume) {
			continue
		}
		if err := assignQgroup(b.root, qgroupID(0, nested), parent, false); err != nil && !errors.Is(err, unix.ENOENT) {
			return err
		}
	}
	return nil
}

// removeVolumeQgroup drops the level-1 qgroup 1/id after its members. The
// deleted subvolumes' own qgroups stay with the kernel until the blocks
// charged to them are freed (simple quotas keep a charge while a snapshot
// holds the blocks). Failures are logged: a leftover qgroup holds no data.
func (b *Backend) removeVolumeQgroup(id uint64) {
	b.membership.Lock()
	defer b.membership.Unlock()
	group := qgroupID(1, id)
	children, err := qgroupChildren(b.root, group)
	if err != nil {
		klog.V(2).InfoS("Cannot list qgroup members", "qgroup", qgroupName(group), "err", err)
		return
	}
	for _, child := range children {
		if err := assignQgroup(b.root, child, group, false); err != nil && !errors.Is(err, unix.ENOENT) {
			klog.V(2).InfoS("Cannot detach qgroup", "qgroup", qgroupName(child), "err", err)
		}
	}
	if err := removeQgroup(b.root, group); err != nil && !errors.Is(err, unix.ENOENT) {
		klog.InfoS("Leaving an empty qgroup behind", "qgroup", qgroupName(group), "err", err)
	}
}

// openSubvolume opens the volume directory at path, not following a
// symlink, and reports whether it is a subvolume's root directory and, if
// so, the subvolume's id (0 for a plain directory: one made before the pool
// was btrfs). The caller closes f; on an error nothing is left open.
func openSubvolume(path string) (f *os.File, id uint64, isRoot bool, err error) {
	f, err = os.OpenFile(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, 0, false, fmt.Errorf("open volume %s: %w", path, err)
	}
	if isRoot, err = isSubvolumeRoot(f); err == nil && isRoot {
		id, err = subvolumeID(f)
	}
	if err != nil {
		_ = f.Close()
		return nil, 0, false, err
	}
	return f, id, isRoot, nil
}

// isSubvolumeRoot reports whether f is a subvolume's root directory.
func isSubvolumeRoot(f *os.File) (bool, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return false, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return st.Ino == firstFreeObjectID, nil
}

// WaitCleaned waits until the cleaner has dropped the subvolume id (its
// root item gone), or ctx ends. Tests use it to show nothing is left.
func (b *Backend) WaitCleaned(ctx context.Context, id uint64) error {
	for {
		exists, err := subvolumeExists(b.root, id)
		if err != nil || !exists {
			return err
		}
		_ = unix.Syncfs(int(b.root.Fd())) // commits, which wakes the cleaner
		select {
		case <-ctx.Done():
			return fmt.Errorf("subvolume %d still exists: %w", id, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// SubvolumeID returns the id of the subvolume holding path.
func SubvolumeID(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return subvolumeID(f)
}

// CreateSubvolume creates a plain subvolume at path, as a pod can inside its
// volume (tests use it to nest subvolumes).
func CreateSubvolume(path string) error {
	parent, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer parent.Close()
	return createSubvolume(parent, filepath.Base(path))
}

// SubvolumeExists reports whether the subvolume id is still in the root
// tree (deleted ones stay until the cleaner drops them).
func (b *Backend) SubvolumeExists(id uint64) (bool, error) { return subvolumeExists(b.root, id) }

// Children lists the subvolumes nested directly in subvolume id.
func (b *Backend) Children(id uint64) ([]uint64, error) { return childSubvolumes(b.root, id) }

// QgroupExists reports whether the level-1 qgroup of volume id exists.
func (b *Backend) QgroupExists(id uint64) (bool, error) {
	items, err := treeSearch(b.root, quotaTreeID, 0, 0, qgroupInfoKey, qgroupInfoKey, qgroupID(1, id), qgroupID(1, id))
	return len(items) > 0, err
}
