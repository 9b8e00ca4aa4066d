package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/klog/v2"
)

// LookupSnapshot returns a snapshot's metadata or ErrNotFound.
func (p *Pool) LookupSnapshot(id string) (Snapshot, error) {
	return readMeta[Snapshot](p.metaPath(id))
}

// ListSnapshots returns the pool's snapshots sorted by ID.
func (p *Pool) ListSnapshots() ([]Snapshot, error) {
	ids, err := p.metaIDs(KindSnapshot)
	if err != nil {
		return nil, err
	}
	snapshots := make([]Snapshot, 0, len(ids))
	for _, id := range ids {
		snap, err := p.LookupSnapshot(id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		snapshots = append(snapshots, snap)
	}
	return snapshots, nil
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
	sourceRef := &Source{Pool: p, VolumeID: source.ID}
	lease, err := sourceRef.lease()
	if err != nil {
		lock.unlock()
		return Snapshot{}, err
	}
	snap := Snapshot{
		ID: id, Name: name, SourceVolumeID: source.ID, SizeBytes: source.CapacityBytes,
		Segment: p.cfg.Segment, State: StateCreating, CreatedAt: time.Now().UTC(), Block: source.Block,
	}
	if err := p.writeMeta(id, snap); err != nil {
		lease.unlock()
		lock.unlock()
		return Snapshot{}, err
	}
	j := p.startJob(id, snap)
	go p.runSnapshot(j, lock, lease, snap, sourceRef.dir())
	return snap, nil
}

// runSnapshot has the backend leave the snapshot, complete, in snapshots/
// and only then marks the metadata ready.
func (p *Pool) runSnapshot(j *job, lock, lease *objectLock, snap Snapshot, sourceDir string) {
	start := time.Now()
	err := p.cutSnapshot(j, snap, sourceDir)
	if err != nil {
		_ = p.backend.Delete(p.tempPath(snap.ID))
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

func (p *Pool) cutSnapshot(j *job, snap Snapshot, sourceDir string) error {
	tmp := p.tempPath(snap.ID)
	if err := p.backend.Delete(tmp); err != nil {
		return fmt.Errorf("clear temporary %s: %w", tmp, err)
	}
	final := p.SnapshotDir(snap.ID)
	if err := p.backend.Delete(final); err != nil {
		return fmt.Errorf("clear incomplete snapshot %s: %w", final, err)
	}
	// Durable once in place: btrfs commits the snapshot, the copier ends
	// with syncfs before its rename.
	if err := p.backend.Snapshot(j.ctx, sourceDir, tmp, final, j.progress); err != nil {
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
	for _, dir := range []string{p.tempPath(id), p.SnapshotDir(id)} {
		if err := p.backend.Delete(dir); err != nil {
			return fmt.Errorf("remove %s: %w", dir, err)
		}
	}
	return p.removeMeta(id)
}
