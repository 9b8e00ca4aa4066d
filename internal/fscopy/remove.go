package fscopy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Inode flags of linux/fs.h (chattr +i, +a) that make unlink and rmdir
// fail with EPERM; x/sys/unix does not define them.
const (
	fsImmutableFl = 0x10
	fsAppendFl    = 0x20
)

// ErrMoved means a directory was moved while the tree was being removed:
// the removal stops rather than guess where it went. Repeating it starts
// over from the top.
var ErrMoved = errors.New("a directory was moved while the tree was being removed")

// ErrContended means a directory kept being written to while the tree was
// being removed (a pod that still has the volume mounted): the removal
// gives up rather than race the writer forever. What was removed stays
// removed; the caller retries later.
var ErrContended = errors.New("a directory kept changing while the tree was being removed")

// maxRelists bounds how often one directory is listed again because
// something was written into it, or swapped in it, after the walk had
// emptied it: past it, ErrContended. Listing again once the walk comes
// back up from a subdirectory it emptied is the normal course and not
// counted.
const maxRelists = 64

// maxAttempts bounds how often the whole tree is walked again because its
// top directory was not empty when the walk came back up to remove it.
const maxAttempts = 10

// RemoveTree is RemoveTreeContext without a deadline.
func RemoveTree(path string) error {
	return RemoveTreeContext(context.Background(), path)
}

