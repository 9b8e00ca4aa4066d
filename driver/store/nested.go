package store

import (
	"context"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/driver/store/btrfs"
)

// Some backends let a tenant move its writes out of its volume's limit
// from inside the volume (btrfs: a nested subvolume created with its own
// qgroup inheritance list). Such a backend watches the pool's volumes for
// as long as the pool is open and puts every such write back under the
// volume it was made in; the pool reports each correction.

// NestedCorrection is one subvolume a tenant nested in its volume outside
// the volume's limit, put back under it.
type NestedCorrection struct {
	// VolumeID is the volume the subvolume was made in.
	VolumeID string
	// Nested is its path inside the volume, as the tenant named it.
	Nested string
	// Detached lists the foreign quota groups it was taken out of (a
	// neighbour's: their charge went back with it).
	Detached []string
	// Bytes is what moved onto the volume's limit.
	Bytes uint64
}

// nestedWatcher is a backend that keeps nested subvolumes under their
// volume's limit until ctx ends (btrfs.Backend.Watch).
type nestedWatcher interface {
	Watch(ctx context.Context, volumesDir string, report func(btrfs.Correction)) error
}

// startNestedWatch runs the backend's watcher, if it has one, until the
// pool is closed. volumes/ is checked to be the pool's own directory
// first: a pool whose volumes/ is foreign serves nothing there anyway.
func (p *Pool) startNestedWatch() {
	watcher, ok := p.backend.(nestedWatcher)
	if !ok {
		return
	}
	dir, err := p.openKind("volumes", unix.O_PATH|unix.O_DIRECTORY, unix.S_IFDIR)
	if err != nil {
		klog.ErrorS(err, "Not watching nested subvolumes: volumes/ is not the pool's", "pool", p.cfg.Dir)
		return
	}
	dir.Close()
	ctx, cancel := context.WithCancel(context.Background())
	p.stopWatch = cancel
	p.watchDone = make(chan struct{})
	go func() {
		defer close(p.watchDone)
		err := watcher.Watch(ctx, filepath.Join(p.cfg.Dir, "volumes"), func(c btrfs.Correction) {
			correction := NestedCorrection{VolumeID: filepath.Base(c.Volume), Nested: c.Nested, Detached: c.Detached, Bytes: c.Bytes}
			klog.InfoS("Nested subvolume put back under its volume's limit", "pool", p.cfg.Dir,
				"volume", correction.VolumeID, "nested", strconv.Quote(c.Nested), "detached", c.Detached, "bytes", c.Bytes)
			if p.cfg.OnNestedCorrection != nil {
				p.cfg.OnNestedCorrection(correction)
			}
		})
		if err != nil {
			klog.ErrorS(err, "Nested-subvolume watcher did not start; tenants can nest subvolumes outside their limits", "pool", p.cfg.Dir)
		}
	}()
}

// stopNestedWatch stops the watcher and waits for it.
func (p *Pool) stopNestedWatch() {
	if p.stopWatch != nil {
		p.stopWatch()
		<-p.watchDone
	}
}
