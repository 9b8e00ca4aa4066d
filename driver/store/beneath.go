package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

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
// type want (unix.S_IFDIR, unix.S_IFREG, ...).
func (p *Pool) openKind(rel string, flags int, want uint32) (*os.File, error) {
	f, err := p.openBeneath(rel, flags, 0)
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
	return f, nil
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
