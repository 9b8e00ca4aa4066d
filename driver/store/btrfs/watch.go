package btrfs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Watch keeps every subvolume nested in a volume of volumesDir counted
// against that volume's limit, whatever inheritance list the pod that
// created it passed, until ctx ends. A volume is a subvolume linked
// directly in volumesDir (a restore or clone is one too; snapshots, kept
// elsewhere, are read-only and hold nothing nested). Each nested
// subvolume put back under its volume's limit is reported.
//
// It reconciles every volume once at start (subvolumes nested while the
// driver was down), then each subvolume created since its last pass: it
// wakes on fanotify's report of a directory created anywhere on the
// filesystem (btrfs reports subvolume and snapshot creation as one), and
// every second in any case. A pass searches only the root tree's leaves
// written since the previous pass, so it costs what changed, not how many
// subvolumes the pool holds; it handles at most maxPassLinks links and
// leaves a cursor for the next. Passes start at least minPassInterval
// apart (the first event after a quiet spell is acted on at once): the
// mark covers the whole filesystem, and directory churn anywhere on it
// must not keep the watcher at a full core.
//
// What this bounds, and what it cannot: the kernel lets any user name the
// qgroups a new subvolume joins, and Watch only acts after the create
// ioctl returns. Until its pass runs (microseconds after a fanotify
// event, up to a second when polling), the pod writes outside its limit,
// or against the neighbour it named. If the subvolume is still there,
// the pass moves what it holds, with the relation, onto the pod's volume,
// which refuses writes until it is back below its limit (see
// TestWatchBoundsInheritanceEscape for the measured overshoot). If the
// pod reflinked the data into its volume and removed the subvolume before
// the pass, nothing moves: the data stays charged to the removed
// subvolume's qgroup, in no limit group, and the volume is charged
// nothing for it, for as long as the data lives. A pass finds no link to
// say which volume it came from; it reports each such charge instead
// (OrphanedCharge, logged): a level-0 qgroup changed since the previous
// pass, of a subvolume made since Watch started and since removed and
// cleaned, in no limit group, still charged, and not one Delete removed.
// Closing this takes closing the window (below).
//
// The probe stays open, and cannot be closed from here: the kernel looks
// up each qgroup of an inheritance list before it creates anything, and
// answers ENOENT for one that does not exist, so a pod learns which
// volume ids (1/N) the pool holds. Nothing is created, so there is nothing
// to watch. Closing it (and the window) takes the kernel (a capability
// check on BTRFS_SUBVOL_QGROUP_INHERIT) or a seccomp profile on the pod
// refusing BTRFS_IOC_SUBVOL_CREATE_V2 and BTRFS_IOC_SNAP_CREATE_V2 (the
// flag sits behind a pointer a filter cannot read; the v1 ioctls, which
// take no inheritance list, still let a pod nest subvolumes).
//
// It returns nil when ctx ends, and an error only when it cannot start
// (volumesDir not on this backend's filesystem). Under full quotas nested
// subvolumes are not counted at all, and Watch returns at once.
func (b *Backend) Watch(ctx context.Context, volumesDir string, report func(Correction)) error {
	return b.watch(ctx, volumesDir, report, watchOptions{notify: true, interval: time.Second, minInterval: minPassInterval, passLimit: maxPassLinks})
}

const (
	// minPassInterval spaces passes: the fanotify mark covers the whole
	// filesystem (the host's, when the pool is on its root btrfs), so a
	// tenant's mkdir loop, or any busy directory creation, would otherwise
	// keep passes running back to back at a full core. The first event
	// after a quiet spell is acted on at once; events during the interval
	// are coalesced into one pass at its end.
	minPassInterval = 10 * time.Millisecond
	// maxPassLinks bounds the subvolume links one pass reconciles; a pass
	// that finds more leaves a cursor, and the next one (after
	// minPassInterval) continues from it.
	maxPassLinks = 1024
)

// watchOptions lets tests measure the poll alone.
type watchOptions struct {
	// notify uses fanotify to wake on directory creation.
	notify bool
	// interval is the poll period.
	interval time.Duration
	// minInterval is the least time from one pass's start to the next's.
	minInterval time.Duration
	// passLimit bounds the links one incremental pass reconciles (0: no bound).
	passLimit int
	// started, when set, is called once the first full pass is done.
	started func()
	// passed, when set, is called after each pass.
	passed func()
	// orphaned, when set, replaces the log of each orphaned charge.
	orphaned func(OrphanedCharge)
}

