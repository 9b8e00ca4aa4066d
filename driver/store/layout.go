package store

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Layout says where a filesystem volume's files are in its directory.
//
// A pod inside a btrfs subvolume may call any btrfs ioctl on it: create
// subvolumes with a qgroup inheritance list of its choosing (out of its
// limit, or into a neighbour's), probe which qgroups exist. No check can
// see the list in time (the kernel reads it after any check could), so a
// sealed volume never shows the pod btrfs at all. Its directory holds
// upper/ (an overlay's upper layer), work/ (the overlay's work directory)
// and lower/ (its empty lower layer); the pod's files are in upper/root/.
// The node mounts the overlay and gives the pod its root/: a directory
// only the upper layer has, which the overlay passes straight through (its
// own root is a merged directory, whose listing the kernel would cache).
// An overlay passes reads, writes, reflinks and attributes to btrfs and
// answers every btrfs ioctl with ENOTTY; writes still land in the
// subvolume, under its limit. Pools of other backends bind-mount
// upper/root/.
type Layout string

const (
	// LayoutRoot: the volume's directory is what the pod sees (block
	// volumes, volumes made before layouts, and copies of them for classes
	// whose tenants may nest btrfs subvolumes: nestedSubvolumes "allow").
	LayoutRoot Layout = ""
	// LayoutSealed: the pod sees upper/root/ through an overlay (see Layout).
	LayoutSealed Layout = "sealed"
)

// The sealed layout's directories. SealedPodDir is the pod's directory
// inside the upper layer.
const (
	SealedUpper  = "upper"
	SealedWork   = "work"
	SealedLower  = "lower"
	SealedPodDir = "root"
)

// seal gives the new, empty volume id the sealed layout. Its own directory
// becomes root's (0755): nothing but the node enters it.
func (p *Pool) seal(id string) error {
	dir, err := p.openKind("volumes/"+id, unix.O_RDONLY|unix.O_DIRECTORY, unix.S_IFDIR)
	if err != nil {
		return fmt.Errorf("seal volume %s: %w", id, err)
	}
	defer dir.Close()
	upper, err := mkdirMode(dir, SealedUpper, 0o755)
	if err != nil {
		return fmt.Errorf("seal volume %s: %w", id, err)
	}
	defer upper.Close()
	pod, err := mkdirMode(upper, SealedPodDir, 0o777)
	if err != nil {
		return fmt.Errorf("seal volume %s: %w", id, err)
	}
	pod.Close()
	if err := makeNodeDirs(dir); err != nil {
		return fmt.Errorf("seal volume %s: %w", id, err)
	}
	if err := unix.Fchmod(int(dir.Fd()), 0o755); err != nil {
		return fmt.Errorf("seal volume %s: %w", id, err)
	}
	return unix.Fsync(int(dir.Fd()))
}

// mkdirMode makes name in dir with exactly mode (Mkdirat applies the
// umask) and returns it open. No pod has the volume yet, but a zone pool is
// written by every node of the zone: the chmod goes through a descriptor of
// what was made, opened without following a symlink, never by name.
func mkdirMode(dir *os.File, name string, mode uint32) (*os.File, error) {
	if err := unix.Mkdirat(int(dir.Fd()), name, mode); err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	made, err := openDirAt(dir, name)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrForeign, err)
	}
	if err := unix.Fchmod(int(made.Fd()), mode); err != nil {
		made.Close()
		return nil, fmt.Errorf("chmod %s: %w", name, err)
	}
	return made, nil
}

// makeNodeDirs makes the overlay's work/ and empty lower/ in dir.
func makeNodeDirs(dir *os.File) error {
	for _, d := range []struct {
		name string
		mode uint32
	}{{SealedWork, 0o700}, {SealedLower, 0o555}} {
		made, err := mkdirMode(dir, d.name, d.mode)
		if err != nil {
			return err
		}
		made.Close()
	}
	return nil
}

