package store

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Capacity is what a pool can promise, all in bytes.
type Capacity struct {
	// Total is --capacity, or the filesystem's size when that is smaller.
	Total int64
	// Allocated is the sum of the sizes of the pool's volumes, in any
	// state, and of its snapshots of block volumes (each may pin up to its
	// volume's size, which no filesystem limit bounds), plus Lingering.
	Allocated int64
	// Lingering is what the filesystem still holds of deleted volumes,
	// charged to no volume's limit (btrfs: blocks a snapshot or a reflink
	// into another volume keeps), counted as promised until freed.
	Lingering int64
	// FilesystemFree is what statfs says an unprivileged writer can still
	// use on the pool's filesystem.
	FilesystemFree int64
	// Unwritten is what the pool's volumes may still write within their
	// sizes (size minus usage, summed), plus the size of each snapshot of a
	// block volume (what it may still pin: an upper bound, since blocks it
	// already pins are charged to its volume's usage too); 0 where sizes
	// are not enforced.
	Unwritten int64
}

// Available is what a new volume may be given: within the promise
// (Total-Allocated) and within what the filesystem can still hold once the
// existing volumes write what they may.
func (c Capacity) Available() int64 {
	return max(min(c.Total-c.Allocated, c.FilesystemFree-c.Unwritten), 0)
}

// Lingering is what the pool's filesystem still holds of deleted volumes
// outside every volume's limit (Capacity.Lingering), measured alone: two
// tree searches on btrfs, 0 elsewhere.
func (p *Pool) Lingering() (int64, error) {
	if l, ok := p.backend.(lingering); ok {
		return l.LingeringCharge()
	}
	return 0, nil
}

// lingering is a backend that can say what deleted volumes still hold
// outside every volume's limit (btrfs.Backend.LingeringCharge).
type lingering interface {
	LingeringCharge() (int64, error)
}

// statfs reads the pool filesystem's size and free space.
func (p *Pool) statfs() (size, free int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(p.cfg.Dir, &st); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", p.cfg.Dir, err)
	}
	return int64(st.Blocks) * st.Bsize, int64(st.Bavail) * st.Bsize, nil
}

// TotalCapacity is the most the pool may ever promise: --capacity, or the
// filesystem's size when that is smaller.
func (p *Pool) TotalCapacity() (int64, error) {
	size, _, err := p.statfs()
	if err != nil {
		return 0, err
	}
	return min(p.cfg.Capacity, size), nil
}

// capacityExcept measures the pool, leaving the volume or snapshot except
// out of the sums (it is the one being sized). O(objects): metadata reads
// and, where sizes are enforced, one cheap usage query per volume; never a
// walk.
func (p *Pool) capacityExcept(except string) (Capacity, error) {
	size, free, err := p.statfs()
	if err != nil {
		return Capacity{}, err
	}
	volumes, err := p.ListVolumes()
	if err != nil {
		return Capacity{}, err
	}
	c := Capacity{Total: min(p.cfg.Capacity, size), FilesystemFree: free}
	var held heldDirs
	if p.backend.Enforced() {
		if held, err = p.holdDirs("volumes"); err != nil {
			return Capacity{}, fmt.Errorf("measure the pool: %w", err)
		}
		defer held.close()
	}
	for _, vol := range volumes {
		if vol.ID == except {
			continue
		}
		c.Allocated += vol.CapacityBytes
		if !p.backend.Enforced() {
			continue
		}
		used := int64(0)
		if vol.State == StateReady {
			if used, err = p.backend.Usage(held.path("volumes", vol.ID)); err != nil {
				return Capacity{}, fmt.Errorf("usage of volume %s: %w", vol.ID, err)
			}
		}
		c.Unwritten += max(vol.CapacityBytes-used, 0)
	}
	if l, ok := p.backend.(lingering); ok {
		if c.Lingering, err = l.LingeringCharge(); err != nil {
			return Capacity{}, fmt.Errorf("measure the pool: %w", err)
		}
		c.Allocated += c.Lingering
	}
	snapshots, err := p.ListSnapshots()
	if err != nil {
		return Capacity{}, err
	}
	for _, snap := range snapshots {
		if !snap.Block || snap.ID == except {
			continue
		}
		c.Allocated += snap.SizeBytes
		if p.backend.Enforced() {
			c.Unwritten += snap.SizeBytes
		}
	}
	return c, nil
}

// Capacity measures the whole pool.
func (p *Pool) Capacity() (Capacity, error) { return p.capacityExcept("") }

// Available is the capacity a new volume may be given.
func (p *Pool) Available() (int64, error) {
	c, err := p.Capacity()
	if err != nil {
		return 0, err
	}
	return c.Available(), nil
}

// fits checks (under the pool lock) that the volume or block snapshot
// except, holding used bytes, may be given size bytes: within the promise, and within what the
// filesystem still holds besides what the other volumes may write.
func (p *Pool) fits(except string, size, used int64) error {
	c, err := p.capacityExcept(except)
	if err != nil {
		return err
	}
	if !p.backend.Enforced() {
		used = 0
	}
	if size > c.Total-c.Allocated || size-used > c.FilesystemFree-c.Unwritten {
		return fmt.Errorf("%w: requested %d bytes; the pool promises %d of %d bytes (%d of them still held by deleted volumes) and its filesystem has %d free of which volumes may still write %d",
			ErrNoSpace, size, c.Allocated, c.Total, c.Lingering, c.FilesystemFree, c.Unwritten)
	}
	return nil
}
