// Package store keeps toposnap's volumes and snapshots in a pool on disk: a
// node pool (one node's disk) or a zone pool (a directory every node of the
// zone mounts). It owns the on-disk layout, crash-safe metadata, capacity
// accounting, background copies and the locks that make concurrent and
// repeated operations safe across goroutines and processes. The physical
// work is a Backend's (btrfs subvolumes and snapshots, or directories and
// copies); the store never knows which. It knows nothing of gRPC; the
// driver translates.
//
// Layout of a pool directory:
//
//	meta/<id>.json       metadata, replaced atomically; an object is
//	                     trusted only once its state is "ready"
//	volumes/<id>/        a volume (a directory or subvolume; a block
//	                     volume holds its image file, disk.img)
//	snapshots/<id>/      a snapshot
//	tmp/<id>.<holder>    copies in progress, removed on failure or restart
//	locks/<id>, locks/<id>.src, locks/.pool  flock files
package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/toposnap/toposnap/internal/topology"
)

// Errors the driver maps to CSI codes.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists with different attributes")
	ErrInFlight = errors.New("an operation on this object is already in progress")
	ErrNoSpace  = errors.New("not enough free capacity in the pool")
	// ErrFilling: a restore or clone is still being filled in the background.
	ErrFilling = errors.New("the volume is still being filled")
)

// State of an object.
type State string

const (
	// StateCreating: capacity is reserved and the data is being put in
	// place (or was, when a crash interrupted it). A repeated CreateVolume
	// or CreateSnapshot of the same name finishes it; Delete removes it.
	StateCreating State = "creating"
	StateReady    State = "ready"
	// StateDeleting: a delete has begun and its files may be partly gone.
	// The delete is finished by a repeated call or when the pool is opened.
	StateDeleting State = "deleting"
)

// Volume is a volume's metadata.
type Volume struct {
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	Scope         topology.Scope    `json:"scope"`
	CapacityBytes int64             `json:"capacityBytes"`
	Parameters    map[string]string `json:"parameters,omitempty"`
	// SourceSnapshotID or SourceVolumeID is set for restores and clones.
	SourceSnapshotID string           `json:"sourceSnapshotID,omitempty"`
	SourceVolumeID   string           `json:"sourceVolumeID,omitempty"`
	Segment          topology.Segment `json:"segment"`
	State            State            `json:"state"`
	CreatedAt        time.Time        `json:"createdAt"`
	// Block volumes are an image file (ImageName) in the volume directory.
	Block bool `json:"block,omitempty"`
	// Layout is where its files are in its directory (see Layout).
	Layout Layout `json:"layout,omitempty"`
}

// Snapshot is a snapshot's metadata.
type Snapshot struct {
	ID             string           `json:"id"`
	Name           string           `json:"name"`
	SourceVolumeID string           `json:"sourceVolumeID"`
	SizeBytes      int64            `json:"sizeBytes"`
	Segment        topology.Segment `json:"segment"`
	State          State            `json:"state"`
	CreatedAt      time.Time        `json:"createdAt"`
	// Failure of the last background copy, if any; cleared on retry.
	Failure string `json:"failure,omitempty"`
	// Block is set for snapshots of block volumes.
	Block bool `json:"block,omitempty"`
	// Layout is its source volume's: restores and clones keep it.
	Layout Layout `json:"layout,omitempty"`
}

// Ready reports whether the snapshot is complete and durable.
func (s Snapshot) Ready() bool { return s.State == StateReady }

// Config describes one pool.
type Config struct {
	Scope topology.Scope
	Dir   string
	// Owner names the pool: the node id for node pools, "region/zone" for zone pools.
	Owner string
	// Capacity is the sum of volume capacities the pool may hold.
	Capacity int64
	// Segment is where the pool's volumes are reachable from.
	Segment topology.Segment
	// Holder is this process's node id, used to name temporary work.
	Holder string
	// BackendKind chooses the backend: BackendAuto (btrfs where the pool is
	// on btrfs, else dir), BackendBtrfs or BackendDir.
	BackendKind string
	// Backend, when set, is used as it is (tests).
	Backend Backend
	// RecoveryBackoff spaces the retries of work a crash left that could
	// not be finished when the pool was opened (see Unrecovered); the zero
	// value is 1s doubling up to 5m.
	RecoveryBackoff Backoff
	// OnUnrecovered, when set, is called after each failed attempt to
	// finish such work (err set) and once when a retry succeeds (err nil),
	// from the goroutine that tried: the driver raises events and metrics.
	// object is an ID, or a pool subdirectory ("tmp/") for pool-wide work.
	OnUnrecovered func(object string, err error)
	// OnNestedCorrection, when set, is called for each subvolume a tenant
	// nested outside its volume's limit and the backend put back under it
	// (see nested.go), from the watcher's goroutine: return quickly.
	OnNestedCorrection func(NestedCorrection)
}