// logOrphanedCharge is how Watch reports an orphaned charge: an operator
// can see the escape, not undo it.
func logOrphanedCharge(volumesDir string) func(OrphanedCharge) {
	return func(o OrphanedCharge) {
		klog.InfoS("A removed subvolume's qgroup is charged and counted against no volume: a tenant may have escaped its limit "+
			"(nested with an empty inheritance list, reflinked, removed before the watcher saw it)",
			"dir", volumesDir, "qgroup", qgroupName(qgroupID(0, o.ID)), "bytes", o.Bytes)
	}
}

// volumesWatch is what one Watch knows of its volumes directory.
type volumesWatch struct {
	b      *Backend
	dir    string
	report func(Correction)
	// tree and dirID place volumesDir: a volume is a subvolume linked in
	// the directory dirID of the subvolume tree.
	tree, dirID uint64
	// baseline is the highest level-0 qgroup id when the watch started:
	// subvolume ids only grow, so a higher one is a subvolume made since.
	baseline uint64
	// orphaned reports a charge no volume holds (findOrphans); reported
	// holds the ids already reported, so each is reported once.
	orphaned func(OrphanedCharge)
	reported map[uint64]bool
}

// OrphanedCharge is the qgroup of a subvolume created since the watch
// started and gone before any pass saw it, in no limit group, still
// charged: a tenant's escape (a subvolume nested with an empty
// inheritance list, written, its data reflinked into the volume, then
// removed, all between two passes) or a subvolume made and removed
// elsewhere on the filesystem whose data is still referenced. It cannot be
// attributed to a volume: the link that said where it was is gone.
type OrphanedCharge struct {
	// ID is the subvolume's id (its qgroup is 0/ID).
	ID uint64
	// Bytes is the charge as of the last transaction commit.
	Bytes uint64
}

func (b *Backend) watch(ctx context.Context, volumesDir string, report func(Correction), opts watchOptions) error {
	if !b.simple {
		return nil
	}
	dir, err := os.OpenFile(volumesDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open volumes directory: %w", err)
	}
	defer dir.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(dir.Fd()), &st); err != nil {
		return fmt.Errorf("stat %s: %w", volumesDir, err)
	}
	tree, err := subvolumeID(dir)
	if err != nil {
		return err
	}
	if ok, err := sameFilesystem(dir, b.root); err != nil || !ok {
		return errors.Join(fmt.Errorf("%s is not on the pool's btrfs filesystem", volumesDir), err)
	}
	baseline, err := highestQgroup(b.root)
	if err != nil {
		return err
	}
	w := &volumesWatch{b: b, dir: volumesDir, report: report, tree: tree, dirID: st.Ino,
		baseline: baseline, orphaned: opts.orphaned, reported: map[uint64]bool{}}
	if w.orphaned == nil {
		w.orphaned = logOrphanedCharge(volumesDir)
	}

	wake := make(chan struct{}, 1)
	if opts.notify {
		events, err := watchDirectoryCreation(dir)
		if err != nil {
			klog.InfoS("No fanotify on the pool: nested subvolumes are found by polling only", "dir", volumesDir, "interval", opts.interval, "err", err)
		} else {
			done := make(chan struct{})
			go func() {
				defer close(done)
				readDirectoryCreation(events, wake, opts.minInterval)
			}()
			defer func() {
				_ = events.Close() // ends the reader's blocked Read
				<-done
			}()
		}
	}

	full := true
	// mark is the generation the current sweep searches from; sweepStart
	// the one taken before the sweep's first pass, adopted as the next
	// mark once a sweep (one pass, or several when passLimit cut them
	// short) has reached the end of the tree; cursor is where the next pass
	// of an unfinished sweep resumes.
	var mark, sweepStart, cursor uint64
	var lastPass time.Time
	ticker := time.NewTicker(opts.interval)
	defer ticker.Stop()
	for {
		if wait := opts.minInterval - time.Since(lastPass); !lastPass.IsZero() && wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		lastPass = time.Now()
		// Taken before the pass looks: a subvolume created while it runs
		// is in a leaf written at or after it, found by the next sweep.
		next, err := fsGeneration(b.root)
		if err == nil && cursor == 0 {
			sweepStart = next
		}
		more := false
		if err == nil {
			if full {
				err = w.fullPass()
			} else {
				cursor, err = w.passSince(mark, cursor, opts.passLimit)
				more = cursor != 0
			}
		}
		if opts.passed != nil {
			opts.passed()
		}
		if err != nil {
			// Nothing is lost: the same range is searched again.
			klog.ErrorS(err, "Reconciling nested subvolumes failed; retrying", "dir", volumesDir)
		} else if !more {
			if full && opts.started != nil {
				opts.started()
			}
			full, mark = false, sweepStart
		}
		if more && err == nil {
			select {
			case <-ctx.Done():
				return nil
			default:
				continue
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-ticker.C:
		}
	}
}

