package btrfs

import (
	"errors"
	"fmt"
	"path"

	"golang.org/x/sys/unix"
)

// Correction is one subvolume nested in a volume that Reconcile or Watch
// put back under the volume's limit.
type Correction struct {
	// Volume is the volume's path in the pool.
	Volume string
	// Nested is the nested subvolume's path relative to the volume, as the
	// tenant named it: quote it before showing it.
	Nested string
	// ID is the nested subvolume's id.
	ID uint64
	// Detached are the qgroups other than the volume's that the nested
	// subvolume was a member of ("1/262": a neighbour's limit group, named
	// in the tenant's inheritance list), and left.
	Detached []string
	// Joined is true when it was not in the volume's limit group and now is.
	Joined bool
	// Bytes is what the nested subvolume's own qgroup held as of the last
	// transaction commit: under simple quotas, what moved with it from the
	// Detached groups (or from no limit at all) onto the volume's limit.
	Bytes uint64
}

// Reconcile makes the qgroup of every subvolume nested (at any depth) in
// the volume at path a member of exactly the volume's level-1 qgroup, the
// one holding its limit: a pod that created a subvolume with its own
// inheritance list (none, or a neighbour's qgroup) is put back under its
// volume's limit, and a neighbour it charged gets its charge back (simple
// quotas move a member's whole charge with the relation). It returns how
// many memberships it changed. Writes made before it ran stay where they
// were charged until the relation moves them; a volume over its limit
// then refuses writes until it is below. Watch runs it on every volume at
// start, then on each subvolume as it appears.
//
// Only for simple quotas: under full quotas nested subvolumes are not
// counted at all.
func (b *Backend) Reconcile(path string) (int, error) {
	changed := 0
	err := b.reconcileVolume(path, func(c Correction) {
		changed += len(c.Detached)
		if c.Joined {
			changed++
		}
	})
	return changed, err
}

// reconcileVolume is Reconcile, reporting each nested subvolume it moved.
func (b *Backend) reconcileVolume(path string, report func(Correction)) error {
	if !b.simple {
		return nil
	}
	f, volume, isRoot, err := openSubvolume(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if !isRoot {
		return nil
	}
	tree := []uint64{volume}
	for i := 0; i < len(tree); i++ {
		children, err := childSubvolumes(b.root, tree[i])
		if err != nil {
			return err
		}
		tree = append(tree, children...)
		if i == 0 {
			continue
		}
		if err := b.reconcileNested(path, volume, tree[i], report); err != nil {
			return err
		}
	}
	return nil
}

// reconcileNested makes the qgroup of the subvolume nested, nested at any
// depth in the volume at volumePath (subvolume volume), a member of
// exactly the volume's limit group, and reports it when that changed
// anything. A volume without a limit group (being created, or deleted)
// gets nothing joined.
func (b *Backend) reconcileNested(volumePath string, volume, nested uint64, report func(Correction)) error {
	b.membership.Lock()
	defer b.membership.Unlock()
	limitGroup, own := qgroupID(1, volume), qgroupID(0, nested)
	parents, err := qgroupParents(b.root, own)
	if err != nil {
		return err
	}
	bytes, _, err := qgroupReferenced(b.root, own)
	if err != nil {
		return err
	}
	correction := Correction{Volume: volumePath, ID: nested, Bytes: bytes, Joined: true}
	for _, parent := range parents {
		if parent == limitGroup {
			correction.Joined = false
			continue
		}
		if err := assignQgroup(b.root, own, parent, false); err != nil && !errors.Is(err, unix.ENOENT) {
			return err
		}
		correction.Detached = append(correction.Detached, qgroupName(parent))
	}
	if correction.Joined {
		err := assignQgroup(b.root, own, limitGroup, true)
		switch {
		case errors.Is(err, unix.EEXIST):
			correction.Joined = false
		case errors.Is(err, unix.ENOENT):
			correction.Joined = false // no limit group: nothing to count against
		case err != nil:
			return err
		}
	}
	if !correction.Joined && len(correction.Detached) == 0 {
		return nil
	}
	correction.Nested = b.nestedPath(volume, nested)
	report(correction)
	return nil
}

// nestedPath is the path of the subvolume nested relative to the root of
// the subvolume volume it is nested in, by its links upwards; best effort
// (a tenant may rename or delete meanwhile): a step it cannot resolve is
// shown by its subvolume id.
func (b *Backend) nestedPath(volume, nested uint64) string {
	var steps []string
	for id := nested; id != volume && len(steps) < maxNestingWalk; {
		link, ok, err := linkOf(b.root, id)
		if err != nil || !ok {
			steps = append(steps, fmt.Sprintf("<subvolume %d>", id))
			break
		}
		dir, err := inodePath(b.root, link.parent, link.dirID)
		if err != nil {
			dir = fmt.Sprintf("<directory %d>/", link.dirID)
		}
		steps = append(steps, dir+link.name)
		id = link.parent
	}
	var rel string
	for i := len(steps) - 1; i >= 0; i-- {
		rel = path.Join(rel, steps[i])
	}
	return rel
}

// maxNestingWalk bounds a walk up the links of nested subvolumes: btrfs
// links cannot form a cycle, but a corrupt tree must not hang the driver.
const maxNestingWalk = 1 << 16
