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
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/atomicfile"
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
}

// Open prepares a pool directory and removes work left by crashed operations.
func Open(cfg Config) (*Pool, error) {
	if cfg.Dir == "" {
		return nil, errors.New("pool directory is empty")
	}
	if cfg.Capacity <= 0 {
		return nil, fmt.Errorf("pool %s: capacity must be positive, got %d", cfg.Dir, cfg.Capacity)
	}
	for _, sub := range []string{"meta", "volumes", "snapshots", "tmp", "locks"} {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, sub), 0o750); err != nil {
			return nil, fmt.Errorf("create pool directory: %w", err)
		}
	}
	backend, err := openBackend(cfg)
	if err != nil {
		return nil, fmt.Errorf("pool %s: %w", cfg.Dir, err)
	}
	root, err := os.OpenFile(cfg.Dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open pool directory: %w", err)
	}
	p := &Pool{cfg: cfg, ownerHash: hash16(cfg.Owner), root: root, backend: backend, jobs: map[string]*job{}}
	if err := p.recover(); err != nil {
		return nil, err
	}
	return p, nil
}

// BackendName names the pool's backend ("btrfs" or "dir").
func (p *Pool) BackendName() string { return p.backend.Name() }

// recover finishes or undoes what crashed operations left: temporary work
// and metadata temporaries nobody holds a lock for are removed, and deletes
// that had begun are completed (the caller asked for them; the files may be
// half gone). Volumes left in StateCreating stay: they hold their capacity
// and are listed, and the CO's retry of CreateVolume completes them, as
// external-provisioner retries a create whose outcome it did not learn.
func (p *Pool) recover() error {
	if err := p.cleanTemp(); err != nil {
		return err
	}
	if err := p.cleanMetaTemps(); err != nil {
		return err
	}
	for _, kind := range []Kind{KindVolume, KindSnapshot} {
		ids, err := p.metaIDs(kind)
		if err != nil {
			return err
		}
		for _, id := range ids {
			state, err := p.metaState(id)
			if err != nil || state != StateDeleting {
				continue
			}
			klog.InfoS("Finishing an interrupted delete", "pool", p.cfg.Dir, "id", id)
			if kind == KindVolume {
				err = p.DeleteVolume(context.Background(), id)
			} else {
				err = p.DeleteSnapshot(context.Background(), id)
			}
			if err != nil && !errors.Is(err, ErrInFlight) {
				return fmt.Errorf("finish deleting %s: %w", id, err)
			}
		}
	}
	return nil
}

// metaState reads just the state of an object's metadata.
func (p *Pool) metaState(id string) (State, error) {
	meta, err := readMeta[struct {
		State State `json:"state"`
	}](p.metaPath(id))
	return meta.State, err
}

// cleanMetaTemps removes the temporaries of metadata writes that crashed
// before their rename (".<id>.json.tmp-*"). Every metadata write happens
// under the object's lock, so a temporary whose lock is free is dead.
func (p *Pool) cleanMetaTemps() error {
	dir := filepath.Join(p.cfg.Dir, "meta")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read metadata directory: %w", err)
	}
	for _, entry := range entries {
		rest, ok := strings.CutPrefix(entry.Name(), ".")
		if !ok {
			continue
		}
		id, _, ok := strings.Cut(rest, ".json.tmp-")
		if !ok {
			continue
		}
		if _, err := ParseID(id); err != nil {
			continue
		}
		lock, err := p.tryLock(id)
		if err != nil {
			continue // being written right now
		}
		err = os.Remove(filepath.Join(dir, entry.Name()))
		lock.unlock()
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale metadata temporary %s: %w", entry.Name(), err)
		}
	}
	return nil
}

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

// VolumeDir is where a volume's files live. The id must have been validated.
func (p *Pool) VolumeDir(id string) string { return filepath.Join(p.cfg.Dir, "volumes", id) }

// SnapshotDir is where a complete snapshot's files live.
func (p *Pool) SnapshotDir(id string) string { return filepath.Join(p.cfg.Dir, "snapshots", id) }

func (p *Pool) metaPath(id string) string { return filepath.Join(p.cfg.Dir, "meta", id+".json") }

func (p *Pool) tempPath(id string) string {
	return filepath.Join(p.cfg.Dir, "tmp", id+"."+p.cfg.Holder)
}

// cleanTemp removes temporary work nobody holds a lock for: leftovers of
// crashed copies, by this process or any other sharing the pool.
func (p *Pool) cleanTemp() error {
	entries, err := os.ReadDir(filepath.Join(p.cfg.Dir, "tmp"))
	if err != nil {
		return fmt.Errorf("read temporary directory: %w", err)
	}
	for _, entry := range entries {
		id, _, _ := strings.Cut(entry.Name(), ".")
		if _, err := ParseID(id); err != nil {
			continue // not ours; leave it alone
		}
		lock, err := p.tryLock(id)
		if err != nil {
			continue // in progress elsewhere
		}
		err = p.backend.Delete(filepath.Join(p.cfg.Dir, "tmp", entry.Name()))
		lock.unlock()
		if err != nil {
			return fmt.Errorf("remove stale temporary %s: %w", entry.Name(), err)
		}
	}
	return nil
}

func readMeta[T any](path string) (T, error) {
	var out T
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return out, ErrNotFound
	}
	if err != nil {
		return out, fmt.Errorf("read metadata: %w", err)
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return out, fmt.Errorf("parse metadata %s: %w", path, err)
	}
	return out, nil
}

func (p *Pool) writeMeta(id string, value any) error {
	data, err := json.MarshalIndent(value, "", "  ")
	if err != nil {
		return fmt.Errorf("encode metadata for %s: %w", id, err)
	}
	return atomicfile.Write(p.metaPath(id), data, 0o640)
}

func (p *Pool) removeMeta(id string) error {
	if err := os.Remove(p.metaPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove metadata for %s: %w", id, err)
	}
	return atomicfile.SyncDir(filepath.Join(p.cfg.Dir, "meta"))
}

// metaIDs lists the IDs with metadata of the given kind, sorted.
func (p *Pool) metaIDs(kind Kind) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(p.cfg.Dir, "meta"))
	if err != nil {
		return nil, fmt.Errorf("list metadata: %w", err)
	}
	var ids []string
	for _, entry := range entries {
		id, ok := strings.CutSuffix(entry.Name(), ".json")
		if !ok {
			continue
		}
		parsed, err := ParseID(id)
		if err != nil || parsed.Kind != kind {
			continue
		}
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids, nil
}