// sameFilesystem reports whether a and b are on the same btrfs filesystem
// (subvolumes have device numbers of their own, so st_dev cannot tell).
func sameFilesystem(a, b *os.File) (bool, error) {
	idA, err := filesystemID(a)
	if err != nil {
		return false, err
	}
	idB, err := filesystemID(b)
	return idA == idB, err
}

// fullPass reconciles every volume.
func (w *volumesWatch) fullPass() error {
	refs, err := rootRefs(w.b.root, w.tree)
	if err != nil {
		return fmt.Errorf("list volumes in %s: %w", w.dir, err)
	}
	var errs []error
	for _, ref := range refs {
		if ref.dirID != w.dirID {
			continue // linked elsewhere in the same subvolume (snapshots/, ...)
		}
		if err := w.b.reconcileVolume(w.dir+"/"+ref.name, w.report); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// passSince reconciles each subvolume nested in a volume whose link was
// written in transaction since or later, from the subvolume id from on,
// at most limit of them (0: all). It returns the id the next pass resumes
// from, 0 when it reached the end.
func (w *volumesWatch) passSince(since, from uint64, limit int) (uint64, error) {
	links, resume, err := linksChangedSince(w.b.root, since, from, limit)
	if err != nil {
		return from, fmt.Errorf("search new subvolumes: %w", err)
	}
	known := make(map[uint64]subvolumeLink, len(links))
	for _, link := range links {
		known[link.id] = link
	}
	volumes := make(map[uint64]volumeOf, len(links))
	var errs []error
	for _, link := range links {
		volume, err := w.volumeOf(link.id, known, volumes)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if volume.id == 0 || volume.id == link.id {
			continue // not in a volume, or a volume itself
		}
		if err := w.b.reconcileNested(w.dir+"/"+volume.name, volume.id, link.id, w.report); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return from, err
	}
	if resume == 0 {
		if err := w.findOrphans(since); err != nil {
			return from, err
		}
	}
	return resume, nil
}

// findOrphans reports each level-0 qgroup whose info was written in
// transaction since or later (so it was created or charged meanwhile), of
// a subvolume made since the watch started that is now gone from the root
// tree (removed and cleaned), with no parent qgroup and a charge, which
// then is data referenced elsewhere: what a pass never saw linked, so never put
// under a limit. Subvolumes Delete destroyed are not reported (their
// qgroups keep a charge while a snapshot holds their blocks).
func (w *volumesWatch) findOrphans(since uint64) error {
	items, err := searchTree(w.b.root, searchKey{
		treeID: quotaTreeID, maxOffset: qgroupID(1, 0) - 1,
		minTransID: since, maxTransID: ^uint64(0), minType: qgroupInfoKey, maxType: qgroupInfoKey,
	})
	if err != nil {
		return fmt.Errorf("search changed qgroups: %w", err)
	}
	for _, item := range items {
		id := item.offset
		if id <= w.baseline || w.reported[id] || len(item.data) < 16 {
			continue
		}
		// struct btrfs_qgroup_info_item: generation, rfer (le64), ...
		bytes := binary.LittleEndian.Uint64(item.data[8:])
		if w.b.deletedByDriver(id, bytes > 0) || bytes == 0 {
			continue
		}
		// Still in the root tree: linked (a pass reconciles it where it
		// is), or removed and waiting for the cleaner, when its own tree
		// is still charged; the cleaner's drop rewrites the qgroup, and a
		// later pass looks again.
		if exists, err := subvolumeExists(w.b.root, id); err != nil || exists {
			if err != nil {
				return err
			}
			continue
		}
		if parents, err := qgroupParents(w.b.root, qgroupID(0, id)); err != nil || len(parents) > 0 {
			if err != nil {
				return err
			}
			continue // counted against a limit group
		}
		w.reported[id] = true
		w.orphaned(OrphanedCharge{ID: id, Bytes: bytes})
	}
	return nil
}

// volumeOf names the volume a subvolume is in: id 0 when none.
type volumeOf struct {
	id   uint64
	name string
}

// volumeOf walks the links of the subvolume id upwards to the volume it
// is nested in (or is): the subvolume linked directly in the volumes
// directory. known holds links already read; found memoises each
// subvolume's volume, so a deep chain created in one go costs one walk.
func (w *volumesWatch) volumeOf(id uint64, known map[uint64]subvolumeLink, found map[uint64]volumeOf) (volumeOf, error) {
	var chain []uint64
	var result volumeOf
	for current := id; ; {
		if v, ok := found[current]; ok {
			result = v
			break
		}
		if len(chain) >= maxNestingWalk {
			return volumeOf{}, fmt.Errorf("subvolume %d: nested deeper than %d", id, maxNestingWalk)
		}
		link, ok := known[current]
		if !ok {
			var err error
			if link, ok, err = linkOf(w.b.root, current); err != nil {
				return volumeOf{}, err
			}
			if ok {
				known[current] = link
			}
		}
		chain = append(chain, current)
		if !ok {
			break // the top level, or unlinked meanwhile
		}
		if link.parent == w.tree && link.dirID == w.dirID {
			result = volumeOf{id: current, name: link.name}
			break
		}
		current = link.parent
	}
	for _, walked := range chain {
		found[walked] = result
	}
	return result, nil
}

// watchDirectoryCreation asks fanotify for every directory created on the
// filesystem dir is on. Subvolumes nested in a volume have fsids of their
// own, and a filesystem mark covers them all; a mount mark would not do
// (the kernel refuses directory-entry events on one). The mark must be
// placed from a directory with the filesystem's own fsid (not inside a
// subvolume: EXDEV), and needs CAP_SYS_ADMIN.
func watchDirectoryCreation(dir *os.File) (*os.File, error) {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK|unix.FAN_REPORT_DFID_NAME, unix.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("fanotify_init: %w", err)
	}
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, unix.FAN_CREATE|unix.FAN_ONDIR, int(dir.Fd()), ""); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("fanotify_mark %s: %w", dir.Name(), err)
	}
	// Non-blocking: the runtime's poller waits for it, and Close ends a Read.
	return os.NewFile(uintptr(fd), "fanotify"), nil
}

