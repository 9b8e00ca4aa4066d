// Package fscopy copies a directory tree that someone else controls (a
// tenant's volume) as fast as the filesystem allows, keeping everything a
// user can observe: contents (holes stay holes), modes, owners, timestamps,
// symlinks, hard links, FIFOs and device nodes. Regular files are cloned
// with FICLONE where the filesystem shares extents (btrfs, XFS), else copied
// in the kernel with copy_file_range over the data ranges SEEK_DATA and
// SEEK_HOLE report, else read and written. Durability is one syncfs(2) at
// the end instead of an fsync per file.
//
// The source is walked by file descriptor, never by path, because its owner
// may swap anything for anything while the copy runs (the docker cp
// CVE-2018-15664 class of bug):
//   - every entry is opened relative to its parent directory's descriptor by
//     its single name with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|
//     RESOLVE_NO_XDEV) (O_NOFOLLOW where openat2 is missing), so no symlink
//     is followed and no other mount is entered;
//   - a regular file is first opened O_PATH (which opens nothing: no FIFO can
//     block, no device node is touched), checked with fstat to be the regular
//     file the walk saw (same device and inode), and only then reopened for
//     reading through /proc/self/fd, which names that inode and no path;
//   - directories are opened O_DIRECTORY|O_NONBLOCK and checked likewise;
//   - symlinks are read (readlinkat), never followed; FIFOs and devices are
//     recreated (mknodat), never opened.
//
// An entry that vanishes or changes kind between the directory read and the
// open is copied as what was opened, or skipped if it is gone: the copy of a
// tree being modified is some state of each file, never a byte from outside.
package fscopy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"unsafe"

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
	// IntoExisting copies into dst, an existing empty directory (a freshly
	// created subvolume, say), instead of creating it.
	IntoExisting bool
}

// Stats describes a finished copy.
type Stats struct {
	Files, Dirs, Symlinks, Others int64
	// Bytes is the sum of the regular files' sizes as copied.
	Bytes int64
	// Cloned counts files whose extents were shared with FICLONE.
	Cloned int64
	// Changed counts entries that changed or vanished while being copied.
	Changed int64
}

const (
	// resolve keeps every lookup to the one name below the directory.
	resolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV
	// maxDepth bounds the directory descriptors held open along a path.
	maxDepth = 4096
)

// openat2Missing is set once openat2 turns out unsupported (kernel < 5.6).
var openat2Missing atomic.Bool

// openBeneath opens name (one path component) relative to the directory dirfd
// without following symlinks or crossing mounts.
func openBeneath(dirfd int, name string, flags int) (int, error) {
	flags |= unix.O_CLOEXEC | unix.O_NOFOLLOW
	if !openat2Missing.Load() {
		fd, err := unix.Openat2(dirfd, name, &unix.OpenHow{Flags: uint64(flags), Resolve: resolve})
		if !errors.Is(err, unix.ENOSYS) {
			return fd, err
		}
		openat2Missing.Store(true)
	}
	return unix.Openat(dirfd, name, flags, 0)
}

// Size walks a tree by descriptor and returns the sum of its regular files'
// sizes, the total a Progress callback counts towards.
func Size(root string) (int64, error) {
	var total int64
	err := walkNames(root, func(st *unix.Stat_t) {
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			total += st.Size
		}
	})
	return total, err
}

// Usage walks a tree by descriptor and returns the bytes allocated to it
// (holes excluded) and the number of inodes.
func Usage(root string) (bytes, inodes int64, err error) {
	err = walkNames(root, func(st *unix.Stat_t) {
		bytes += st.Blocks * 512
		inodes++
	})
	return bytes, inodes, err
}

// walkNames calls visit for root and every entry beneath it (regular files
// get their stat; others too), descending by descriptor.
func walkNames(root string, visit func(*unix.Stat_t)) error {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", root, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		closeFd(fd)
		return fmt.Errorf("stat %s: %w", root, err)
	}
	visit(&st)
	return walkDir(fd, 0, func(_ int, _ string, st *unix.Stat_t) { visit(st) })
}