// RemoveTreeContext removes path and everything beneath it, a tree
// someone else controls (a tenant's volume); a missing path is not an
// error. ctx is checked between entries: once it is done, the removal
// stops with ctx's error, and what was removed stays removed.
//
// os.RemoveAll holds one descriptor per level, so a chain of directories
// deeper than the open-file limit makes it fail, forever: a tenant could
// make its volume undeletable. RemoveTreeContext holds one directory
// descriptor (plus path's parent and, briefly, a child), and per level of
// the walk only the directory's identity (device and inode) and a counter,
// never its name: a chain of 255-byte names costs no more memory than one
// of 1-byte names. It goes down into the first subdirectory that is not
// empty (an empty one is removed on sight), and back up with
// openat(fd, ".."), checking that what it reached is the directory it
// came from, so a directory moved meanwhile is noticed (ErrMoved), never
// mistaken for another. Back up, it lists the directory again from the
// start, and removes the subdirectory it emptied when it meets it, by
// the name it then reads. It follows no symlink (a symlink is unlinked),
// opens no FIFO or device node, and crosses no mount (a mount inside the
// tree is an error, and what it holds is left alone). Where unlink or
// rmdir fails with EPERM it clears FS_IMMUTABLE_FL and FS_APPEND_FL on the
// entry and its directory (which needs CAP_LINUX_IMMUTABLE) and tries
// again. A directory that keeps being written to after it was emptied
// ends the removal with ErrContended (see maxRelists); a writer that only
// ever adds new names is stopped by ctx.
//
// The price is a directory's listing read again from the start each time
// the walk comes back up into it; only entries not yet removed are left in
// it, so that stays cheap (BenchmarkRemoveTree compares it with
// os.RemoveAll).
func RemoveTreeContext(ctx context.Context, path string) error {
	parent, err := unix.Open(filepath.Dir(path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove %s: open its directory: %w", path, err)
	}
	defer closeFd(parent)
	if err := removeEntry(ctx, parent, filepath.Base(path)); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// level is a directory on the way down: its identity, and how often it
// was listed again because it changed after the walk had emptied it. It
// holds no name (see RemoveTreeContext).
type level struct {
	id       inodeKey
	relisted uint32
}

// testHookDescended, when set by a test, is called each time the walk has
// gone down a level, with the number of levels it holds.
var testHookDescended func(levels int)

// testHookAscended, when set by a test, is called each time the walk has
// come back up a level, before it lists that directory again.
var testHookAscended func()

func identity(st *unix.Stat_t) inodeKey { return inodeKey{dev: st.Dev, ino: st.Ino} }

// removeEntry removes name, in the directory parent, with everything
// beneath it.
func removeEntry(ctx context.Context, parent int, name string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if gone(err) {
			return nil
		}
		return fmt.Errorf("stat: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return unlinkEntry(parent, name, &st)
	}
	for attempt := 1; ; attempt++ {
		err := removeDirTree(ctx, parent, name, &st)
		// ENOTEMPTY: something was created in the tree while it was
		// removed; walk it again, a bounded number of times.
		if !errors.Is(err, unix.ENOTEMPTY) {
			return err
		}
		if attempt == maxAttempts {
			return fmt.Errorf("%w: still not empty after %d walks: %w", ErrContended, attempt, err)
		}
	}
}

// removeDirTree removes the directory name, which st describes, from
// parent: down into the first subdirectory that is not empty, up with
// "..".
func removeDirTree(ctx context.Context, parent int, name string, st *unix.Stat_t) error {
	cur, err := openDirChecked(parent, name, st)
	if err != nil || cur == nil {
		return err
	}
	stack := []level{{id: identity(st)}}
	// cameFrom is the directory the walk just came up from: meeting it
	// again, still not empty, means someone wrote into it.
	var cameFrom inodeKey
	for {
		top := &stack[len(stack)-1]
		if top.relisted > maxRelists {
			cur.Close()
			return fmt.Errorf("%s: %w: listed again %d times", where(len(stack)), ErrContended, top.relisted)
		}
		sub, subStat, err := clearDir(ctx, cur)
		if err != nil {
			cur.Close()
			return fmt.Errorf("%s: %w", where(len(stack)), err)
		}
		if sub != "" {
			if identity(subStat) == cameFrom {
				top.relisted++
			}
			cameFrom = inodeKey{}
			child, err := openDirChecked(int(cur.Fd()), sub, subStat)
			if err == nil && child == nil {
				// It changed meanwhile: list cur again from the start
				// (clearDir stopped in the middle of a batch).
				top.relisted++
				child, err = reopenDir(cur)
				cur.Close()
				cur = child
				if err != nil {
					return fmt.Errorf("%s: %w", where(len(stack)), err)
				}
				continue
			}
			if err != nil {
				cur.Close()
				return fmt.Errorf("%s: %w", where(len(stack)), err)
			}
			cur.Close()
			cur = child
			stack = append(stack, level{id: identity(subStat)})
			if testHookDescended != nil {
				testHookDescended(len(stack))
			}
			continue
		}
		// cur is empty: leave it. Its parent, listed again from the
		// start, meets it and removes it.
		done := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if len(stack) == 0 {
			cur.Close()
			return removeDir(parent, name, done.id)
		}
		up, err := openParent(cur, stack[len(stack)-1].id)
		cur.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", where(len(stack)+1), err)
		}
		cur = up
		cameFrom = done.id
		if testHookAscended != nil {
			testHookAscended()
		}
	}
}

// where names a directory of the walk in errors by its depth: the walk
// keeps no names (a path there may be far longer than PATH_MAX anyway).
func where(depth int) string {
	if depth == 1 {
		return "the top directory"
	}
	return "a directory " + strconv.Itoa(depth-1) + " levels down"
}

// reopenDir opens dir again, to list it from the start.
func reopenDir(dir *os.File) (*os.File, error) {
	fd, err := unix.Openat(int(dir.Fd()), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("reopen directory: %w", err)
	}
	return os.NewFile(uintptr(fd), dir.Name()), nil
}

// openDirChecked opens the directory name in dir, without following a
// symlink or crossing a mount, and checks it is the one st describes. It
// returns nil, nil when the entry is gone or is no longer that directory
// (the caller lists again and sees what is there now).
func openDirChecked(dir int, name string, st *unix.Stat_t) (*os.File, error) {
	fd, err := openBeneath(dir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NONBLOCK)
	switch {
	case errors.Is(err, unix.EXDEV):
		return nil, fmt.Errorf("%s is a mount point: not crossed, not removed", name)
	case gone(err) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("open directory %s: %w", name, err)
	}
	var got unix.Stat_t
	if err := unix.Fstat(fd, &got); err != nil {
		closeFd(fd)
		return nil, fmt.Errorf("stat directory %s: %w", name, err)
	}
	if identity(&got) != identity(st) {
		closeFd(fd)
		return nil, nil
	}
	return os.NewFile(uintptr(fd), name), nil
}

// openParent goes up from dir and checks that it reached want.
func openParent(dir *os.File, want inodeKey) (*os.File, error) {
	fd, err := unix.Openat(int(dir.Fd()), "..", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open ..: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		closeFd(fd)
		return nil, fmt.Errorf("stat ..: %w", err)
	}
	if identity(&st) != want {
		closeFd(fd)
		return nil, ErrMoved
	}
	return os.NewFile(uintptr(fd), ".."), nil
}

// clearDir unlinks what is not a directory in dir, removes the empty
// subdirectories, and returns the first subdirectory it meets that is not
// empty, with its stat, or "" once dir holds none. dir is read from where
// its offset is: a directory freshly opened is read from the start, and
// holds only what has not been removed yet. ctx is checked before each
// batch of entries.
func clearDir(ctx context.Context, dir *os.File) (string, *unix.Stat_t, error) {
	fd := int(dir.Fd())
	for {
		if err := ctx.Err(); err != nil {
			return "", nil, err
		}
		names, err := dir.Readdirnames(256)
		for _, name := range names {
			var st unix.Stat_t
			if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				if gone(err) {
					continue
				}
				return "", nil, fmt.Errorf("stat %s: %w", name, err)
			}
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				removed, err := removeEmptyDir(fd, name, &st)
				if err != nil {
					return "", nil, err
				}
				if !removed {
					return name, &st, nil
				}
				continue
			}
			if err := unlinkEntry(fd, name, &st); err != nil {
				return "", nil, err
			}
		}
		if errors.Is(err, io.EOF) || (err == nil && len(names) == 0) {
			return "", nil, nil
		}
		if err != nil {
			return "", nil, fmt.Errorf("read directory: %w", err)
		}
	}
}

