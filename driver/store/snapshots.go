package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/atomicfile"
	"github.com/toposnap/toposnap/internal/fscopy"
)

// snapshotJob is a copy running in the background. It holds the snapshot's
// object lock for its whole life, so no other goroutine or process can touch
// the snapshot until it ends.
type snapshotJob struct {
	snap   Snapshot // as first written; answers repeated calls meanwhile
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	copied atomic.Int64
	total  atomic.Int64 // measured by the job itself, 0 until then
	err    error        // set before done closes
}

// Progress is how far a snapshot's copy has got.
type Progress struct {
	CopiedBytes, TotalBytes int64
}

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

// SnapshotProgress reports a running copy's progress, if one runs here.
func (p *Pool) SnapshotProgress(id string) (Progress, bool) {
	p.jobsMu.Lock()
	defer p.jobsMu.Unlock()
	job, ok := p.jobs[id]
	if !ok {
		return Progress{}, false
	}
	return Progress{CopiedBytes: job.copied.Load(), TotalBytes: job.total.Load()}, true
}

// CreateSnapshot cuts a snapshot of the volume sourceID (a volume of this
// pool) named name. It returns at once: either the finished snapshot, or
// one in StateCreating whose copy runs in the background; call again (or
// WaitSnapshot) to see it finish. A copy that failed or was interrupted by a
// crash is restarted from scratch.
//
// jobsMu is held only to look up and register the job: measuring and
// copying the source (O(data)) happen in the job, so a large volume never
// stalls the snapshots of the rest of the pool.
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

	snap := Snapshot{
		ID: id, Name: name, SourceVolumeID: source.ID, SizeBytes: source.CapacityBytes,
		Segment: p.cfg.Segment, State: StateCreating, CreatedAt: time.Now().UTC(),
	}
	job, lock, err := p.registerJob(snap)
	if err != nil {
		return Snapshot{}, err
	}
	if lock == nil {
		return job.snap, nil // a job here or another process is at it
	}
	// From here the job is registered and the lock held: nothing below runs
	// under jobsMu.
	fail := func(err error) (Snapshot, error) {
		lock.unlock()
		p.endJob(job, err)
		return Snapshot{}, err
	}
	// Re-read under the lock: a job may have finished since the first look.
	if again, err := p.LookupSnapshot(id); err == nil && again.Ready() {
		lock.unlock()
		p.endJob(job, nil)
		return again, nil
	}
	// Hold the source volume for the whole copy, so it cannot be deleted under it.
	sourceRef := &Source{Pool: p, VolumeID: source.ID}
	lease, err := sourceRef.lease()
	if err != nil {
		return fail(err)
	}
	if err := p.writeMeta(id, snap); err != nil {
		lease.unlock()
		return fail(err)
	}
	go p.runSnapshot(lock, lease, job, snap, sourceRef.dir())
	return snap, nil
}

// registerJob claims the snapshot for a new job: under jobsMu it checks for
// a job of this process and takes the object lock without waiting (O(1)).
// With a nil lock it returns a snapshot to answer with: the running job's,
// or the metadata another process is completing.
func (p *Pool) registerJob(snap Snapshot) (*snapshotJob, *objectLock, error) {
	p.jobsMu.Lock()
	defer p.jobsMu.Unlock()
	if job, running := p.jobs[snap.ID]; running {
		return job, nil, nil
	}
	lock, err := p.tryLock(snap.ID)
	if errors.Is(err, ErrInFlight) {
		if existing, lookErr := p.LookupSnapshot(snap.ID); lookErr == nil {
			return &snapshotJob{snap: existing}, nil, nil
		}
	}
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	job := &snapshotJob{ctx: ctx, cancel: cancel, done: make(chan struct{}), snap: snap}
	p.jobs[snap.ID] = job
	return job, lock, nil
}

// endJob removes a job and announces its end.
func (p *Pool) endJob(job *snapshotJob, err error) {
	p.jobsMu.Lock()
	delete(p.jobs, job.snap.ID)
	job.err = err
	p.jobsMu.Unlock()
	job.cancel()
	close(job.done)
}

// runSnapshot copies the source into tmp, makes it durable, renames it into
// snapshots/ and only then marks the metadata ready.
func (p *Pool) runSnapshot(lock, lease *objectLock, job *snapshotJob, snap Snapshot, sourceDir string) {
	ctx := job.ctx
	start := time.Now()
	total, err := p.measure(sourceDir)
	if err != nil {
		err = fmt.Errorf("measure source volume %s: %w", snap.SourceVolumeID, err)
	} else {
		job.total.Store(total)
		err = p.copySnapshot(ctx, job, snap, sourceDir)
	}
	if err != nil {
		_ = os.RemoveAll(p.tempPath(snap.ID))
		if ctx.Err() == nil {
			snap.Failure = err.Error()
			_ = p.writeMeta(snap.ID, snap)
		}
		klog.ErrorS(err, "Snapshot copy failed", "snapshot", snap.ID, "name", snap.Name)
	} else {
		klog.InfoS("Snapshot ready", "snapshot", snap.ID, "name", snap.Name,
			"bytes", job.copied.Load(), "duration", time.Since(start))
	}
	// Unlock before announcing the end, so whoever waited can act on the snapshot at once.
	lease.unlock()
	lock.unlock()
	p.endJob(job, err)
}

func (p *Pool) copySnapshot(ctx context.Context, job *snapshotJob, snap Snapshot, sourceDir string) error {
	tmp := p.tempPath(snap.ID)
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("clear temporary %s: %w", tmp, err)
	}
	final := p.SnapshotDir(snap.ID)
	if err := os.RemoveAll(final); err != nil {
		return fmt.Errorf("clear incomplete snapshot %s: %w", final, err)
	}
	// Tree ends with syncfs: every copied byte is durable before the rename.
	_, err := fscopy.Tree(ctx, sourceDir, tmp, fscopy.Options{
		Progress: func(copied int64) { job.copied.Store(copied) },
	})
	if err != nil {
		return fmt.Errorf("copy volume %s: %w", snap.SourceVolumeID, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("move snapshot into place: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Join(p.cfg.Dir, "snapshots")); err != nil {
		return err
	}
	snap.State, snap.Failure = StateReady, ""
	return p.writeMeta(snap.ID, snap)
}

// WaitSnapshot waits until a background copy of id ends or ctx is done,
// and returns the snapshot's metadata then.
func (p *Pool) WaitSnapshot(ctx context.Context, id string) (Snapshot, error) {
	p.jobsMu.Lock()
	job, running := p.jobs[id]
	p.jobsMu.Unlock()
	if running {
		select {
		case <-job.done:
			if job.err != nil {
				return Snapshot{}, job.err
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
	p.jobsMu.Lock()
	job, running := p.jobs[id]
	p.jobsMu.Unlock()
	if running {
		job.cancel()
		select {
		case <-job.done:
		case <-ctx.Done():
			return fmt.Errorf("wait for snapshot copy %s to stop: %w", id, ctx.Err())
		}
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
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("remove %s: %w", dir, err)
		}
	}
	return p.removeMeta(id)
}

// Close cancels running copies and waits for them to stop.
func (p *Pool) Close() {
	p.jobsMu.Lock()
	jobs := make([]*snapshotJob, 0, len(p.jobs))
	for _, job := range p.jobs {
		jobs = append(jobs, job)
	}
	p.jobsMu.Unlock()
	for _, job := range jobs {
		job.cancel()
		<-job.done
	}
}
