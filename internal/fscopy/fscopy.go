// Package fscopy copies a directory tree as fast as the filesystem allows
// while keeping everything a user can observe: contents (holes stay holes),
// modes, owners, timestamps, symlinks, hard links, FIFOs and device nodes.
// Regular files are cloned with FICLONE where the filesystem shares extents
// (btrfs, XFS), else copied in the kernel with copy_file_range over the data
// ranges SEEK_DATA/SEEK_HOLE report, else read and written. Durability is one
// syncfs(2) at the end instead of an fsync per file.
package fscopy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Options tune a copy. The zero value is valid.
type Options struct {
	// Workers copies that many regular files at once; default 2×GOMAXPROCS.
	Workers int
	// Progress, when set, is called with the bytes copied so far (from
	// several goroutines; it must be cheap and safe for concurrent use).
	Progress func(copied int64)
	// NoSync skips the final syncfs (for callers that sync themselves).
	NoSync bool
}

// Stats describes a finished copy.
type Stats struct {
	Files, Dirs, Symlinks, Others int64
	// Bytes is the sum of the regular files' apparent sizes.
	Bytes int64
	// Cloned counts files whose extents were shared with FICLONE.
	Cloned int64
}

// Size walks a tree and returns the sum of its regular files' sizes, the
// total a Progress callback counts towards.
func Size(root string) (int64, error) {
	var total int64
	err := filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			total += info.Size()
		}
		return nil
	})
	return total, err
}

type inodeKey struct{ dev, ino uint64 }

type fileJob struct {
	src, dst string
	st       unix.Stat_t
}

type copier struct {
	ctx     context.Context
	opts    Options
	stats   Stats
	copied  atomic.Int64
	links   map[inodeKey]string
	dirs    []fileJob // applied after their contents, deepest last in slice
	jobs    chan fileJob
	errOnce sync.Once
	err     error
	cancel  context.CancelFunc
}

// Tree copies the directory src to dst, which must not exist. On error the
// partial dst is left for the caller to remove (callers copy into a temporary
// name and rename on success).
func Tree(ctx context.Context, src, dst string, opts Options) (Stats, error) {
	if opts.Workers <= 0 {
		opts.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c := &copier{ctx: ctx, opts: opts, links: map[inodeKey]string{}, jobs: make(chan fileJob, 256), cancel: cancel}

	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return Stats{}, fmt.Errorf("stat source %s: %w", src, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return Stats{}, fmt.Errorf("source %s is not a directory", src)
	}

	var wg sync.WaitGroup
	for range opts.Workers {
		wg.Go(func() {
			for job := range c.jobs {
				if c.ctx.Err() != nil {
					continue
				}
				if err := c.copyRegular(job); err != nil {
					c.fail(err)
				}
			}
		})
	}
	walkErr := c.walk(src, dst, &st)
	close(c.jobs)
	wg.Wait()
	if walkErr != nil {
		c.fail(walkErr)
	}
	if c.err == nil {
		c.fail(ctx.Err())
	}
	if c.err != nil {
		return c.stats, c.err
	}
	// Directory metadata last: creating children changes a directory's mtime.
	for i := len(c.dirs) - 1; i >= 0; i-- {
		if err := applyMeta(c.dirs[i].dst, &c.dirs[i].st, false); err != nil {
			return c.stats, err
		}
	}
	c.stats.Bytes = c.copied.Load()
	if !opts.NoSync {
		if err := SyncFS(dst); err != nil {
			return c.stats, err
		}
	}
	return c.stats, nil
}

func (c *copier) fail(err error) {
	if err == nil {
		return
	}
	c.errOnce.Do(func() {
		c.err = err
		c.cancel()
	})
}

// walk creates directories and non-regular entries itself and hands regular
// files to the workers. Hard-linked files are linked here, once their first
// path has been created, so a link never races its target.
func (c *copier) walk(src, dst string, st *unix.Stat_t) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return fmt.Errorf("create directory %s: %w", dst, err)
	}
	c.stats.Dirs++
	c.dirs = append(c.dirs, fileJob{src: src, dst: dst, st: *st})

	entries, err := os.ReadDir(src)
	if err != nil {
		return fmt.Errorf("read directory %s: %w", src, err)
	}
	for _, entry := range entries {
		from, to := filepath.Join(src, entry.Name()), filepath.Join(dst, entry.Name())
		var est unix.Stat_t
		if err := unix.Lstat(from, &est); err != nil {
			return fmt.Errorf("stat %s: %w", from, err)
		}
		if err := c.entry(from, to, &est); err != nil {
			return err
		}
	}
	return nil
}