// removeEmptyDir removes the subdirectory name of dir if it is empty, and
// reports whether it did; false means the walk is to go down into it
// (it is not empty, is a mount point, or is no longer a directory: the
// checked open finds out which). Whatever directory is at name now is
// beneath the tree, so it is removed by name.
func removeEmptyDir(dir int, name string, st *unix.Stat_t) (bool, error) {
	err := unix.Unlinkat(dir, name, unix.AT_REMOVEDIR)
	if errors.Is(err, unix.EPERM) && clearFlags(dir, name, st) {
		err = unix.Unlinkat(dir, name, unix.AT_REMOVEDIR)
	}
	switch {
	case err == nil || gone(err):
		return true, nil
	case errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) ||
		errors.Is(err, unix.EBUSY) || errors.Is(err, unix.ENOTDIR):
		return false, nil
	default:
		return false, fmt.Errorf("remove directory %s: %w", name, err)
	}
}

// unlinkEntry unlinks name (not a directory, as st says) from dir,
// clearing inode flags that forbid it.
func unlinkEntry(dir int, name string, st *unix.Stat_t) error {
	err := unix.Unlinkat(dir, name, 0)
	if errors.Is(err, unix.EPERM) && clearFlags(dir, name, st) {
		err = unix.Unlinkat(dir, name, 0)
	}
	if err != nil && !gone(err) {
		return fmt.Errorf("unlink %s: %w", name, err)
	}
	return nil
}

// removeDir removes the empty directory name from dir, if it is still
// the directory id removed from beneath (an entry swapped in meanwhile is
// left alone: dir is outside the tree), clearing inode flags that forbid
// it.
func removeDir(dir int, name string, id inodeKey) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if gone(err) {
			return nil
		}
		return fmt.Errorf("stat %s: %w", name, err)
	}
	if identity(&st) != id {
		return nil
	}
	err := unix.Unlinkat(dir, name, unix.AT_REMOVEDIR)
	if errors.Is(err, unix.EPERM) && clearFlags(dir, name, &st) {
		err = unix.Unlinkat(dir, name, unix.AT_REMOVEDIR)
	}
	if err != nil && !gone(err) {
		return fmt.Errorf("remove directory %s: %w", name, err)
	}
	return nil
}

// clearFlags clears FS_IMMUTABLE_FL and FS_APPEND_FL on the directory dir
// and on its entry name (described by st), and reports whether any was
// cleared. Only regular files and directories are opened for the ioctl,
// and only after an O_PATH open (which opens nothing) showed the entry is
// still the inode st describes: a FIFO or a device node swapped in is never
// opened, so the ioctl never reaches a device driver.
func clearFlags(dir int, name string, st *unix.Stat_t) bool {
	cleared := clearFlagsFd(dir)
	kind := st.Mode & unix.S_IFMT
	if kind != unix.S_IFREG && kind != unix.S_IFDIR {
		return cleared
	}
	pathFd, err := openBeneath(dir, name, unix.O_PATH)
	if err != nil {
		return cleared
	}
	defer closeFd(pathFd)
	var got unix.Stat_t
	if err := unix.Fstat(pathFd, &got); err != nil || identity(&got) != identity(st) || got.Mode&unix.S_IFMT != kind {
		return cleared
	}
	fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(pathFd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return cleared
	}
	defer closeFd(fd)
	return clearFlagsFd(fd) || cleared
}

// clearFlagsFd clears FS_IMMUTABLE_FL and FS_APPEND_FL on fd, reporting
// whether either was set and is now cleared.
func clearFlagsFd(fd int) bool {
	flags, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil || flags&(fsImmutableFl|fsAppendFl) == 0 {
		return false
	}
	return unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(flags&^(fsImmutableFl|fsAppendFl))) == nil
}
