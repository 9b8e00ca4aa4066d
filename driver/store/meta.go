package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Metadata is meta/<id>.json, one file per object. It is read and written
// by descriptor relative to meta/ opened beneath the pool's root, so a
// symlinked meta/ or a symlink, FIFO or directory planted as an object's
// metadata is refused (ErrForeign), never followed; and a file is trusted
// only for the object it was asked for: its "id" must be that ID, so no
// path or name is ever taken from a file's contents.

// maxMetaSize bounds a metadata read: ours are a few hundred bytes.
const maxMetaSize = 1 << 20

func metaName(id string) string { return id + ".json" }

// readMeta reads the metadata of id into a T.
func readMeta[T any](p *Pool, id string) (T, error) {
	var out T
	f, err := p.openKind("meta/"+metaName(id), unix.O_RDONLY, unix.S_IFREG)
	if errors.Is(err, os.ErrNotExist) {
		return out, ErrNotFound
	}
	if err != nil {
		return out, fmt.Errorf("read metadata of %s: %w", id, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxMetaSize+1))
	if err != nil {
		return out, fmt.Errorf("read metadata of %s: %w", id, err)
	}
	if len(data) > maxMetaSize {
		return out, fmt.Errorf("metadata of %s: %w: larger than %d bytes", id, ErrForeign, maxMetaSize)
	}
	// The pool replaces metadata atomically: a file that does not parse was
	// not written by a pool.
	var named struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(data, &named); err != nil {
		return out, fmt.Errorf("metadata of %s: %w: %w", id, ErrForeign, err)
	}
	if named.ID != id {
		return out, fmt.Errorf("metadata of %s: %w: it names object %q", id, ErrForeign, named.ID)
	}
	if err := json.Unmarshal(data, &out); err != nil {
		return out, fmt.Errorf("metadata of %s: %w: %w", id, ErrForeign, err)
	}
	return out, nil
}

// writeMeta replaces id's metadata atomically and durably: a temporary in
// meta/ (created O_EXCL, so nothing planted is written through), fsynced,
// renamed over the old file (rename replaces a symlink, never follows it),
// and meta/ fsynced.
func (p *Pool) writeMeta(id string, value any) error {
	data, err := json.MarshalIndent(value, "", "  ")
	if err != nil {
		return fmt.Errorf("encode metadata for %s: %w", id, err)
	}
	dir, err := p.openDir("meta")
	if err != nil {
		return fmt.Errorf("write metadata for %s: %w", id, err)
	}
	defer dir.Close()
	dirfd := int(dir.Fd())
	// The name cleanMetaTemps recognises.
	tmpName := "." + metaName(id) + ".tmp-" + strconv.FormatUint(rand.Uint64(), 36)
	fd, err := unix.Openat(dirfd, tmpName, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o640)
	if err != nil {
		return fmt.Errorf("create metadata temporary for %s: %w", id, err)
	}
	tmp := os.NewFile(uintptr(fd), tmpName)
	err = writeAndSync(tmp, data)
	if closeErr := tmp.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = unix.Renameat(dirfd, tmpName, dirfd, metaName(id))
	}
	if err != nil {
		_ = unix.Unlinkat(dirfd, tmpName, 0)
		return fmt.Errorf("write metadata for %s: %w", id, err)
	}
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("fsync metadata directory: %w", err)
	}
	return nil
}

func writeAndSync(f *os.File, data []byte) error {
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Chmod(0o640); err != nil { // the umask applied at creation
		return err
	}
	return f.Sync()
}

// removeMeta removes id's metadata durably; missing metadata is not an error.
func (p *Pool) removeMeta(id string) error {
	dir, err := p.openDir("meta")
	if err != nil {
		return fmt.Errorf("remove metadata for %s: %w", id, err)
	}
	defer dir.Close()
	// unlinkat removes whatever is there, a planted symlink included, and
	// follows nothing.
	if err := unix.Unlinkat(int(dir.Fd()), metaName(id), 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove metadata for %s: %w", id, err)
	}
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("fsync metadata directory: %w", err)
	}
	return nil
}

// metaNames lists meta/.
func (p *Pool) metaNames() ([]string, error) {
	dir, err := p.openDir("meta")
	if err != nil {
		return nil, fmt.Errorf("list metadata: %w", err)
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("list metadata: %w", err)
	}
	return names, nil
}

// metaIDs lists the IDs with metadata of the given kind, sorted.
func (p *Pool) metaIDs(kind Kind) ([]string, error) {
	names, err := p.metaNames()
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, name := range names {
		id, ok := strings.CutSuffix(name, ".json")
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

// listMeta reads the metadata of every object of a kind. Metadata another
// writer planted (ErrForeign) is logged and left out: it is not the pool's,
// and must not stop the pool from serving its own objects.
func listMeta[T any](p *Pool, kind Kind) ([]T, error) {
	ids, err := p.metaIDs(kind)
	if err != nil {
		return nil, err
	}
	objects := make([]T, 0, len(ids))
	for _, id := range ids {
		obj, err := readMeta[T](p, id)
		switch {
		case errors.Is(err, ErrNotFound):
			continue // deleted meanwhile
		case errors.Is(err, ErrForeign):
			klog.ErrorS(err, "Ignoring metadata the pool did not write", "pool", p.cfg.Dir, "id", id)
			continue
		case err != nil:
			return nil, err
		}
		objects = append(objects, obj)
	}
	return objects, nil
}

// metaState reads just the state of an object's metadata.
func (p *Pool) metaState(id string) (State, error) {
	meta, err := readMeta[struct {
		State State `json:"state"`
	}](p, id)
	return meta.State, err
}

// cleanMetaTemps removes the temporaries of metadata writes that crashed
// before their rename (".<id>.json.tmp-*"). Every metadata write happens
// under the object's lock, so a temporary whose lock is free is dead.
func (p *Pool) cleanMetaTemps() error {
	dir, err := p.openDir("meta")
	if err != nil {
		return fmt.Errorf("clean metadata temporaries: %w", err)
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("read metadata directory: %w", err)
	}
	var errs []error
	for _, name := range names {
		rest, ok := strings.CutPrefix(name, ".")
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
		if errors.Is(err, ErrInFlight) {
			continue // being written right now
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("stale metadata temporary %s: %w", name, err))
			continue
		}
		err = unix.Unlinkat(int(dir.Fd()), name, 0)
		lock.unlock()
		if err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove stale metadata temporary %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}
