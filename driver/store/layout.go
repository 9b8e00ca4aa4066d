package store

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Layout says where a filesystem volume's files are in its directory.
//
// A pod inside a btrfs subvolume may call any btrfs ioctl on it: create
// subvolumes with a qgroup inheritance list of its choosing (out of its
// limit, or into a neighbour's), probe which qgroups exist. No check can
// see the list in time (the kernel reads it after any check could), so a
// sealed volume never shows the pod btrfs at all: its files are in data/,
// and the node mounts an overlay whose upper layer is data/ (work/ is the
// overlay's work directory, lower/ its empty lower layer). An overlay
// passes reads, writes, reflinks and attributes to btrfs and answers every
// btrfs ioctl with ENOTTY; writes still land in the subvolume, under its
// limit. Pools of other backends bind-mount data/.
type Layout string

const (
	// LayoutRoot: the volume's directory is what the pod sees (block
	// volumes, volumes made before layouts, and classes whose tenants may
	// nest btrfs subvolumes: nestedSubvolumes "allow").
	LayoutRoot Layout = ""
	// LayoutSealed: the pod sees data/ through an overlay (see Layout).
	LayoutSealed Layout = "sealed"
)

// The sealed layout's directories, and their modes: data/ is the pod's (as
// a volume's root was), the other two are the node's.
const (
	SealedData  = "data"
	SealedWork  = "work"
	SealedLower = "lower"
)

var sealedDirs = []struct {
	name string
	mode uint32
}{{SealedData, 0o777}, {SealedWork, 0o700}, {SealedLower, 0o555}}

// seal gives the new, empty volume id the sealed layout. Its own directory
// becomes root's (0755): nothing but the node enters it.
func (p *Pool) seal(id string) error {
	dir, err := p.openKind("volumes/"+id, unix.O_RDONLY|unix.O_DIRECTORY, unix.S_IFDIR)
	if err != nil {
		return fmt.Errorf("seal volume %s: %w", id, err)
	}
	defer dir.Close()
	for _, d := range sealedDirs {
		if err := unix.Mkdirat(int(dir.Fd()), d.name, d.mode); err != nil {
			return fmt.Errorf("seal volume %s: create %s: %w", id, d.name, err)
		}
		// Mkdirat applies the umask; fchmodat on the name just made, in the
		// directory held (no symlink can be there: the volume is new and
		// no pod has it).
		if err := unix.Fchmodat(int(dir.Fd()), d.name, d.mode, unix.AT_SYMLINK_NOFOLLOW); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("seal volume %s: chmod %s: %w", id, d.name, err)
		}
	}
	if err := unix.Fchmod(int(dir.Fd()), 0o755); err != nil {
		return fmt.Errorf("seal volume %s: %w", id, err)
	}
	return unix.Fsync(int(dir.Fd()))
}

// SealedDirs are a sealed volume's three directories, held open (O_PATH)
// for mounting: what was checked is what is mounted.
type SealedDirs struct {
	Data, Work, Lower *os.File
}

// Close releases the descriptors.
func (s SealedDirs) Close() {
	for _, f := range []*os.File{s.Data, s.Work, s.Lower} {
		if f != nil {
			f.Close()
		}
	}
}

// OpenSealed opens a sealed volume's directories beneath the pool, each
// refused (ErrForeign) unless it is a real directory reached without a
// symlink, and lower/ unless it is empty: whatever it held would show in
// the pod's volume.
func (p *Pool) OpenSealed(id string) (SealedDirs, error) {
	if _, err := ParseID(id); err != nil {
		return SealedDirs{}, err
	}
	var out SealedDirs
	for _, d := range []struct {
		name string
		dst  **os.File
	}{{SealedData, &out.Data}, {SealedWork, &out.Work}, {SealedLower, &out.Lower}} {
		f, err := p.openKind("volumes/"+id+"/"+d.name, unix.O_PATH|unix.O_DIRECTORY, unix.S_IFDIR)
		if err != nil {
			out.Close()
			return SealedDirs{}, err
		}
		*d.dst = f
	}
	if err := p.checkEmpty("volumes/" + id + "/" + SealedLower); err != nil {
		out.Close()
		return SealedDirs{}, err
	}
	return out, nil
}

// checkEmpty refuses rel unless it is an empty directory.
func (p *Pool) checkEmpty(rel string) error {
	f, err := p.openKind(rel, unix.O_RDONLY|unix.O_DIRECTORY, unix.S_IFDIR)
	if err != nil {
		return err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", f.Name(), err)
	}
	return fmt.Errorf("%s: %w: holds %q, must be empty", f.Name(), ErrForeign, names[0])
}
