package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// ImageName is a block volume's image file, inside its volume directory.
const ImageName = "disk.img"

// Source is the data a new volume starts with: a ready snapshot or volume
// of Pool (this pool or another one the same process opened).
type Source struct {
	Pool       *Pool
	SnapshotID string
	VolumeID   string
	// Layout is the source's (a volume's, or the one a snapshot was cut
	// from): how its tree is laid out.
	Layout Layout
}

// id is the source object's ID.
func (s *Source) id() string {
	if s.SnapshotID != "" {
		return s.SnapshotID
	}
	return s.VolumeID
}

// hold opens the source pool's subdirectory holding the source and
// returns the path of the source's files through it (see heldDirs).
func (s *Source) hold() (heldDirs, string, error) {
	sub := "volumes"
	if s.SnapshotID != "" {
		sub = "snapshots"
	}
	held, err := s.Pool.holdDirs(sub)
	if err != nil {
		return nil, "", fmt.Errorf("source %s: %w", s.id(), err)
	}
	return held, held.path(sub, s.id()), nil
}

// lease takes the source's read lease and checks, under it, that the
// source is still ready: it cannot be deleted until the lease is released.
func (s *Source) lease() (*objectLock, error) {
	lease, err := s.Pool.readLease(s.id())
	if err != nil {
		return nil, err
	}
	state, err := s.Pool.metaState(s.id())
	if err == nil && state != StateReady {
		err = fmt.Errorf("source %s is %s: %w", s.id(), state, ErrNotFound)
	}
	if err != nil {
		lease.unlock()
		return nil, err
	}
	return lease, nil
}

// VolumeRequest asks for a volume.
type VolumeRequest struct {
	Name          string
	CapacityBytes int64
	Parameters    map[string]string
	Source        *Source
	// Block asks for a raw block volume: an image file of CapacityBytes.
	Block bool
	// Layout is the filesystem volume's (its class's). A copy of a sealed
	// source is sealed whatever the class says; a copy of an unsealed one
	// is sealed when asked, its tree moved into place before it is ready.
	// Block volumes have none.
	Layout Layout
}

// LookupVolume returns a volume's metadata or ErrNotFound.
// Metadata the pool did not write is refused with ErrForeign.
func (p *Pool) LookupVolume(id string) (Volume, error) {
	return readMeta[Volume](p, id)
}

// ListVolumes returns the pool's volumes sorted by ID, in every state:
// each one holds capacity until it is gone. Metadata the pool did not
// write is logged and left out.
func (p *Pool) ListVolumes() ([]Volume, error) {
	return listMeta[Volume](p, KindVolume)
}