// walkDir visits every entry under the directory fd (which it closes) with
// lstat semantics, descending into subdirectories by descriptor.
func walkDir(fd, depth int, visit func(dirfd int, name string, st *unix.Stat_t)) error {
	dir := os.NewFile(uintptr(fd), "")
	defer dir.Close()
	if depth > maxDepth {
		return fmt.Errorf("directories nested more than %d deep", maxDepth)
	}
	for {
		names, err := dir.Readdirnames(1024)
		for _, name := range names {
			var st unix.Stat_t
			if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				if gone(err) {
					continue
				}
				return fmt.Errorf("stat %s: %w", name, err)
			}
			visit(fd, name, &st)
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				continue
			}
			child, err := openBeneath(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NONBLOCK)
			if err != nil {
				if gone(err) || changed(err) {
					continue
				}
				return fmt.Errorf("open directory %s: %w", name, err)
			}
			if err := walkDir(child, depth+1, visit); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) || (err == nil && len(names) == 0) || gone(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read directory: %w", err)
		}
	}
}

// closeFd closes a descriptor whose close has nothing to report (a
// directory or a file only read, or one whose error path is already taken).
func closeFd(fd int) { _ = unix.Close(fd) }

// gone: the entry vanished between being listed and being used.
func gone(err error) bool { return errors.Is(err, unix.ENOENT) }

// changed: the entry is no longer the kind it was listed as (a directory
// became a file or a symlink; a mount appeared).
func changed(err error) bool {
	return errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV)
}

type inodeKey struct{ dev, ino uint64 }

type fileJob struct {
	in, out *os.File
	st      unix.Stat_t
}

type copier struct {
	ctx     context.Context
	opts    Options
	stats   Stats
	copied  atomic.Int64
	cloned  atomic.Int64
	changed atomic.Int64
	// links maps a hard-linked source inode to its first copy, as a path
	// relative to dstRoot (the destination is private to the copier).
	links   map[inodeKey]string
	dstRoot int
	jobs    chan fileJob
	errOnce sync.Once
	err     error
	cancel  context.CancelFunc
}

