package fscopy

import (
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

// RemoveTree removes path and everything beneath it, a tree someone else
// controls (a tenant's volume); a missing path is not an error.
//
// os.RemoveAll holds one descriptor per level, so a chain of directories
// deeper than the open-file limit makes it fail, forever: a tenant could
// make its volume undeletable. RemoveTree holds one directory descriptor
// (plus path's parent and, briefly, a child): it goes down into the first
// subdirectory it finds, and back up with openat(fd, ".."), checking that
// what it reached is the directory it came from (device and inode, kept on
// a stack in memory), so a directory moved meanwhile is noticed
// (ErrMoved), never mistaken for another. It follows no symlink (a symlink
// is unlinked), opens no FIFO or device node, and crosses no mount (a
// mount inside the tree is an error, and what it holds is left alone).
// Where unlink or rmdir fails with EPERM it clears FS_IMMUTABLE_FL and
// FS_APPEND_FL on the entry and its directory (which needs
// CAP_LINUX_IMMUTABLE) and tries again.
//
// The price is a directory's listing read again from the start each time
// the walk comes back up into it; only entries not yet removed are left in
// it, so that stays cheap (BenchmarkRemoveTree compares it with
// os.RemoveAll).
func RemoveTree(path string) error {
	parent, err := unix.Open(filepath.Dir(path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove %s: open its directory: %w", path, err)
	}
	defer closeFd(parent)
	if err := removeEntry(parent, filepath.Base(path)); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// frame is a directory on the way down: its name in its parent and its
// identity.
type frame struct {
	name string
	id   inodeKey
}

func identity(st *unix.Stat_t) inodeKey { return inodeKey{dev: st.Dev, ino: st.Ino} }

// removeEntry removes name, in the directory parent, with everything
// beneath it.
func removeEntry(parent int, name string) error {
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
	for attempt := 0; ; attempt++ {
		err := removeDirTree(parent, name, &st)
		// ENOTEMPTY: something was created in the tree while it was
		// removed; walk it again (a bounded number of times).
		if !errors.Is(err, unix.ENOTEMPTY) || attempt == 10 {
			return err
		}
	}
}

// removeDirTree removes the directory name, which st describes, from
// parent: down into the first subdirectory found, up with "..".
func removeDirTree(parent int, name string, st *unix.Stat_t) error {
	cur, err := openDirChecked(parent, name, st)
	if err != nil || cur == nil {
		return err
	}
	stack := []frame{{name: name, id: identity(st)}}
	for {
		sub, subStat, err := clearDir(cur)
		if err != nil {
			cur.Close()
			return fmt.Errorf("%s: %w", stackPath(stack), err)
		}
		if sub != "" {
			child, err := openDirChecked(int(cur.Fd()), sub, subStat)
			if err == nil && child == nil {
				// It changed meanwhile: list cur again from the start
				// (clearDir stopped in the middle of a batch).
				child, err = reopenDir(cur)
				cur.Close()
				cur = child
				if err != nil {
					return fmt.Errorf("%s: %w", stackPath(stack), err)
				}
				continue
			}
			if err != nil {
				cur.Close()
				return fmt.Errorf("%s/%s: %w", stackPath(stack), sub, err)
			}
			cur.Close()
			cur = child
			stack = append(stack, frame{name: sub, id: identity(subStat)})
			continue
		}
		// cur is empty: leave it, and remove it from its parent.
		done := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if len(stack) == 0 {
			cur.Close()
			return removeDir(parent, done)
		}
		up, err := openParent(cur, stack[len(stack)-1].id)
		cur.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", stackPath(append(stack, done)), err)
		}
		cur = up
		if err := removeDir(int(cur.Fd()), done); err != nil && !errors.Is(err, unix.ENOTEMPTY) {
			cur.Close()
			return fmt.Errorf("%s/%s: %w", stackPath(stack), done.name, err)
		}
		// ENOTEMPTY: something was created in it meanwhile; cur, freshly
		// opened, is listed from the start and the walk goes down again.
	}
}

// reopenDir opens dir again, to list it from the start.
func reopenDir(dir *os.File) (*os.File, error) {
	fd, err := unix.Openat(int(dir.Fd()), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("reopen directory: %w", err)
	}
	return os.NewFile(uintptr(fd), dir.Name()), nil
}

// stackPath names a directory by the names on the way down, for errors.
func stackPath(stack []frame) string {
	if len(stack) > 8 {
		return stackPath(stack[:4]) + "/... (" + strconv.Itoa(len(stack)-8) + " more)/" + stackPath(stack[len(stack)-4:])
	}
	out := ""
	for i, f := range stack {
		if i > 0 {
			out += "/"
		}
		out += f.name
	}
	return out
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

// clearDir unlinks what is not a directory in dir and returns the first
// subdirectory it meets, with its stat, or "" once dir holds none. dir is
// read from where its offset is: a directory freshly opened is read from
// the start, and holds only what has not been removed yet.
func clearDir(dir *os.File) (string, *unix.Stat_t, error) {
	fd := int(dir.Fd())
	for {
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
				return name, &st, nil
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

// removeDir removes the empty directory f.name from dir, if it is still
// the directory removed from beneath (an entry swapped in meanwhile is left
// for the next listing), clearing inode flags that forbid it.
func removeDir(dir int, f frame) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dir, f.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if gone(err) {
			return nil
		}
		return fmt.Errorf("stat %s: %w", f.name, err)
	}
	if identity(&st) != f.id {
		return nil
	}
	err := unix.Unlinkat(dir, f.name, unix.AT_REMOVEDIR)
	if errors.Is(err, unix.EPERM) && clearFlags(dir, f.name, &st) {
		err = unix.Unlinkat(dir, f.name, unix.AT_REMOVEDIR)
	}
	if err != nil && !gone(err) {
		return fmt.Errorf("remove directory %s: %w", f.name, err)
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
