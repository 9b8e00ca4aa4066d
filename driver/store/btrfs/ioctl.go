package btrfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The btrfs ioctl ABI (include/uapi/linux/btrfs.h, btrfs_tree.h), which
// golang.org/x/sys does not carry. Structures are declared with the kernel's
// layout and sizes checked in ioctl_test.go.

const ioctlMagic = 0x94

func iow(nr, size uintptr) uintptr  { return 1<<30 | size<<16 | ioctlMagic<<8 | nr }
func ior(nr, size uintptr) uintptr  { return 2<<30 | size<<16 | ioctlMagic<<8 | nr }
func iowr(nr, size uintptr) uintptr { return 3<<30 | size<<16 | ioctlMagic<<8 | nr }

// firstFreeObjectID is the inode number of every subvolume's root directory.
const firstFreeObjectID = 256

// Tree IDs and item types searched with TREE_SEARCH.
const (
	rootTreeID  = 1
	quotaTreeID = 8

	dirIndexKey       = 96
	rootItemKey       = 132
	rootBackrefKey    = 144
	rootRefKey        = 156
	qgroupStatusKey   = 240
	qgroupInfoKey     = 242
	qgroupRelationKey = 246
)

// Subvolume flags (btrfs_ioctl_vol_args_v2.flags).
const (
	subvolReadOnly = 1 << 1
	subvolSpecByID = 1 << 4
)

// Quota control commands and status flags.
const (
	quotaCtlEnable            = 1
	quotaCtlEnableSimpleQuota = 4

	qgroupStatusFlagOn         = 1 << 0
	qgroupStatusFlagSimpleMode = 1 << 3

	qgroupLimitMaxRfer = 1 << 0
)

// qgroupLevelShift places a qgroup's level above its 48-bit id.
const qgroupLevelShift = 48

const subvolNameMax = 4039

// volArgsV2 is struct btrfs_ioctl_vol_args_v2 (4096 bytes).
type volArgsV2 struct {
	fd      int64
	transid uint64
	flags   uint64
	unused  [4]uint64 // size and qgroup_inherit, unused here
	name    [subvolNameMax + 1]byte
}

// inoLookupArgs is struct btrfs_ioctl_ino_lookup_args (4096 bytes).
type inoLookupArgs struct {
	treeID   uint64
	objectID uint64
	name     [4080]byte
}

// searchKey is struct btrfs_ioctl_search_key (104 bytes).
type searchKey struct {
	treeID           uint64
	minObjectID      uint64
	maxObjectID      uint64
	minOffset        uint64
	maxOffset        uint64
	minTransID       uint64
	maxTransID       uint64
	minType          uint32
	maxType          uint32
	nrItems          uint32
	unused           uint32
	unused1, unused2 uint64
	unused3, unused4 uint64
}

// searchArgs is struct btrfs_ioctl_search_args (4096 bytes).
type searchArgs struct {
	key searchKey
	buf [4096 - 104]byte
}

// fsInfoArgs is struct btrfs_ioctl_fs_info_args (1024 bytes), of which
// only flags (in: what to report) and generation are used here.
type fsInfoArgs struct {
	maxID, numDevices uint64
	fsid              [16]byte
	nodeSize          uint32
	sectorSize        uint32
	cloneAlignment    uint32
	csumType          uint16
	csumSize          uint16
	flags             uint64
	generation        uint64
	metadataUUID      [16]byte
	reserved          [944]byte
}

// fsInfoFlagGeneration asks FS_INFO for the generation (Linux 5.15+).
const fsInfoFlagGeneration = 1 << 1

type quotaCtlArgs struct {
	cmd    uint64
	status uint64
}

type qgroupAssignArgs struct {
	assign uint64
	src    uint64
	dst    uint64
}

type qgroupCreateArgs struct {
	create   uint64
	qgroupID uint64
}

type qgroupLimit struct {
	flags   uint64
	maxRfer uint64
	maxExcl uint64
	rsvRfer uint64
	rsvExcl uint64
}