func (c *copier) entry(from, to string, st *unix.Stat_t) error {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return c.walk(from, to, st)
	case unix.S_IFREG:
		if st.Nlink > 1 {
			key := inodeKey{dev: st.Dev, ino: st.Ino}
			if first, ok := c.links[key]; ok {
				if err := os.Link(first, to); err != nil {
					return fmt.Errorf("hard link %s: %w", to, err)
				}
				return nil
			}
			c.links[key] = to
			// Copied inline so later links find the file in place.
			c.stats.Files++
			return c.copyRegular(fileJob{src: from, dst: to, st: *st})
		}
		c.stats.Files++
		select {
		case c.jobs <- fileJob{src: from, dst: to, st: *st}:
			return nil
		case <-c.ctx.Done():
			return c.ctx.Err()
		}
	case unix.S_IFLNK:
		target, err := os.Readlink(from)
		if err != nil {
			return fmt.Errorf("read symlink %s: %w", from, err)
		}
		if err := os.Symlink(target, to); err != nil {
			return fmt.Errorf("create symlink %s: %w", to, err)
		}
		c.stats.Symlinks++
		return applyMeta(to, st, true)
	case unix.S_IFIFO, unix.S_IFCHR, unix.S_IFBLK:
		if err := unix.Mknod(to, st.Mode, int(st.Rdev)); err != nil {
			return fmt.Errorf("create special file %s: %w", to, err)
		}
		c.stats.Others++
		return applyMeta(to, st, false)
	default:
		// Sockets belong to a running process; a copy of one is meaningless.
		return nil
	}
}

func (c *copier) copyRegular(job fileJob) error {
	in, err := os.Open(job.src)
	if err != nil {
		return fmt.Errorf("open %s: %w", job.src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(job.dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", job.dst, err)
	}
	cloned, err := copyContents(c.ctx, in, out, job.st.Size, c.addProgress)
	if cerr := out.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copy %s: %w", job.src, err)
	}
	if cloned {
		atomic.AddInt64(&c.stats.Cloned, 1)
		c.addProgress(job.st.Size)
	}
	return applyMeta(job.dst, &job.st, false)
}

func (c *copier) addProgress(n int64) {
	total := c.copied.Add(n)
	if c.opts.Progress != nil {
		c.opts.Progress(total)
	}
}

// copyContents clones or copies size bytes from in to out, keeping holes.
// It reports whether the whole file was cloned (progress is then the
// caller's to add).
func copyContents(ctx context.Context, in, out *os.File, size int64, progress func(int64)) (bool, error) {
	if size == 0 {
		return false, nil
	}
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err == nil {
		return true, nil
	}
	offset := int64(0)
	for offset < size {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		dataStart, err := unix.Seek(int(in.Fd()), offset, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			// No SEEK_DATA support: treat the rest as data.
			dataStart = offset
		}
		dataEnd, err := unix.Seek(int(in.Fd()), dataStart, unix.SEEK_HOLE)
		if err != nil || dataEnd > size {
			dataEnd = size
		}
		if err := copyRange(in, out, dataStart, dataEnd-dataStart, progress); err != nil {
			return false, err
		}
		offset = dataEnd
	}
	// Trailing holes: extend to the full size without writing.
	if err := out.Truncate(size); err != nil {
		return false, fmt.Errorf("truncate to %d: %w", size, err)
	}
	return false, nil
}

// copyRange copies length bytes at offset with copy_file_range, falling back
// to pread/pwrite where the kernel refuses (other filesystems, old kernels).
func copyRange(in, out *os.File, offset, length int64, progress func(int64)) error {
	inOff, outOff := offset, offset
	remaining := length
	for remaining > 0 {
		chunk := min(remaining, 1<<30)
		n, err := unix.CopyFileRange(int(in.Fd()), &inOff, int(out.Fd()), &outOff, int(chunk), 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
				return copyRangeUserspace(in, out, inOff, remaining, progress)
			}
			return fmt.Errorf("copy_file_range: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("copy_file_range: source shrank at offset %d", inOff)
		}
		remaining -= int64(n)
		progress(int64(n))
	}
	return nil
}

func copyRangeUserspace(in, out *os.File, offset, length int64, progress func(int64)) error {
	reader := io.NewSectionReader(in, offset, length)
	buf := make([]byte, 1<<20)
	pos := offset
	for {
		n, err := reader.Read(buf)
		if n > 0 {
			if _, werr := out.WriteAt(buf[:n], pos); werr != nil {
				return werr
			}
			pos += int64(n)
			progress(int64(n))
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// applyMeta gives path the owner, mode and timestamps of st. Owner first:
// chown clears set-id bits, which chmod then restores.
func applyMeta(path string, st *unix.Stat_t, symlink bool) error {
	if err := unix.Lchown(path, int(st.Uid), int(st.Gid)); err != nil && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	if !symlink {
		if err := unix.Chmod(path, st.Mode&0o7777); err != nil {
			return fmt.Errorf("chmod %s: %w", path, err)
		}
	}
	times := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, times, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times on %s: %w", path, err)
	}
	return nil
}

// SyncFS flushes the whole filesystem holding path: after it returns, every
// file written there so far is durable. One call replaces an fsync per file.
func SyncFS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open %s for syncfs: %w", path, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", path, err)
	}
	return nil
}