// Tree copies the directory src to dst, which must not exist (or, with
// IntoExisting, must be an empty directory). src and dst themselves are
// trusted paths (the pool's); everything beneath src is not. On error the
// partial dst is left for the caller to remove (callers copy into a
// temporary name and rename on success).
func Tree(ctx context.Context, src, dst string, opts Options) (Stats, error) {
	if opts.Workers <= 0 {
		opts.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c := &copier{ctx: ctx, opts: opts, links: map[inodeKey]string{}, jobs: make(chan fileJob, 128), cancel: cancel}

	srcFd, err := unix.Open(src, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return Stats{}, fmt.Errorf("open source %s: %w", src, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(srcFd, &st); err != nil {
		closeFd(srcFd)
		return Stats{}, fmt.Errorf("stat source %s: %w", src, err)
	}
	if !opts.IntoExisting {
		if err := unix.Mkdir(dst, 0o700); err != nil {
			closeFd(srcFd)
			return Stats{}, fmt.Errorf("create directory %s: %w", dst, err)
		}
	}
	dstFd, err := unix.Open(dst, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		closeFd(srcFd)
		return Stats{}, fmt.Errorf("open destination %s: %w", dst, err)
	}
	c.dstRoot = dstFd
	defer closeFd(dstFd)

	var wg sync.WaitGroup
	for range opts.Workers {
		wg.Go(func() {
			for job := range c.jobs {
				if c.ctx.Err() == nil {
					if err := c.copyRegular(job); err != nil {
						c.fail(err)
					}
				}
				job.in.Close()
				job.out.Close()
			}
		})
	}
	// The root's own metadata is applied last, after the workers finished.
	dup, err := unix.Dup(dstFd)
	if err == nil {
		c.stats.Dirs++
		err = c.copyDir(srcFd, dup, "", 0, nil)
	} else {
		closeFd(srcFd)
	}
	close(c.jobs)
	wg.Wait()
	c.fail(err)
	if c.err == nil {
		c.fail(ctx.Err())
	}
	c.stats.Bytes, c.stats.Cloned, c.stats.Changed = c.copied.Load(), c.cloned.Load(), c.changed.Load()
	if c.err != nil {
		return c.stats, c.err
	}
	if err := applyMetaFd(dstFd, &st); err != nil {
		return c.stats, fmt.Errorf("set metadata of %s: %w", dst, err)
	}
	if !opts.NoSync {
		if err := unix.Syncfs(dstFd); err != nil {
			return c.stats, fmt.Errorf("syncfs %s: %w", dst, err)
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

// copyDir copies the entries of the source directory srcFd into dstFd (both
// closed on return). rel is the directory's path relative to the copy's
// root, for hard links and messages. dirStat, when set, is applied to dstFd
// once its entries are in place (creating them changes its times).
func (c *copier) copyDir(srcFd, dstFd int, rel string, depth int, dirStat *unix.Stat_t) error {
	src := os.NewFile(uintptr(srcFd), rel)
	defer src.Close()
	defer closeFd(dstFd)
	if depth > maxDepth {
		return fmt.Errorf("%s: directories nested more than %d deep", rel, maxDepth)
	}
	for {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		names, err := src.Readdirnames(1024)
		for _, name := range names {
			if err := c.entry(srcFd, dstFd, name, path.Join(rel, name), depth); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) || (err == nil && len(names) == 0) {
			break
		}
		if gone(err) {
			c.changed.Add(1) // removed while being read: what was listed is copied
			break
		}
		if err != nil {
			return fmt.Errorf("read directory %q: %w", rel, err)
		}
	}
	if dirStat != nil {
		if err := applyMetaFd(dstFd, dirStat); err != nil {
			return fmt.Errorf("set metadata of %q: %w", rel, err)
		}
	}
	return nil
}

// entry copies one directory entry, by what it is when opened.
func (c *copier) entry(srcDir, dstDir int, name, rel string, depth int) error {
	var st unix.Stat_t
	if err := unix.Fstatat(srcDir, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if gone(err) {
			c.changed.Add(1)
			return nil
		}
		return fmt.Errorf("stat %q: %w", rel, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		fd, err := openBeneath(srcDir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NONBLOCK)
		if err != nil {
			if gone(err) || changed(err) {
				// Swapped for something else after the listing: copy what
				// is there now, once, without descending.
				c.changed.Add(1)
				return c.nonDirectory(srcDir, dstDir, name, rel)
			}
			return fmt.Errorf("open directory %q: %w", rel, err)
		}
		var opened unix.Stat_t
		if err := unix.Fstat(fd, &opened); err != nil {
			closeFd(fd)
			return fmt.Errorf("stat directory %q: %w", rel, err)
		}
		if opened.Ino != st.Ino || opened.Dev != st.Dev {
			c.changed.Add(1) // another directory, still beneath: copy it
		}
		if err := unix.Mkdirat(dstDir, name, 0o700); err != nil {
			closeFd(fd)
			return fmt.Errorf("create directory %q: %w", rel, err)
		}
		out, err := unix.Openat(dstDir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			closeFd(fd)
			return fmt.Errorf("open new directory %q: %w", rel, err)
		}
		c.stats.Dirs++
		return c.copyDir(fd, out, rel, depth+1, &opened)
	default:
		return c.nonDirectory(srcDir, dstDir, name, rel)
	}
}

// nonDirectory copies an entry that is not (or no longer) a directory.
func (c *copier) nonDirectory(srcDir, dstDir int, name, rel string) error {
	// O_PATH opens no file: a FIFO does not block, a device is not touched.
	pathFd, err := openBeneath(srcDir, name, unix.O_PATH)
	if err != nil {
		if gone(err) || changed(err) {
			c.changed.Add(1)
			return nil
		}
		return fmt.Errorf("open %q: %w", rel, err)
	}
	defer closeFd(pathFd)
	var st unix.Stat_t
	if err := unix.Fstat(pathFd, &st); err != nil {
		return fmt.Errorf("stat %q: %w", rel, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return c.regular(pathFd, dstDir, name, rel, &st)
	case unix.S_IFLNK:
		target, err := readlinkFd(pathFd)
		if err != nil {
			return fmt.Errorf("read symlink %q: %w", rel, err)
		}
		if err := unix.Symlinkat(target, dstDir, name); err != nil {
			return fmt.Errorf("create symlink %q: %w", rel, err)
		}
		c.stats.Symlinks++
		return applyMetaAt(dstDir, name, &st, true)
	case unix.S_IFIFO, unix.S_IFCHR, unix.S_IFBLK:
		if err := unix.Mknodat(dstDir, name, st.Mode, int(st.Rdev)); err != nil {
			return fmt.Errorf("create special file %q: %w", rel, err)
		}
		c.stats.Others++
		return applyMetaAt(dstDir, name, &st, false)
	case unix.S_IFDIR:
		// It became a directory after all; it is copied empty rather than
		// walked again, which a determined swapper could keep forcing.
		c.changed.Add(1)
		if err := unix.Mkdirat(dstDir, name, 0o700); err != nil {
			return fmt.Errorf("create directory %q: %w", rel, err)
		}
		return applyMetaAt(dstDir, name, &st, false)
	default:
		// Sockets belong to a running process; a copy of one is meaningless.
		return nil
	}
}

// regular copies the regular file held by pathFd (an O_PATH descriptor).
func (c *copier) regular(pathFd, dstDir int, name, rel string, st *unix.Stat_t) error {
	key := inodeKey{dev: st.Dev, ino: st.Ino}
	if st.Nlink > 1 {
		if first, ok := c.links[key]; ok {
			if err := unix.Linkat(c.dstRoot, first, dstDir, name, 0); err != nil {
				return fmt.Errorf("hard link %q: %w", rel, err)
			}
			return nil
		}
	}
	// Reopen for reading the very inode pathFd holds: /proc/self/fd/N names
	// the open file, not a path the tenant can change.
	inFd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(pathFd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		if gone(err) {
			c.changed.Add(1)
			return nil
		}
		return fmt.Errorf("open %q for reading: %w", rel, err)
	}
	var opened unix.Stat_t
	if err := unix.Fstat(inFd, &opened); err != nil || opened.Ino != st.Ino || opened.Dev != st.Dev || opened.Mode&unix.S_IFMT != unix.S_IFREG {
		closeFd(inFd)
		if err == nil {
			err = errors.New("reopened a different inode")
		}
		return fmt.Errorf("reopen %q: %w", rel, err)
	}
	outFd, err := unix.Openat(dstDir, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		closeFd(inFd)
		return fmt.Errorf("create %q: %w", rel, err)
	}
	c.stats.Files++
	job := fileJob{in: os.NewFile(uintptr(inFd), rel), out: os.NewFile(uintptr(outFd), rel), st: opened}
	if st.Nlink > 1 {
		// Copied inline so later links find the file in place.
		c.links[key] = rel
		err := c.copyRegular(job)
		job.in.Close()
		job.out.Close()
		return err
	}
	select {
	case c.jobs <- job:
		return nil
	case <-c.ctx.Done():
		job.in.Close()
		job.out.Close()
		return c.ctx.Err()
	}
}

func (c *copier) copyRegular(job fileJob) error {
	cloned, size, err := copyContents(c.ctx, job.in, job.out, job.st.Size, c.addProgress)
	if err != nil {
		return fmt.Errorf("copy %q: %w", job.in.Name(), err)
	}
	if cloned {
		c.cloned.Add(1)
		c.addProgress(size)
	}
	if size != job.st.Size {
		c.changed.Add(1) // it shrank while being copied
	}
	return applyMetaFd(int(job.out.Fd()), &job.st)
}

func (c *copier) addProgress(n int64) {
	total := c.copied.Add(n)
	if c.opts.Progress != nil {
		c.opts.Progress(total)
	}
}

// copyContents clones or copies up to size bytes from in to out, keeping
// holes. It returns whether the whole file was cloned (progress is then the
// caller's to add) and the size copied, which is less than size when the
// file shrank meanwhile.
func copyContents(ctx context.Context, in, out *os.File, size int64, progress func(int64)) (bool, int64, error) {
	if size == 0 {
		return false, 0, nil
	}
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err == nil {
		var st unix.Stat_t
		if err := unix.Fstat(int(out.Fd()), &st); err != nil {
			return false, 0, err
		}
		return true, st.Size, nil
	}
	offset := int64(0)
	for offset < size {
		if err := ctx.Err(); err != nil {
			return false, 0, err
		}
		dataStart, err := unix.Seek(int(in.Fd()), offset, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains (or the file shrank)
		}
		if err != nil {
			// No SEEK_DATA support: treat the rest as data.
			dataStart = offset
		}
		if dataStart >= size {
			break
		}
		dataEnd, err := unix.Seek(int(in.Fd()), dataStart, unix.SEEK_HOLE)
		if err != nil || dataEnd > size {
			dataEnd = size
		}
		end, err := copyRange(in, out, dataStart, dataEnd-dataStart, progress)
		if err != nil {
			return false, 0, err
		}
		if end < dataEnd {
			size = end // the source shrank under us: it ends here now
			break
		}
		offset = dataEnd
	}
	// Trailing holes: extend to the full size without writing.
	if err := out.Truncate(size); err != nil {
		return false, 0, fmt.Errorf("truncate to %d: %w", size, err)
	}
	return false, size, nil
}

// copyRange copies length bytes at offset with copy_file_range, falling back
// to pread/pwrite where the kernel refuses (other filesystems, old kernels).
// It returns the offset reached, short of offset+length at end of file.
func copyRange(in, out *os.File, offset, length int64, progress func(int64)) (int64, error) {
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
			return inOff, fmt.Errorf("copy_file_range: %w", err)
		}
		if n == 0 {
			return inOff, nil // end of file
		}
		remaining -= int64(n)
		progress(int64(n))
	}
	return inOff, nil
}

func copyRangeUserspace(in, out *os.File, offset, length int64, progress func(int64)) (int64, error) {
	reader := io.NewSectionReader(in, offset, length)
	buf := make([]byte, 1<<20)
	pos := offset
	for {
		n, err := reader.Read(buf)
		if n > 0 {
			if _, werr := out.WriteAt(buf[:n], pos); werr != nil {
				return pos, werr
			}
			pos += int64(n)
			progress(int64(n))
		}
		if errors.Is(err, io.EOF) {
			return pos, nil
		}
		if err != nil {
			return pos, err
		}
	}
}

// readlinkFd reads the target of the symlink an O_PATH descriptor holds.
func readlinkFd(fd int) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// applyMetaFd gives the open file fd the owner, mode and timestamps of st.
// Owner first: chown clears set-id bits, which chmod then restores.
func applyMetaFd(fd int, st *unix.Stat_t) error {
	if err := unix.Fchown(fd, int(st.Uid), int(st.Gid)); err != nil && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(fd, st.Mode&0o7777); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return futimens(fd, st)
}

// applyMetaAt does the same for name in the destination directory dirfd
// (symlinks and special files, which are not opened).
func applyMetaAt(dirfd int, name string, st *unix.Stat_t, symlink bool) error {
	if err := unix.Fchownat(dirfd, name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("chown %s: %w", name, err)
	}
	if !symlink {
		if err := unix.Fchmodat(dirfd, name, st.Mode&0o7777, 0); err != nil {
			return fmt.Errorf("chmod %s: %w", name, err)
		}
	}
	times := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(dirfd, name, times, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times on %s: %w", name, err)
	}
	return nil
}

// futimens sets an open file's times with nanoseconds (utimensat with a
// NULL path, which golang.org/x/sys does not wrap).
func futimens(fd int, st *unix.Stat_t) error {
	times := [2]unix.Timespec{st.Atim, st.Mtim}
	_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&times[0])), 0, 0, 0)
	if errno != 0 {
		return fmt.Errorf("set times: %w", errno)
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