type qgroupLimitArgs struct {
	qgroupID uint64
	limit    qgroupLimit
}

var (
	iocSnapCreateV2   = iow(23, unsafe.Sizeof(volArgsV2{}))
	iocSubvolCreateV2 = iow(24, unsafe.Sizeof(volArgsV2{}))
	iocSnapDestroyV2  = iow(63, unsafe.Sizeof(volArgsV2{}))
	iocInoLookup      = iowr(18, unsafe.Sizeof(inoLookupArgs{}))
	iocTreeSearch     = iowr(17, unsafe.Sizeof(searchArgs{}))
	iocFsInfo         = ior(31, unsafe.Sizeof(fsInfoArgs{}))
	iocSubvolGetflags = ior(25, 8)
	iocSubvolSetflags = iow(26, 8)
	iocQuotaCtl       = iowr(40, unsafe.Sizeof(quotaCtlArgs{}))
	iocQgroupAssign   = iow(41, unsafe.Sizeof(qgroupAssignArgs{}))
	iocQgroupCreate   = iow(42, unsafe.Sizeof(qgroupCreateArgs{}))
	// QGROUP_LIMIT is declared _IOR in the kernel, although it writes.
	iocQgroupLimit = ior(43, unsafe.Sizeof(qgroupLimitArgs{}))
)

func ioctl(fd uintptr, request uintptr, arg unsafe.Pointer) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, request, uintptr(arg))
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		}
		return errno
	}
}

func setName(dst []byte, name string) error {
	if len(name) == 0 || len(name) >= len(dst) {
		return fmt.Errorf("subvolume name %q: length must be 1..%d", name, len(dst)-1)
	}
	copy(dst, name)
	return nil
}

// createSubvolume creates an empty subvolume name in the directory dir.
func createSubvolume(dir *os.File, name string) error {
	var args volArgsV2
	if err := setName(args.name[:], name); err != nil {
		return err
	}
	if err := ioctl(dir.Fd(), iocSubvolCreateV2, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("create subvolume %s: %w", name, err)
	}
	return nil
}

// snapshot creates name in dir as a snapshot of the subvolume source (whose
// root directory source must be), read-only or writable. The kernel flushes
// the source's dirty data first and commits the snapshot before returning:
// it is one instant of the whole subvolume, durable.
func snapshot(source, dir *os.File, name string, readOnly bool) error {
	args := volArgsV2{fd: int64(source.Fd())}
	if readOnly {
		args.flags = subvolReadOnly
	}
	if err := setName(args.name[:], name); err != nil {
		return err
	}
	if err := ioctl(dir.Fd(), iocSnapCreateV2, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("snapshot into %s: %w", name, err)
	}
	return nil
}

// destroySubvolume deletes the subvolume with the given id (it must hold
// no nested subvolume); fsFile is any file on the same filesystem.
func destroySubvolume(fsFile *os.File, id uint64) error {
	args := volArgsV2{flags: subvolSpecByID}
	binary.NativeEndian.PutUint64(args.name[:8], id) // the union's subvolid
	if err := ioctl(fsFile.Fd(), iocSnapDestroyV2, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("delete subvolume %d: %w", id, err)
	}
	return nil
}

// subvolumeFlags reads the flags (subvolReadOnly) of the subvolume whose
// root directory fd is.
func subvolumeFlags(fd int) (uint64, error) {
	var flags uint64
	if err := ioctl(uintptr(fd), iocSubvolGetflags, unsafe.Pointer(&flags)); err != nil {
		return 0, fmt.Errorf("read subvolume flags: %w", err)
	}
	return flags, nil
}

// setSubvolumeFlags sets the flags of the subvolume whose root directory
// fd is: the owner of that directory may, which is how a tenant makes a
// subvolume it nested read-only.
func setSubvolumeFlags(fd int, flags uint64) error {
	if err := ioctl(uintptr(fd), iocSubvolSetflags, unsafe.Pointer(&flags)); err != nil {
		return fmt.Errorf("set subvolume flags %#x: %w", flags, err)
	}
	return nil
}

