package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"time"

	"github.com/toposnap/toposnap/internal/atomicfile"
	"github.com/toposnap/toposnap/internal/fscopy"
)

// Source is the data a new volume starts with: a ready snapshot or volume
// of Pool (this pool or another one the same process opened).
type Source struct {
	Pool       *Pool
	SnapshotID string
	VolumeID   string
}

// id is the source object's ID.
func (s *Source) id() string {
	if s.SnapshotID != "" {
		return s.SnapshotID
	}
	return s.VolumeID
}

// dir is where the source's files are.
func (s *Source) dir() string {
	if s.SnapshotID != "" {
		return s.Pool.SnapshotDir(s.SnapshotID)
	}
	return s.Pool.VolumeDir(s.VolumeID)
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
}

// LookupVolume returns a volume's metadata or ErrNotFound.
func (p *Pool) LookupVolume(id string) (Volume, error) {
	return readMeta[Volume](p.metaPath(id))
}

// ListVolumes returns the pool's volumes sorted by ID, in every state:
// each one holds capacity until it is gone.
func (p *Pool) ListVolumes() ([]Volume, error) {
	ids, err := p.metaIDs(KindVolume)
	if err != nil {
		return nil, err
	}
	volumes := make([]Volume, 0, len(ids))
	for _, id := range ids {
		vol, err := p.LookupVolume(id)
		if errors.Is(err, ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		volumes = append(volumes, vol)
	}
	return volumes, nil
}

// allocatedExcept sums the capacity of the pool's volumes in any state
// (creating and deleting ones hold theirs too), excluding one ID.
func (p *Pool) allocatedExcept(except string) (int64, error) {
	volumes, err := p.ListVolumes()
	if err != nil {
		return 0, err
	}
	var total int64
	for _, vol := range volumes {
		if vol.ID != except {
			total += vol.CapacityBytes
		}
	}
	return total, nil
}

// Available is the capacity not yet promised to a volume.
func (p *Pool) Available() (int64, error) {
	allocated, err := p.allocatedExcept("")
	if err != nil {
		return 0, err
	}
	return max(p.cfg.Capacity-allocated, 0), nil
}

// CreateVolume creates a volume, or returns the one an earlier identical
// request created. A crashed earlier attempt (StateCreating) is redone from
// the start; so is one whose delete was interrupted (StateDeleting), since
// the name is free again once the caller deleted it.
func (p *Pool) CreateVolume(ctx context.Context, req VolumeRequest) (Volume, error) {
	id := p.VolumeID(req.Name)
	lock, err := p.tryLock(id)
	if err != nil {
		return Volume{}, err
	}
	defer lock.unlock()

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
		CreatedAt: time.Now().UTC(),
	}
	var lease *objectLock
	if req.Source != nil {
		vol.SourceSnapshotID, vol.SourceVolumeID = req.Source.SnapshotID, req.Source.VolumeID
		// Hold the source for the whole copy, so it cannot be deleted under it.
		if lease, err = req.Source.lease(); err != nil {
			return Volume{}, err
		}
		defer lease.unlock()
	}
	// Reserve the capacity first, under the pool lock, so concurrent creators
	// (other processes on a zone pool too) cannot both take the last bytes.
	err = p.withPoolLock(func() error {
		allocated, err := p.allocatedExcept(id)
		if err != nil {
			return err
		}
		if allocated+req.CapacityBytes > p.cfg.Capacity {
			return fmt.Errorf("%w: requested %d bytes, %d of %d free", ErrNoSpace,
				req.CapacityBytes, max(p.cfg.Capacity-allocated, 0), p.cfg.Capacity)
		}
		return p.writeMeta(id, vol)
	})
	if err != nil {
		return Volume{}, err
	}

	if err := p.fillVolume(ctx, id, req.Source); err != nil {
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

// fillVolume builds the volume's directory in tmp (empty, or a copy of the
// source) and renames it into place, so volumes/<id> is always complete.
func (p *Pool) fillVolume(ctx context.Context, id string, source *Source) error {
	tmp := p.tempPath(id)
	if source == nil {
		if err := os.Mkdir(tmp, 0o777); err != nil {
			return fmt.Errorf("create volume directory: %w", err)
		}
		// Mkdir applies the umask; volumes are world-writable like a fresh filesystem's root.
		if err := os.Chmod(tmp, 0o777); err != nil {
			return fmt.Errorf("chmod volume directory: %w", err)
		}
	} else if _, err := fscopy.Tree(ctx, source.dir(), tmp, fscopy.Options{}); err != nil {
		_ = os.RemoveAll(tmp)
		return fmt.Errorf("copy source into volume: %w", err)
	}
	if err := os.Rename(tmp, p.VolumeDir(id)); err != nil {
		_ = os.RemoveAll(tmp)
		return fmt.Errorf("move volume into place: %w", err)
	}
	return atomicfile.SyncDir(filepath.Join(p.cfg.Dir, "volumes"))
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
	case !maps.Equal(existing.Parameters, req.Parameters) && (len(existing.Parameters) > 0 || len(req.Parameters) > 0):
		return fmt.Errorf("volume %q was created with other parameters: %w", req.Name, ErrExists)
	}
	return nil
}

// DeleteVolume removes a volume: it is marked deleting (durably, so a crash
// never leaves a "ready" volume with half its files), its files go, then its
// metadata. Deleting a volume that does not exist succeeds. A volume that a
// snapshot or clone is being copied from is not deleted (ErrInFlight).
func (p *Pool) DeleteVolume(id string) error {
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
	for _, dir := range []string{p.tempPath(id), p.VolumeDir(id)} {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("remove %s: %w", dir, err)
		}
	}
	return nil
}

// ExpandVolume grows a volume's capacity if the pool has room. Shrinking is
// a no-op (CSI: the volume already satisfies the request).
func (p *Pool) ExpandVolume(id string, capacity int64) (Volume, error) {
	lock, err := p.tryLock(id)
	if err != nil {
		return Volume{}, err
	}
	defer lock.unlock()
	var vol Volume
	err = p.withPoolLock(func() error {
		vol, err = p.LookupVolume(id)
		if err != nil {
			return err
		}
		if vol.State != StateReady {
			return fmt.Errorf("volume %s is %s: %w", id, vol.State, ErrNotFound)
		}
		if capacity <= vol.CapacityBytes {
			return nil
		}
		allocated, err := p.allocatedExcept(id)
		if err != nil {
			return err
		}
		if allocated+capacity > p.cfg.Capacity {
			return fmt.Errorf("%w: expanding to %d bytes needs %d more, %d free", ErrNoSpace,
				capacity, capacity-vol.CapacityBytes, max(p.cfg.Capacity-allocated-vol.CapacityBytes, 0))
		}
		vol.CapacityBytes = capacity
		return p.writeMeta(id, vol)
	})
	return vol, err
}
