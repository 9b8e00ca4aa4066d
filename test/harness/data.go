package harness

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// DataFile is the file WriteData writes in a volume.
const DataFile = "data.bin"

// Ledger remembers what tests wrote through the harness's kubelet emulation
// and which snapshots were cut from it, so that the data invariant can hash
// volumes against what they must hold. It is safe for concurrent use.
type Ledger struct {
	mu sync.Mutex
	// volumes maps a backend volume ID to the TreeHash of its files after
	// the last WriteData.
	volumes map[string]string
	// snapshots maps "namespace/name" of a VolumeSnapshot to the hash its
	// source volume had when the snapshot was created: what every restore
	// of it must hold.
	snapshots map[string]string
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger {
	return &Ledger{volumes: map[string]string{}, snapshots: map[string]string{}}
}

// Wrote records that the volume now holds files hashing to hash.
func (l *Ledger) Wrote(volumeID, hash string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.volumes[volumeID] = hash
}

// Cut records that the VolumeSnapshot namespace/name was created of the
// volume sourceVolumeID; call it when creating the snapshot, while nothing
// writes to the source. It reports whether the source's content is known
// (written through WriteData); if not, restores of the snapshot are not
// hashed.
func (l *Ledger) Cut(namespace, name, sourceVolumeID string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	hash, ok := l.volumes[sourceVolumeID]
	if ok {
		l.snapshots[namespace+"/"+name] = hash
	}
	return ok
}

// VolumeHash is the hash the volume held after its last WriteData.
func (l *Ledger) VolumeHash(volumeID string) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	hash, ok := l.volumes[volumeID]
	return hash, ok
}

// SnapshotHash is the hash the snapshot's source held when it was cut.
func (l *Ledger) SnapshotHash(namespace, name string) (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	hash, ok := l.snapshots[namespace+"/"+name]
	return hash, ok
}

// WriteData plays a pod on node writing data to DataFile in the volume
// (stage, publish, write, fsync, unpublish) and records the hash of the
// volume's whole tree in e.Data, which it returns.
func (e *Env) WriteData(ctx context.Context, node, volumeID string, data []byte) (string, error) {
	var hash string
	err := e.withPublished(ctx, node, volumeID, func(target string) error {
		if err := writeSynced(filepath.Join(target, DataFile), data); err != nil {
			return err
		}
		var err error
		hash, err = TreeHash(target)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("write data to volume %s on %s: %w", volumeID, node, err)
	}
	e.Data.Wrote(volumeID, hash)
	return hash, nil
}

// HashVolume publishes the volume on node and returns the TreeHash of its
// files.
func (e *Env) HashVolume(ctx context.Context, node, volumeID string) (string, error) {
	var hash string
	err := e.withPublished(ctx, node, volumeID, func(target string) error {
		var err error
		hash, err = TreeHash(target)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("hash volume %s on %s: %w", volumeID, node, err)
	}
	return hash, nil
}

// withPublished runs use with the volume published on node under a fresh
// directory, then unpublishes it.
func (e *Env) withPublished(ctx context.Context, node, volumeID string, use func(target string) error) error {
	n, ok := e.Nodes[node]
	if !ok {
		return fmt.Errorf("no worker %q in this environment", node)
	}
	if err := os.MkdirAll(filepath.Join(e.Dir, "publish"), 0o750); err != nil {
		return err
	}
	dir, err := os.MkdirTemp(filepath.Join(e.Dir, "publish"), node+"-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	target, unpublish, err := n.Publish(ctx, volumeID, dir)
	if err != nil {
		return err
	}
	defer unpublish(context.WithoutCancel(ctx))
	return use(target)
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return f.Close()
}

// TreeHash digests every file, directory and symlink under root (names,
// kinds, symlink targets and file contents, in lexical order; not modes or
// times), so two trees hash alike exactly when a reader sees the same data.
func TreeHash(root string) (string, error) {
	digest := sha256.New()
	err := filepath.WalkDir(root, func(path string, entry fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		switch {
		case entry.Type().IsDir():
			_, _ = fmt.Fprintf(digest, "d %q\n", rel)
		case entry.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			_, _ = fmt.Fprintf(digest, "l %q %q\n", rel, link)
		case entry.Type().IsRegular():
			sum, size, err := fileHash(path)
			if err != nil {
				return err
			}
			_, _ = fmt.Fprintf(digest, "f %q %d %s\n", rel, size, sum)
		default:
			_, _ = fmt.Fprintf(digest, "o %q %v\n", rel, entry.Type())
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("hash tree %s: %w", root, err)
	}
	return hex.EncodeToString(digest.Sum(nil)), nil
}

func fileHash(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	digest := sha256.New()
	size, err := io.Copy(digest, f)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(digest.Sum(nil)), size, nil
}
