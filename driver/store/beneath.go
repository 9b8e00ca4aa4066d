package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// A zone pool is written by every node of its zone, and root on any one of
// them can put a symlink, a FIFO or a forged file anywhere in it. So every
// pool path is opened beneath the pool's root descriptor, never following a
// symlink or crossing a mount, and what was opened is checked to be the
// kind of file the pool puts there. Names come from the request (validated
// IDs), never from a file's contents.

// beneath confines a lookup to the pool's tree: no symlink (magic links of
// /proc included), no "..", no mount crossed.
const beneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// ErrForeign means a path in the pool is not what the pool put there: a
// symlink, a file of another type, or metadata that names another object.
// It is refused and reported, never followed.
var ErrForeign = errors.New("refused: not what the pool put there")

// openBeneath opens rel (slash-separated, relative to the pool directory)
// beneath the pool's root descriptor. mode is used with O_CREAT only.
func (p *Pool) openBeneath(rel string, flags int, mode uint32) (*os.File, error) {
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW), Resolve: beneath}
	if flags&unix.O_CREAT != 0 {
		how.Mode = uint64(mode)
	}
	path := filepath.Join(p.cfg.Dir, rel)
	fd, err := unix.Openat2(int(p.root.Fd()), rel, &how)
	switch {
	case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV):
		return nil, fmt.Errorf("open %s: %w (%w)", path, ErrForeign, err)
	case errors.Is(err, unix.ENOTDIR) && flags&unix.O_DIRECTORY != 0:
		return nil, fmt.Errorf("open %s: %w: not a directory", path, ErrForeign)
	case err != nil:
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// openKind opens rel beneath the pool and checks that it is of the file
// type want (unix.S_IFDIR, unix.S_IFREG, ...). Anything but a directory is
// first looked up O_PATH, which opens nothing (no FIFO blocks, no device
// node is touched), checked, and only then reopened with flags through
// /proc/self/fd, which names the inode that was checked and no path.
func (p *Pool) openKind(rel string, flags int, want uint32) (*os.File, error) {
	lookup := flags
	if flags&(unix.O_PATH|unix.O_DIRECTORY) == 0 {
		lookup = unix.O_PATH
	}
	f, err := p.openBeneath(rel, lookup, 0)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	if st.Mode&unix.S_IFMT != want {
		f.Close()
		return nil, fmt.Errorf("%s: %w: file type %#o, want %#o", f.Name(), ErrForeign, st.Mode&unix.S_IFMT, want)
	}
	if lookup == flags {
		return f, nil
	}
	defer f.Close()
	// No O_NOFOLLOW: /proc/self/fd/N is the magic link to f's inode itself.
	fd, err := unix.Open(fdPath(f), flags|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, &os.PathError{Op: "reopen", Path: f.Name(), Err: err}
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// fdPath names the file f holds open, whatever has been renamed or swapped
// at its path since.
func fdPath(f *os.File) string { return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) }

// openRegular opens the regular file rel with flags, creating it (mode)
// when it does not exist. A symlink there, dangling or not, is refused: an
// O_CREAT that followed one would create a file wherever it points.
func (p *Pool) openRegular(rel string, flags int, mode uint32) (*os.File, error) {
	for attempt := 0; ; attempt++ {
		f, err := p.openKind(rel, flags, unix.S_IFREG)
		if !errors.Is(err, os.ErrNotExist) {
			return f, err
		}
		// O_EXCL: fails on anything already there, a dangling symlink too.
		f, err = p.openBeneath(rel, flags|unix.O_CREAT|unix.O_EXCL, mode)
		if errors.Is(err, os.ErrExist) && attempt < 3 {
			continue // created meanwhile (or planted): look again
		}
		return f, err
	}
}

// poolDirs are the pool's subdirectories (see the package comment).
var poolDirs = []string{"meta", "volumes", "snapshots", "tmp", "locks"}

// openDir opens the pool subdirectory sub, refusing with ErrForeign
// anything but a real directory reached without a symlink.
func (p *Pool) openDir(sub string) (*os.File, error) {
	return p.openKind(sub, unix.O_RDONLY|unix.O_DIRECTORY, unix.S_IFDIR)
}

// heldDirs are pool subdirectories held open while a Backend works in
// them. A Backend takes paths, so it gets each one through the descriptor
// (/proc/self/fd/N/<name>): the directory that was checked is the
// directory used, and a symlink swapped in for the subdirectory meanwhile
// changes nothing. Checking with openKind and then handing over the plain
// path would leave that window open. The descriptors are opened per call
// and closed when it ends, never kept for the pool's life: a number closed
// by Close and reused by another open would silently point a late call's
// path somewhere else.
type heldDirs map[string]*os.File

// holdDirs opens the subdirectories subs; release them with close.
func (p *Pool) holdDirs(subs ...string) (heldDirs, error) {
	held := heldDirs{}
	for _, sub := range subs {
		f, err := p.openDir(sub)
		if err != nil {
			held.close()
			return nil, err
		}
		held[sub] = f
	}
	return held, nil
}

// path names name inside the held subdirectory sub.
func (h heldDirs) path(sub, name string) string { return fdPath(h[sub]) + "/" + name }

func (h heldDirs) close() {
	for _, f := range h {
		f.Close()
	}
}

// OpenVolumeDir opens a volume's directory as an O_PATH descriptor, for
// bind-mounting it through /proc/self/fd: a symlink or a file planted at
// volumes/<id> is refused with ErrForeign. The id must have been validated.
func (p *Pool) OpenVolumeDir(id string) (*os.File, error) {
	if _, err := ParseID(id); err != nil {
		return nil, err
	}
	return p.openKind("volumes/"+id, unix.O_PATH|unix.O_DIRECTORY, unix.S_IFDIR)
}

// OpenImage opens a block volume's image file (flags: os.O_RDONLY or
// os.O_RDWR), refusing with ErrForeign anything but a regular file reached
// without a symlink: a device node or a link to one is never attached.
func (p *Pool) OpenImage(id string, flags int) (*os.File, error) {
	if _, err := ParseID(id); err != nil {
		return nil, err
	}
	return p.openKind("volumes/"+id+"/"+ImageName, flags, unix.S_IFREG)
}