// CreateVolume creates a volume, or returns the one an earlier identical
// request created. An empty volume is made at once. A restore or clone is
// filled in the background: CreateVolume waits for the fill until ctx
// ends (returning a little before its deadline) and then fails with
// ErrFilling; a repeated call finds the fill in progress and waits again,
// so no deadline bounds how large a volume can be restored. A crashed
// earlier attempt (StateCreating without a fill running) is redone from the
// start; so is one whose delete was interrupted (StateDeleting), since the
// name is free again once the caller deleted it.
func (p *Pool) CreateVolume(ctx context.Context, req VolumeRequest) (Volume, error) {
	id := p.VolumeID(req.Name)
	if j := p.runningJob(id); j != nil {
		return p.awaitFill(ctx, j, req)
	}
	lock, err := p.tryLock(id)
	if err != nil {
		return Volume{}, err
	}
	locked := true
	defer func() {
		if locked {
			lock.unlock()
		}
	}()

	existing, err := p.LookupVolume(id)
	switch {
	case err == nil && existing.State == StateReady:
		if err := sameVolume(existing, req); err != nil {
			return Volume{}, err
		}
		return existing, nil
	case err != nil && !errors.Is(err, ErrNotFound):
		return Volume{}, err
	}
	// Not there, or a crashed attempt: start clean.
	if err := p.removeVolumeFiles(id); err != nil {
		return Volume{}, err
	}

	vol := Volume{
		ID: id, Name: req.Name, Scope: p.cfg.Scope, CapacityBytes: req.CapacityBytes,
		Parameters: req.Parameters, Segment: p.cfg.Segment, State: StateCreating,
		CreatedAt: time.Now().UTC(), Block: req.Block,
	}
	if !req.Block {
		vol.Layout = req.Layout
	}
	var lease *objectLock
	if req.Source != nil {
		vol.SourceSnapshotID, vol.SourceVolumeID = req.Source.SnapshotID, req.Source.VolumeID
		if req.Source.Layout == LayoutSealed && !req.Block {
			vol.Layout = LayoutSealed // a sealed tree cannot be unsealed
		}
		// Hold the source for the whole copy, so it cannot be deleted under it.
		if lease, err = req.Source.lease(); err != nil {
			return Volume{}, err
		}
	}
	// Reserve the capacity first, under the pool lock, so concurrent creators
	// (other processes on a zone pool too) cannot both take the last bytes.
	err = p.withPoolLock(func() error {
		if err := p.fits(id, req.CapacityBytes, 0); err != nil {
			return err
		}
		return p.writeMeta(id, vol)
	})
	if err != nil {
		lease.unlock()
		return Volume{}, err
	}

	if req.Source == nil {
		if err := p.makeVolume(id, vol); err != nil {
			_ = p.removeVolumeFiles(id)
			_ = p.removeMeta(id)
			return Volume{}, err
		}
		vol.State = StateReady
		if err := p.writeMeta(id, vol); err != nil {
			return Volume{}, err
		}
		return vol, nil
	}
	// The fill owns the lock and the lease from here.
	locked = false
	j := p.startJob(id, vol)
	go p.runFill(j, lock, lease, vol, req.Source)
	return p.awaitFill(ctx, j, req)
}

// awaitFill waits for a fill and answers for the volume.
func (p *Pool) awaitFill(ctx context.Context, j *job, req VolumeRequest) (Volume, error) {
	if vol, ok := j.answer.(Volume); ok {
		if err := sameVolume(vol, req); err != nil {
			return Volume{}, err
		}
	}
	done, err := awaitJob(ctx, j)
	if !done {
		return Volume{}, fmt.Errorf("volume %q: %w: %d of %d bytes copied; repeat the call to wait for it",
			req.Name, ErrFilling, j.copied.Load(), j.total.Load())
	}
	if err != nil {
		return Volume{}, err
	}
	vol, err := p.LookupVolume(j.id)
	if err != nil {
		return Volume{}, err
	}
	if vol.State != StateReady {
		return Volume{}, fmt.Errorf("volume %q is %s: %w", req.Name, vol.State, ErrFilling)
	}
	return vol, nil
}

// makeVolume makes an empty volume (with its image, for a block volume).
func (p *Pool) makeVolume(id string, vol Volume) error {
	limit := vol.CapacityBytes
	if vol.Block {
		limit = 0 // the image's size bounds a block volume (see sizeImage)
	}
	held, err := p.holdDirs("tmp", "volumes")
	if err != nil {
		return fmt.Errorf("create volume: %w", err)
	}
	defer held.close()
	if err := p.backend.Create(held.path("tmp", p.tempName(id)), held.path("volumes", id), limit); err != nil {
		return fmt.Errorf("create volume: %w", err)
	}
	if vol.Block {
		return p.sizeImage(id, vol.CapacityBytes)
	}
	if vol.Layout == LayoutSealed {
		return p.seal(id)
	}
	return nil
}