// subvolumeID returns the id of the subvolume f is in.
func subvolumeID(f *os.File) (uint64, error) {
	args := inoLookupArgs{objectID: firstFreeObjectID}
	if err := ioctl(f.Fd(), iocInoLookup, unsafe.Pointer(&args)); err != nil {
		return 0, fmt.Errorf("look up subvolume of %s: %w", f.Name(), err)
	}
	return args.treeID, nil
}

// searchItem is one item returned by TREE_SEARCH.
type searchItem struct {
	objectID, offset uint64
	itemType         uint32
	data             []byte
}

// treeSearch returns the items of tree with objectid in [minObj,maxObj],
// type in [minType,maxType] and offset in [minOff,maxOff], in key order.
func treeSearch(f *os.File, tree, minObj, maxObj uint64, minType, maxType uint32, minOff, maxOff uint64) ([]searchItem, error) {
	return searchTree(f, searchKey{
		treeID: tree, minObjectID: minObj, maxObjectID: maxObj, minOffset: minOff, maxOffset: maxOff,
		maxTransID: ^uint64(0), minType: minType, maxType: maxType,
	})
}

// searchTree returns the items key selects, in key order. With
// key.minTransID set, the kernel skips every node and leaf last written
// before that transaction, so the search costs what changed since then,
// not the size of the tree.
func searchTree(f *os.File, key searchKey) ([]searchItem, error) {
	items, _, err := searchTreeUpTo(f, key, 0)
	return items, err
}

// searchTreeUpTo is searchTree returning at most limit items (0: all),
// and, when it stopped at the limit, the objectid to resume from (0 when
// it reached the end). A resumed search starts at that objectid, so items
// of the last objectid returned may be returned again.
func searchTreeUpTo(f *os.File, key searchKey, limit int) ([]searchItem, uint64, error) {
	var items []searchItem
	var args searchArgs
	args.key = key
	tree, maxObj, minType, maxType := key.treeID, key.maxObjectID, key.minType, key.maxType
	for {
		args.key.nrItems = 4096
		if err := ioctl(f.Fd(), iocTreeSearch, unsafe.Pointer(&args)); err != nil {
			return nil, 0, fmt.Errorf("search tree %d: %w", tree, err)
		}
		n := args.key.nrItems
		if n == 0 {
			return items, 0, nil
		}
		pos := 0
		var last searchItem
		for range n {
			// struct btrfs_ioctl_search_header: transid, objectid, offset (u64), type, len (u32).
			header := args.buf[pos : pos+32]
			item := searchItem{
				objectID: binary.NativeEndian.Uint64(header[8:]),
				offset:   binary.NativeEndian.Uint64(header[16:]),
				itemType: binary.NativeEndian.Uint32(header[24:]),
			}
			length := int(binary.NativeEndian.Uint32(header[28:]))
			pos += 32
			item.data = append([]byte(nil), args.buf[pos:pos+length]...)
			pos += length
			if item.itemType >= minType && item.itemType <= maxType {
				items = append(items, item)
			}
			last = item
		}
		// Continue after the last key returned (objectid, type, offset order).
		switch {
		case last.offset < ^uint64(0):
			args.key.minObjectID, args.key.minType, args.key.minOffset = last.objectID, last.itemType, last.offset+1
		case last.itemType < 255:
			args.key.minObjectID, args.key.minType, args.key.minOffset = last.objectID, last.itemType+1, 0
		case last.objectID < ^uint64(0):
			args.key.minObjectID, args.key.minType, args.key.minOffset = last.objectID+1, 0, 0
		default:
			return items, 0, nil
		}
		if args.key.minObjectID > maxObj {
			return items, 0, nil
		}
		if limit > 0 && len(items) >= limit {
			// Resume at the next objectid: the rest of the last one's
			// items come again then, which callers tolerate.
			if last.objectID == ^uint64(0) {
				return items, 0, nil
			}
			return items, last.objectID + 1, nil
		}
	}
}