// sealFilled seals a volume filled from a source of the root layout (a
// volume made before sealing, or of a class that allowed nesting), before
// it is ready: every entry of its directory moves into the pod's directory
// of a new upper layer, which takes the directory's owner and mode. A
// crash midway leaves the volume "creating", redone from the start.
func (p *Pool) sealFilled(id string) error {
	dir, err := p.openKind("volumes/"+id, unix.O_RDONLY|unix.O_DIRECTORY, unix.S_IFDIR)
	if err != nil {
		return fmt.Errorf("seal volume %s: %w", id, err)
	}
	defer dir.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(dir.Fd()), &st); err != nil {
		return fmt.Errorf("seal volume %s: %w", id, err)
	}
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("seal volume %s: list it: %w", id, err)
	}
	// The new upper layer under a name no entry has (the tenant chose them).
	taken := map[string]bool{}
	for _, n := range names {
		taken[n] = true
	}
	upper := ".toposnap-upper-" + strconv.FormatUint(rand.Uint64(), 16)
	for taken[upper] {
		upper = ".toposnap-upper-" + strconv.FormatUint(rand.Uint64(), 16)
	}
	// work/ and lower/ are made once every entry the copy had is moved:
	// they cannot collide with one.
	upperDir, err := mkdirMode(dir, upper, 0o755)
	if err != nil {
		return fmt.Errorf("seal volume %s: %w", id, err)
	}
	defer upperDir.Close()
	pod, err := mkdirMode(upperDir, SealedPodDir, st.Mode&0o7777)
	if err != nil {
		return fmt.Errorf("seal volume %s: %w", id, err)
	}
	defer pod.Close()
	if err := unix.Fchown(int(pod.Fd()), int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("seal volume %s: chown: %w", id, err)
	}
	for _, n := range names {
		if err := unix.Renameat2(int(dir.Fd()), n, int(pod.Fd()), n, unix.RENAME_NOREPLACE); err != nil {
			return fmt.Errorf("seal volume %s: move %q: %w", id, n, err)
		}
	}
	if err := unix.Renameat2(int(dir.Fd()), upper, int(dir.Fd()), SealedUpper, unix.RENAME_NOREPLACE); err != nil {
		return fmt.Errorf("seal volume %s: %w", id, err)
	}
	if err := makeNodeDirs(dir); err != nil {
		return fmt.Errorf("seal volume %s: %w", id, err)
	}
	if err := unix.Fchownat(int(dir.Fd()), "", 0, 0, unix.AT_EMPTY_PATH); err != nil {
		return fmt.Errorf("seal volume %s: chown: %w", id, err)
	}
	if err := unix.Fchmod(int(dir.Fd()), 0o755); err != nil {
		return fmt.Errorf("seal volume %s: %w", id, err)
	}
	return unix.Fsync(int(dir.Fd()))
}

// openDirAt opens the directory rel beneath dir, following no symlink.
func openDirAt(dir *os.File, rel string) (*os.File, error) {
	fd, err := unix.Openat2(int(dir.Fd()), rel, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
		Resolve: beneath,
	})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", rel, err)
	}
	return os.NewFile(uintptr(fd), dir.Name()+"/"+rel), nil
}

// SealedDirs are a sealed volume's directories, held open for mounting:
// what was checked is what is mounted.
type SealedDirs struct {
	// Upper, Work and Lower are the overlay's layers; Lower was read
	// through this very descriptor and found empty.
	Upper, Work, Lower *os.File
	// Pod is the pod's directory (upper/root), for pools that bind-mount it.
	Pod *os.File
}

// Close releases the descriptors.
func (s SealedDirs) Close() {
	for _, f := range []*os.File{s.Upper, s.Work, s.Lower, s.Pod} {
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
		name  string
		flags int
		dst   **os.File
	}{
		{SealedUpper, unix.O_PATH | unix.O_DIRECTORY, &out.Upper},
		{SealedWork, unix.O_PATH | unix.O_DIRECTORY, &out.Work},
		{SealedLower, unix.O_RDONLY | unix.O_DIRECTORY, &out.Lower},
		{SealedUpper + "/" + SealedPodDir, unix.O_PATH | unix.O_DIRECTORY, &out.Pod},
	} {
		f, err := p.openKind("volumes/"+id+"/"+d.name, d.flags, unix.S_IFDIR)
		if err != nil {
			out.Close()
			return SealedDirs{}, err
		}
		*d.dst = f
	}
	if err := checkEmpty(out.Lower); err != nil {
		out.Close()
		return SealedDirs{}, err
	}
	return out, nil
}

// checkEmpty refuses the open directory f unless it is empty.
func checkEmpty(f *os.File) error {
	names, err := f.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", f.Name(), err)
	}
	return fmt.Errorf("%s: %w: holds %q, must be empty", f.Name(), ErrForeign, names[0])
}

// WithLimitLifted runs fn with the volume's limit lifted, then puts back
// the limit its metadata gives. Mounting an overlay recreates its work
// directory, which the limit of a full volume refuses (the kernel then
// mounts the overlay read-only, and the pod could not even delete files).
func (p *Pool) WithLimitLifted(id string, fn func() error) error {
	held, err := p.holdDirs("volumes")
	if err != nil {
		return err
	}
	err = p.backend.Expand(held.path("volumes", id), 0)
	held.close()
	if err != nil {
		return fmt.Errorf("lift the limit of %s: %w", id, err)
	}
	fnErr := fn()
	vol, err := p.LookupVolume(id)
	if err == nil {
		err = p.applySize(vol)
	}
	if err != nil {
		return errors.Join(fnErr, fmt.Errorf("put back the limit of %s: %w", id, err))
	}
	return fnErr
}