// sizeImage creates or grows a block volume's sparse image file, opened
// beneath the pool's root: a symlink or device planted as the image is
// refused (ErrForeign), never resized. Block volumes get no filesystem
// limit: copy-on-write after a snapshot may take more blocks than the
// image's size, and a limit would turn that into I/O errors on the device
// (their snapshots are counted against the pool's capacity instead).
func (p *Pool) sizeImage(id string, size int64) error {
	f, err := p.openRegular("volumes/"+id+"/"+ImageName, unix.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("open block image of %s: %w", id, err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat block image: %w", err)
	}
	if info.Size() < size {
		if err := f.Truncate(size); err != nil {
			return fmt.Errorf("size block image to %d bytes: %w", size, err)
		}
	}
	return f.Sync()
}

// runFill copies the source into the volume in the background. On failure
// the volume is removed (its capacity freed) so that a repeated create
// starts over; when cancelled (shutdown, delete) it stays "creating".
func (p *Pool) runFill(j *job, lock, lease *objectLock, vol Volume, src *Source) {
	start := time.Now()
	err := p.fill(j, vol, src)
	switch {
	case err == nil:
		klog.InfoS("Volume filled", "volume", vol.ID, "name", vol.Name, "source", src.id(),
			"bytes", j.copied.Load(), "duration", time.Since(start))
	case j.ctx.Err() != nil:
		_ = p.removeTemp(vol.ID)
		klog.InfoS("Volume fill interrupted", "volume", vol.ID, "name", vol.Name, "err", err)
	default:
		klog.ErrorS(err, "Volume fill failed", "volume", vol.ID, "name", vol.Name, "source", src.id())
		_ = p.removeVolumeFiles(vol.ID)
		_ = p.removeMeta(vol.ID)
	}
	lease.unlock()
	lock.unlock()
	p.endJob(j, err)
}

func (p *Pool) fill(j *job, vol Volume, src *Source) error {
	limit := vol.CapacityBytes
	if vol.Block {
		limit = 0
	}
	srcHeld, srcPath, err := src.hold()
	if err != nil {
		return err
	}
	defer srcHeld.close()
	held, err := p.holdDirs("tmp", "volumes")
	if err != nil {
		return fmt.Errorf("fill volume %s: %w", vol.ID, err)
	}
	defer held.close()
	if err := p.backend.Clone(j.ctx, srcPath, held.path("tmp", p.tempName(vol.ID)), held.path("volumes", vol.ID), limit, j.progress); err != nil {
		return fmt.Errorf("fill volume from %s: %w", src.id(), err)
	}
	if vol.Block {
		if err := p.sizeImage(vol.ID, vol.CapacityBytes); err != nil {
			return err
		}
	}
	if vol.Layout == LayoutSealed && src.Layout != LayoutSealed {
		if err := p.sealFilled(vol.ID); err != nil {
			return err
		}
	}
	vol.State = StateReady
	return p.writeMeta(vol.ID, vol)
}

func sameVolume(existing Volume, req VolumeRequest) error {
	var sourceSnapshot, sourceVolume string
	if req.Source != nil {
		sourceSnapshot, sourceVolume = req.Source.SnapshotID, req.Source.VolumeID
	}
	switch {
	case existing.CapacityBytes != req.CapacityBytes:
		return fmt.Errorf("volume %q has %d bytes, request asks for %d: %w",
			req.Name, existing.CapacityBytes, req.CapacityBytes, ErrExists)
	case existing.SourceSnapshotID != sourceSnapshot || existing.SourceVolumeID != sourceVolume:
		return fmt.Errorf("volume %q was created from another source: %w", req.Name, ErrExists)
	case existing.Block != req.Block:
		return fmt.Errorf("volume %q was created with another access type (block=%v): %w", req.Name, existing.Block, ErrExists)
	case !maps.Equal(existing.Parameters, req.Parameters) && (len(existing.Parameters) > 0 || len(req.Parameters) > 0):
		return fmt.Errorf("volume %q was created with other parameters: %w", req.Name, ErrExists)
	}
	return nil
}

// DeleteVolume removes a volume: a fill running here is cancelled, the
// volume is marked deleting (durably, so a crash never leaves a "ready"
// volume with half its files), its files go, then its metadata. Deleting a
// volume that does not exist succeeds. A volume that a snapshot or clone
// is being copied from is not deleted (ErrInFlight).
func (p *Pool) DeleteVolume(ctx context.Context, id string) error {
	if err := p.stopJob(ctx, id); err != nil {
		return fmt.Errorf("stop the fill of %s: %w", id, err)
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
	vol, err := p.LookupVolume(id)
	switch {
	case errors.Is(err, ErrNotFound):
		// No metadata: at most files of a crashed create; remove them.
	case err != nil:
		return err
	case vol.State != StateDeleting:
		vol.State = StateDeleting
		if err := p.writeMeta(id, vol); err != nil {
			return err
		}
	}
	if err := p.removeVolumeFiles(id); err != nil {
		return err
	}
	return p.removeMeta(id)
}

func (p *Pool) removeVolumeFiles(id string) error {
	return p.removeObjectFiles("volumes", id)
}

// removeObjectFiles removes id's temporary work and its files in the pool
// subdirectory sub, through held descriptors (see heldDirs).
func (p *Pool) removeObjectFiles(sub, id string) error {
	held, err := p.holdDirs("tmp", sub)
	if err != nil {
		return fmt.Errorf("remove files of %s: %w", id, err)
	}
	defer held.close()
	if err := p.backend.Delete(held.path("tmp", p.tempName(id))); err != nil {
		return fmt.Errorf("remove %s: %w", p.tempPath(id), err)
	}
	if err := p.backend.Delete(held.path(sub, id)); err != nil {
		return fmt.Errorf("remove %s: %w", filepath.Join(p.cfg.Dir, sub, id), err)
	}
	return nil
}

// removeTemp removes this process's temporary work on id.
func (p *Pool) removeTemp(id string) error {
	held, err := p.holdDirs("tmp")
	if err != nil {
		return fmt.Errorf("remove temporary work on %s: %w", id, err)
	}
	defer held.close()
	if err := p.backend.Delete(held.path("tmp", p.tempName(id))); err != nil {
		return fmt.Errorf("remove %s: %w", p.tempPath(id), err)
	}
	return nil
}

// ExpandVolume grows a volume's capacity if the pool has room, and its
// limit (or a block volume's image). Shrinking is a no-op (CSI: the volume
// already satisfies the request).
func (p *Pool) ExpandVolume(id string, capacity int64) (Volume, error) {
	lock, err := p.tryLock(id)
	if err != nil {
		return Volume{}, err
	}
	defer lock.unlock()
	vol, err := p.LookupVolume(id)
	if err != nil {
		return Volume{}, err
	}
	if vol.State != StateReady {
		return Volume{}, fmt.Errorf("volume %s is %s: %w", id, vol.State, ErrNotFound)
	}
	if capacity <= vol.CapacityBytes {
		// Already promised; apply it again in case a crash came between the
		// promise and the limit (cheap and idempotent).
		return vol, p.applySize(vol)
	}
	var used int64
	if p.backend.Enforced() {
		if used, err = p.VolumeUsage(id); err != nil {
			return Volume{}, err
		}
	}
	err = p.withPoolLock(func() error {
		if err := p.fits(id, capacity, used); err != nil {
			return fmt.Errorf("expanding volume %s from %d to %d bytes: %w", id, vol.CapacityBytes, capacity, err)
		}
		vol.CapacityBytes = capacity
		return p.writeMeta(id, vol)
	})
	if err != nil {
		return Volume{}, err
	}
	// The promise is recorded first: a crash here leaves a volume whose
	// limit is smaller than its size, which the repeated expand fixes.
	return vol, p.applySize(vol)
}

// applySize gives the volume its recorded size: its limit, or a block
// volume's image size.
func (p *Pool) applySize(vol Volume) error {
	if vol.Block {
		return p.sizeImage(vol.ID, vol.CapacityBytes)
	}
	held, err := p.holdDirs("volumes")
	if err == nil {
		err = p.backend.Expand(held.path("volumes", vol.ID), vol.CapacityBytes)
		held.close()
	}
	if err != nil {
		return fmt.Errorf("expand volume %s: %w", vol.ID, err)
	}
	return nil
}

// VolumeUsage is the bytes a ready volume holds, by its backend's measure
// (a walk for directory pools).
func (p *Pool) VolumeUsage(id string) (int64, error) {
	held, err := p.holdDirs("volumes")
	if err != nil {
		return 0, fmt.Errorf("usage of volume %s: %w", id, err)
	}
	defer held.close()
	used, err := p.backend.Usage(held.path("volumes", id))
	if err != nil {
		return 0, fmt.Errorf("usage of volume %s: %w", id, err)
	}
	return used, nil
}