// childSubvolumes lists the ids of the subvolumes whose root directory is
// linked inside the subvolume parent.
func childSubvolumes(f *os.File, parent uint64) ([]uint64, error) {
	items, err := treeSearch(f, rootTreeID, parent, parent, rootRefKey, rootRefKey, 0, ^uint64(0))
	if err != nil {
		return nil, err
	}
	ids := make([]uint64, 0, len(items))
	for _, item := range items {
		ids = append(ids, item.offset)
	}
	return ids, nil
}

// rootRef is a ROOT_REF item: the subvolume id is linked as name in the
// directory dirID of its parent subvolume.
type rootRef struct {
	id, dirID uint64
	name      string
}

// rootRefs lists the subvolumes linked directly inside the subvolume
// parent, with where they are linked.
func rootRefs(f *os.File, parent uint64) ([]rootRef, error) {
	items, err := treeSearch(f, rootTreeID, parent, parent, rootRefKey, rootRefKey, 0, ^uint64(0))
	if err != nil {
		return nil, err
	}
	refs := make([]rootRef, 0, len(items))
	for _, item := range items {
		dirID, name, ok := parseRootRef(item.data)
		if !ok {
			return nil, fmt.Errorf("short root ref %d/%d", parent, item.offset)
		}
		refs = append(refs, rootRef{id: item.offset, dirID: dirID, name: name})
	}
	return refs, nil
}

// parseRootRef decodes struct btrfs_root_ref, the body of both ROOT_REF
// and ROOT_BACKREF items: dirid, sequence (le64), name_len (le16), name.
func parseRootRef(data []byte) (dirID uint64, name string, ok bool) {
	if len(data) < 18 {
		return 0, "", false
	}
	length := min(int(binary.LittleEndian.Uint16(data[16:])), len(data)-18)
	return binary.LittleEndian.Uint64(data), string(data[18 : 18+length]), true
}

// subvolumeLink is where the subvolume id is linked: as name in the
// directory dirID of the subvolume parent (a ROOT_BACKREF item).
type subvolumeLink struct {
	id, parent, dirID uint64
	name              string
}

// linksOf decodes ROOT_BACKREF items (key: child, ROOT_BACKREF, parent).
func linksOf(items []searchItem) []subvolumeLink {
	links := make([]subvolumeLink, 0, len(items))
	for _, item := range items {
		if dirID, name, ok := parseRootRef(item.data); ok {
			links = append(links, subvolumeLink{id: item.objectID, parent: item.offset, dirID: dirID, name: name})
		}
	}
	return links
}

// linksChangedSince lists the links of the subvolumes whose ROOT_BACKREF
// sits in a leaf of the root tree written in transaction minTrans or
// later: every subvolume created (or moved) since, and the neighbours
// sharing those leaves. Its cost follows what changed, not how many
// subvolumes the filesystem holds.
//
// It starts at the subvolume id from and returns at most about limit links
// (0: all), with the id to resume from (0: it reached the end).
func linksChangedSince(f *os.File, minTrans, from uint64, limit int) ([]subvolumeLink, uint64, error) {
	items, resume, err := searchTreeUpTo(f, searchKey{
		treeID: rootTreeID, minObjectID: from, maxObjectID: ^uint64(0), maxOffset: ^uint64(0),
		minTransID: minTrans, maxTransID: ^uint64(0), minType: rootBackrefKey, maxType: rootBackrefKey,
	}, limit)
	if err != nil {
		return nil, 0, err
	}
	return linksOf(items), resume, nil
}

// linkOf returns where the subvolume id is linked; false for the top-level
// subvolume and for one already unlinked.
func linkOf(f *os.File, id uint64) (subvolumeLink, bool, error) {
	items, err := treeSearch(f, rootTreeID, id, id, rootBackrefKey, rootBackrefKey, 0, ^uint64(0))
	if err != nil {
		return subvolumeLink{}, false, err
	}
	links := linksOf(items)
	if len(links) == 0 {
		return subvolumeLink{}, false, nil
	}
	return links[0], true, nil
}