// Pool is one pool directory. Safe for concurrent use, also by several
// processes sharing the directory (zone pools).
type Pool struct {
	cfg       Config
	ownerHash string
	// root is the pool directory, held open: every pool path is opened
	// beneath it (see beneath.go).
	root    *os.File
	backend Backend
	poolMu  sync.Mutex // serialises this process's pool-lock holders

	// jobsMu guards jobs only: it is never held across I/O.
	jobsMu sync.Mutex
	jobs   map[string]*job

	recovery  recovery
	closeOnce sync.Once

	// stopWatch and watchDone run the backend's nested-subvolume watcher.
	stopWatch context.CancelFunc
	watchDone chan struct{}
}

// Open prepares a pool directory and sets about finishing the work crashed
// operations left (see recover). A pool subdirectory that is not the
// pool's own (a symlink, say) does not fail Open: it is reported
// (Unrecovered) and every operation that needs it is refused with
// ErrForeign, while the rest of the pool, and the driver's other pool, serve.
func Open(cfg Config) (*Pool, error) {
	if cfg.Dir == "" {
		return nil, errors.New("pool directory is empty")
	}
	if cfg.Capacity <= 0 {
		return nil, fmt.Errorf("pool %s: capacity must be positive, got %d", cfg.Dir, cfg.Capacity)
	}
	// The pool directory itself is the operator's choice, trusted as a path.
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("create pool directory: %w", err)
	}
	root, err := os.OpenFile(cfg.Dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open pool directory: %w", err)
	}
	for _, sub := range poolDirs {
		// mkdirat never follows a symlink at sub: it fails with EEXIST,
		// and recover reports what is there.
		if err := unix.Mkdirat(int(root.Fd()), sub, 0o750); err != nil && !errors.Is(err, unix.EEXIST) {
			root.Close()
			return nil, fmt.Errorf("create pool directory %s: %w", filepath.Join(cfg.Dir, sub), err)
		}
	}
	backend, err := openBackend(cfg)
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("pool %s: %w", cfg.Dir, err)
	}
	p := &Pool{cfg: cfg, ownerHash: hash16(cfg.Owner), root: root, backend: backend, jobs: map[string]*job{}}
	p.recovery.init(cfg.RecoveryBackoff)
	p.recover()
	p.startNestedWatch()
	return p, nil
}

// BackendName names the pool's backend ("btrfs" or "dir").
func (p *Pool) BackendName() string { return p.backend.Name() }

// Config returns the pool's configuration.
func (p *Pool) Config() Config { return p.cfg }

// Owns reports whether the object ID belongs to this pool.
func (p *Pool) Owns(id ID) bool { return id.Scope == p.cfg.Scope && id.OwnerHash == p.ownerHash }

// VolumeID and SnapshotID name objects of this pool.
func (p *Pool) VolumeID(name string) string {
	return MakeID(KindVolume, p.cfg.Scope, p.cfg.Owner, name)
}

// SnapshotID names a snapshot of this pool.
func (p *Pool) SnapshotID(name string) string {
	return MakeID(KindSnapshot, p.cfg.Scope, p.cfg.Owner, name)
}

// VolumeDir is where a volume's files live, for messages and tests: the
// store itself never opens it by this path, and neither may the node side
// (use OpenVolumeDir or OpenImage). The id must have been validated.
func (p *Pool) VolumeDir(id string) string { return filepath.Join(p.cfg.Dir, "volumes", id) }

// SnapshotDir is where a complete snapshot's files live, for messages and
// tests (see VolumeDir).
func (p *Pool) SnapshotDir(id string) string { return filepath.Join(p.cfg.Dir, "snapshots", id) }

func (p *Pool) metaPath(id string) string { return filepath.Join(p.cfg.Dir, "meta", metaName(id)) }

// tempName is this process's temporary work on id, in tmp/.
func (p *Pool) tempName(id string) string { return id + "." + p.cfg.Holder }

func (p *Pool) tempPath(id string) string { return filepath.Join(p.cfg.Dir, "tmp", p.tempName(id)) }

// cleanTemp removes temporary work nobody holds a lock for: leftovers of
// crashed copies, by this process or any other sharing the pool. Each
// entry is removed through tmp/'s descriptor, so a symlinked tmp/ is
// refused, and a symlink entry is unlinked, never followed (Backend.Delete
// does not follow its path's last component). One entry that cannot be
// removed does not keep the others.
func (p *Pool) cleanTemp() error {
	held, err := p.holdDirs("tmp")
	if err != nil {
		return fmt.Errorf("clean temporary work: %w", err)
	}
	defer held.close()
	names, err := held["tmp"].Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("read temporary directory: %w", err)
	}
	var errs []error
	for _, name := range names {
		id, _, _ := strings.Cut(name, ".")
		if _, err := ParseID(id); err != nil {
			continue // not ours; leave it alone
		}
		lock, err := p.tryLock(id)
		if errors.Is(err, ErrInFlight) {
			continue // in progress elsewhere
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("stale temporary %s: %w", name, err))
			continue
		}
		err = p.backend.Delete(held.path("tmp", name))
		lock.unlock()
		if err != nil {
			errs = append(errs, fmt.Errorf("remove stale temporary %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}
