package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/klog/v2"
)

// LookupSnapshot returns a snapshot's metadata or ErrNotFound.
// Metadata the pool did not write is refused with ErrForeign.
func (p *Pool) LookupSnapshot(id string) (Snapshot, error) {
	return readMeta[Snapshot](p, id)
}

// ListSnapshots returns the pool's snapshots sorted by ID, leaving out (and
// logging) metadata the pool did not write.
func (p *Pool) ListSnapshots() ([]Snapshot, error) {
	return listMeta[Snapshot](p, KindSnapshot)
}

// CreateSnapshot cuts a snapshot of the volume source (a volume of this
// pool) named name. It returns at once: either the finished snapshot, or
// one in StateCreating whose copy runs in the background; call again (or
// WaitSnapshot) to see it finish. A copy that failed or was interrupted by a
// crash is restarted from scratch. On btrfs the snapshot is one instant of
// the whole volume and is ready by the time the job is looked at.
//
// The jobs mutex is held only to look up and register the job: measuring
// and copying the source (O(data)) happen in the job, so a large volume
// never stalls the snapshots of the rest of the pool.
func (p *Pool) CreateSnapshot(name string, source Volume) (Snapshot, error) {
	id := p.SnapshotID(name)
	existing, err := p.LookupSnapshot(id)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Snapshot{}, err
	}
	if err == nil && existing.State == StateDeleting {
		existing = Snapshot{} // its name is free again; the create redoes it
	}
	if existing.ID != "" && existing.SourceVolumeID != source.ID {
		return Snapshot{}, fmt.Errorf("snapshot %q was cut from volume %s, not %s: %w",
			name, existing.SourceVolumeID, source.ID, ErrExists)
	}
	if existing.Ready() {
		return existing, nil
	}
	if j := p.runningJob(id); j != nil {
		return j.answer.(Snapshot), nil
	}
	lock, err := p.tryLock(id)
	if errors.Is(err, ErrInFlight) && existing.ID != "" {
		return existing, nil // another process (or a job just ending) has it
	}
	if err != nil {
		return Snapshot{}, err
	}
	// Re-read under the lock: a job may have finished since the first look.
	if again, err := p.LookupSnapshot(id); err == nil && again.Ready() {
		lock.unlock()
		return again, nil
	}
	// Hold the source volume for the whole copy, so it cannot be deleted under it.
	sourceRef := &Source{Pool: p, VolumeID: source.ID, Layout: source.Layout}
	lease, err := sourceRef.lease()
	if err != nil {
		lock.unlock()
		return Snapshot{}, err
	}
	snap := Snapshot{
		ID: id, Name: name, SourceVolumeID: source.ID, SizeBytes: source.CapacityBytes,
		Segment: p.cfg.Segment, State: StateCreating, CreatedAt: time.Now().UTC(), Block: source.Block,
		Layout: source.Layout,
	}
	if err := p.reserveSnapshot(snap); err != nil {
		lease.unlock()
		lock.unlock()
		return Snapshot{}, err
	}
	j := p.startJob(id, snap)
	go p.runSnapshot(j, lock, lease, snap, sourceRef)
	return snap, nil
}

// reserveSnapshot records a new snapshot's metadata. A snapshot of a block
// volume is first counted against the pool's capacity, under the pool
// lock as a volume is: block volumes have no filesystem limit (see
// sizeImage), so what each of their snapshots pins as the device is
// overwritten, up to the image's size, is bounded by nothing else. A
// snapshot of a filesystem volume is bounded by its volume's limit.
func (p *Pool) reserveSnapshot(snap Snapshot) error {
	if !snap.Block {
		return p.writeMeta(snap.ID, snap)
	}
	return p.withPoolLock(func() error {
		if err := p.fits(snap.ID, snap.SizeBytes, 0); err != nil {
			return fmt.Errorf("pool %s cannot hold snapshot %s (%q) of block volume %s, which may pin up to %d bytes: %w",
				p.cfg.Dir, snap.ID, snap.Name, snap.SourceVolumeID, snap.SizeBytes, err)
		}
		return p.writeMeta(snap.ID, snap)
	})
}

// runSnapshot has the backend leave the snapshot, complete, in snapshots/
// and only then marks the metadata ready.
func (p *Pool) runSnapshot(j *job, lock, lease *objectLock, snap Snapshot, source *Source) {
	start := time.Now()
	err := p.cutSnapshot(j, snap, source)
	if err != nil {
		_ = p.removeTemp(snap.ID)
		if j.ctx.Err() == nil {
			snap.Failure = err.Error()
			_ = p.writeMeta(snap.ID, snap)
		}
		klog.ErrorS(err, "Snapshot failed", "snapshot", snap.ID, "name", snap.Name)
	} else {
		klog.InfoS("Snapshot ready", "snapshot", snap.ID, "name", snap.Name, "backend", p.backend.Name(),
			"bytes", j.copied.Load(), "duration", time.Since(start))
	}
	// Unlock before announcing the end, so whoever waited can act on the snapshot at once.
	lease.unlock()
	lock.unlock()
	p.endJob(j, err)
}

func (p *Pool) cutSnapshot(j *job, snap Snapshot, source *Source) error {
	// Clear what an earlier attempt left.
	if err := p.removeObjectFiles("snapshots", snap.ID); err != nil {
		return err
	}
	srcHeld, sourcePath, err := source.hold()
	if err != nil {
		return err
	}
	defer srcHeld.close()
	held, err := p.holdDirs("tmp", "snapshots")
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", snap.ID, err)
	}
	defer held.close()
	// Durable once in place: btrfs commits the snapshot, the copier ends
	// with syncfs before its rename.
	tmp, final := held.path("tmp", p.tempName(snap.ID)), held.path("snapshots", snap.ID)
	if err := p.backend.Snapshot(j.ctx, sourcePath, tmp, final, j.progress); err != nil {
		return fmt.Errorf("snapshot volume %s: %w", snap.SourceVolumeID, err)
	}
	snap.State, snap.Failure = StateReady, ""
	return p.writeMeta(snap.ID, snap)
}

// WaitSnapshot waits until a background copy of id ends or ctx is done,
// and returns the snapshot's metadata then.
func (p *Pool) WaitSnapshot(ctx context.Context, id string) (Snapshot, error) {
	if j := p.runningJob(id); j != nil {
		select {
		case <-j.done:
			if j.err != nil {
				return Snapshot{}, j.err
			}
		case <-ctx.Done():
		}
	}
	return p.LookupSnapshot(id)
}

// DeleteSnapshot cancels a running copy, then removes the snapshot: marked
// deleting first (a crash never leaves a ready snapshot with half its
// files), then its files and metadata. Deleting a snapshot that does not
// exist succeeds; one that a restore is being copied from is not deleted
// (ErrInFlight).
func (p *Pool) DeleteSnapshot(ctx context.Context, id string) error {
	if err := p.stopJob(ctx, id); err != nil {
		return fmt.Errorf("wait for snapshot copy %s to stop: %w", id, err)
	}
	lock, err := p.tryLock(id)
	if err != nil {
		return err
	}
	defer lock.unlock()
	lease, err := p.deleteLease(id)
	if err != nil {
		return err
	}
	defer lease.unlock()
	snap, err := p.LookupSnapshot(id)
	switch {
	case errors.Is(err, ErrNotFound):
	case err != nil:
		return err
	case snap.State != StateDeleting:
		snap.State = StateDeleting
		if err := p.writeMeta(id, snap); err != nil {
			return err
		}
	}
	if err := p.removeObjectFiles("snapshots", id); err != nil {
		return err
	}
	return p.removeMeta(id)
}