// subvolumeLinksSince lists, as paths relative to the subvolume tree's
// root, the directory entries of tree that link a subvolume and sit in
// leaves written in transaction minTrans or later.
func subvolumeLinksSince(f *os.File, tree, minTrans uint64) ([]string, error) {
	items, err := searchTree(f, searchKey{
		treeID: tree, maxObjectID: ^uint64(0), maxOffset: ^uint64(0),
		minTransID: minTrans, maxTransID: ^uint64(0), minType: dirIndexKey, maxType: dirIndexKey,
	})
	if err != nil {
		return nil, err
	}
	var paths []string
	for _, item := range items {
		// struct btrfs_dir_item: location (objectid le64, type u8, offset
		// le64), transid le64, data_len le16, name_len le16, type u8, name.
		if len(item.data) < 30 || item.data[8] != rootItemKey {
			continue
		}
		length := min(int(binary.LittleEndian.Uint16(item.data[27:])), len(item.data)-30)
		dir, err := inodePath(f, tree, item.objectID)
		if err != nil {
			return nil, err
		}
		paths = append(paths, dir+string(item.data[30:30+length]))
	}
	return paths, nil
}

// inodePath is the path of the directory ino inside the subvolume tree,
// relative to its root: "" for the root, else ending in "/".
func inodePath(f *os.File, tree, ino uint64) (string, error) {
	args := inoLookupArgs{treeID: tree, objectID: ino}
	if err := ioctl(f.Fd(), iocInoLookup, unsafe.Pointer(&args)); err != nil {
		return "", fmt.Errorf("look up directory %d of subvolume %d: %w", ino, tree, err)
	}
	name := args.name[:]
	if end := bytes.IndexByte(name, 0); end >= 0 {
		name = name[:end]
	}
	return string(name), nil
}

// fsGeneration is the id of the newest transaction the filesystem started:
// whatever is written from now on is written in it or a later one.
func fsGeneration(f *os.File) (uint64, error) {
	args := fsInfoArgs{flags: fsInfoFlagGeneration}
	if err := ioctl(f.Fd(), iocFsInfo, unsafe.Pointer(&args)); err != nil {
		return 0, fmt.Errorf("read filesystem generation: %w", err)
	}
	if args.flags&fsInfoFlagGeneration == 0 {
		return 0, errors.New("read filesystem generation: kernel does not report it")
	}
	return args.generation, nil
}

// filesystemID is the btrfs filesystem's UUID.
func filesystemID(f *os.File) ([16]byte, error) {
	var args fsInfoArgs
	if err := ioctl(f.Fd(), iocFsInfo, unsafe.Pointer(&args)); err != nil {
		return [16]byte{}, fmt.Errorf("read filesystem id of %s: %w", f.Name(), err)
	}
	return args.fsid, nil
}

// subvolumeExists reports whether the root tree still holds the subvolume
// (also while a deleted one waits for the cleaner).
func subvolumeExists(f *os.File, id uint64) (bool, error) {
	items, err := treeSearch(f, rootTreeID, id, id, rootItemKey, rootItemKey, 0, ^uint64(0))
	return len(items) > 0, err
}

// quotaStatus is what the quota tree's status item says.
type quotaStatus struct {
	enabled, simple bool
}

func readQuotaStatus(f *os.File) (quotaStatus, error) {
	items, err := treeSearch(f, quotaTreeID, 0, 0, qgroupStatusKey, qgroupStatusKey, 0, 0)
	if errors.Is(err, unix.ENOENT) {
		return quotaStatus{}, nil // no quota tree: quotas were never enabled
	}
	if err != nil {
		return quotaStatus{}, err
	}
	if len(items) == 0 || len(items[0].data) < 24 {
		return quotaStatus{}, nil
	}
	flags := binary.LittleEndian.Uint64(items[0].data[16:])
	return quotaStatus{enabled: flags&qgroupStatusFlagOn != 0, simple: flags&qgroupStatusFlagSimpleMode != 0}, nil
}

func quotaCtl(f *os.File, cmd uint64) error {
	args := quotaCtlArgs{cmd: cmd}
	return ioctl(f.Fd(), iocQuotaCtl, unsafe.Pointer(&args))
}

