package store

import (
	"context"
	"errors"
	"fmt"

	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/driver/store/btrfs"
	"github.com/toposnap/toposnap/driver/store/dirfs"
)

// Backend does the physical work for one pool: the pool logic (IDs,
// metadata, locks, capacity, background jobs) stays in Pool, and every path
// a Backend gets is one the pool chose, inside the pool. A tree *under* a
// path is the tenant's and must be treated as hostile.
//
// Create, Snapshot and Clone leave the finished object at final, durable,
// and never anything partial there: where the backend cannot make it in
// one atomic step it works at tmp (which the pool clears after a crash) and
// renames.
type Backend interface {
	// Name is the backend's name ("btrfs", "dir"), for logs and metrics.
	Name() string
	// Enforced reports whether volume sizes are enforced by the filesystem
	// and Usage is cheap (no walk): then capacity counts what volumes may
	// still write.
	Enforced() bool
	// Create makes an empty volume limited to limit bytes (0: none).
	Create(tmp, final string, limit int64) error
	// Snapshot makes a read-only image of the volume at source.
	Snapshot(ctx context.Context, source, tmp, final string, progress func(copied, total int64)) error
	// Clone makes a writable volume of limit bytes (0: none) holding the
	// data at source, a snapshot or a volume, possibly of another pool.
	Clone(ctx context.Context, source, tmp, final string, limit int64, progress func(copied, total int64)) error
	// Expand sets the volume's limit to limit bytes (0: none).
	Expand(path string, limit int64) error
	// Delete removes the volume, snapshot or partial work at path, with
	// everything in it; a missing path is not an error.
	Delete(path string) error
	// Usage is the bytes the volume at path holds (or is charged for).
	Usage(path string) (int64, error)
}

// Backend kinds (Config.BackendKind, the driver's --backend).
const (
	BackendAuto  = "auto"
	BackendBtrfs = "btrfs"
	BackendDir   = "dir"
)

// openBackend picks the pool's backend: btrfs when asked, or when the pool
// is on btrfs and the kind is auto; dir otherwise.
func openBackend(cfg Config) (Backend, error) {
	if cfg.Backend != nil {
		return cfg.Backend, nil
	}
	switch cfg.BackendKind {
	case BackendDir:
		return dirfs.Backend{}, nil
	case BackendBtrfs:
		b, err := btrfs.Open(cfg.Dir)
		if err != nil {
			return nil, fmt.Errorf("btrfs backend: %w", err)
		}
		return b, nil
	case BackendAuto, "":
		b, err := btrfs.Open(cfg.Dir)
		if err == nil {
			return b, nil
		}
		if !errors.Is(err, btrfs.ErrNotBtrfs) {
			// On btrfs, but quotas cannot be used: say so, and still serve.
			klog.ErrorS(err, "Pool is on btrfs but the btrfs backend cannot be used; sizes will not be enforced", "pool", cfg.Dir)
		}
		return dirfs.Backend{}, nil
	}
	return nil, fmt.Errorf("unknown backend %q (want %s, %s or %s)", cfg.BackendKind, BackendAuto, BackendBtrfs, BackendDir)
}