// readDirectoryCreation signals wake (without blocking: one pending wake
// covers any number of creations) for each batch of events that holds a
// directory creation or an overflow, until events is closed. Files
// created do not wake the watcher; the events only say when to look, the
// pass finds what is new. After a wake it reads nothing for pause, the
// passes' own spacing: under a flood of creations the kernel's queue
// fills and overflows (one overflow event, a wake like any other) rather
// than this reader spinning on events that would change nothing.
func readDirectoryCreation(events *os.File, wake chan<- struct{}, pause time.Duration) {
	buf := make([]byte, 64<<10)
	for {
		n, err := events.Read(buf)
		if err != nil {
			return
		}
		if batchCreatesDirectory(buf[:n]) {
			select {
			case wake <- struct{}{}:
			default:
			}
			time.Sleep(pause)
		}
	}
}

// batchCreatesDirectory reports whether a batch of fanotify events (struct
// fanotify_event_metadata: event_len u32, vers u8, reserved u8,
// metadata_len u16, mask u64, fd s32, pid s32, then info records) holds a
// directory creation or a queue overflow.
func batchCreatesDirectory(batch []byte) bool {
	for len(batch) >= 24 {
		length := int(binary.NativeEndian.Uint32(batch))
		mask := binary.NativeEndian.Uint64(batch[8:])
		if mask&(unix.FAN_ONDIR|unix.FAN_Q_OVERFLOW) != 0 {
			return true
		}
		if length < 24 || length > len(batch) {
			return true // not understood: look anyway
		}
		batch = batch[length:]
	}
	return false
}