func qgroupID(level, id uint64) uint64 { return level<<qgroupLevelShift | id }

func createQgroup(f *os.File, id uint64) error {
	args := qgroupCreateArgs{create: 1, qgroupID: id}
	if err := ioctl(f.Fd(), iocQgroupCreate, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("create qgroup %s: %w", qgroupName(id), err)
	}
	return nil
}

func removeQgroup(f *os.File, id uint64) error {
	args := qgroupCreateArgs{create: 0, qgroupID: id}
	if err := ioctl(f.Fd(), iocQgroupCreate, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("remove qgroup %s: %w", qgroupName(id), err)
	}
	return nil
}

func assignQgroup(f *os.File, child, parent uint64, assign bool) error {
	args := qgroupAssignArgs{src: child, dst: parent}
	if assign {
		args.assign = 1
	}
	if err := ioctl(f.Fd(), iocQgroupAssign, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("assign qgroup %s to %s (%v): %w", qgroupName(child), qgroupName(parent), assign, err)
	}
	return nil
}

// limitQgroup sets the qgroup's referenced-bytes limit; 0 removes it.
func limitQgroup(f *os.File, id uint64, maxReferenced uint64) error {
	args := qgroupLimitArgs{qgroupID: id, limit: qgroupLimit{flags: qgroupLimitMaxRfer, maxRfer: maxReferenced}}
	if maxReferenced == 0 {
		args.limit.maxRfer = ^uint64(0) // the kernel's "no limit"
	}
	if err := ioctl(f.Fd(), iocQgroupLimit, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("limit qgroup %s to %d bytes: %w", qgroupName(id), maxReferenced, err)
	}
	return nil
}

// qgroupReferenced reads the referenced bytes of a qgroup as last
// committed (the quota tree is written at transaction commit).
func qgroupReferenced(f *os.File, id uint64) (uint64, bool, error) {
	items, err := treeSearch(f, quotaTreeID, 0, 0, qgroupInfoKey, qgroupInfoKey, id, id)
	if err != nil {
		return 0, false, err
	}
	if len(items) == 0 || len(items[0].data) < 16 {
		return 0, false, nil
	}
	// struct btrfs_qgroup_info_item: generation, rfer, rfer_cmpr, excl, excl_cmpr (le64).
	return binary.LittleEndian.Uint64(items[0].data[8:]), true, nil
}

// highestQgroup is the highest level-0 qgroup id (0: none).
func highestQgroup(f *os.File) (uint64, error) {
	items, err := treeSearch(f, quotaTreeID, 0, 0, qgroupInfoKey, qgroupInfoKey, 0, qgroupID(1, 0)-1)
	if err != nil || len(items) == 0 {
		return 0, err
	}
	return items[len(items)-1].offset, nil
}

// qgroupParents lists the qgroups child is a member of.
func qgroupParents(f *os.File, child uint64) ([]uint64, error) {
	items, err := treeSearch(f, quotaTreeID, child, child, qgroupRelationKey, qgroupRelationKey, child+1, ^uint64(0))
	if err != nil {
		return nil, err
	}
	parents := make([]uint64, 0, len(items))
	for _, item := range items {
		parents = append(parents, item.offset)
	}
	return parents, nil
}

// qgroupChildren lists the qgroups that are members of parent.
func qgroupChildren(f *os.File, parent uint64) ([]uint64, error) {
	items, err := treeSearch(f, quotaTreeID, parent, parent, qgroupRelationKey, qgroupRelationKey, 0, ^uint64(0))
	if err != nil {
		return nil, err
	}
	var children []uint64
	for _, item := range items {
		// Relations are stored both ways; (parent, REL, child) has child < parent.
		if item.offset < parent {
			children = append(children, item.offset)
		}
	}
	return children, nil
}

func qgroupName(id uint64) string {
	return fmt.Sprintf("%d/%d", id>>qgroupLevelShift, id&(1<<qgroupLevelShift-1))
}
