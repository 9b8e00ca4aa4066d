package btrfs

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Reconcile makes the qgroup of every subvolume nested (at any depth) in
// the volume at path a member of exactly the volume's level-1 qgroup, the
// one holding its limit: a pod that created a subvolume with its own
// inheritance list (none, or a neighbour's qgroup) is put back under its
// volume's limit, and a neighbour it charged gets its charge back (simple
// quotas move a member's whole charge with the relation). It returns how
// many memberships it changed. Writes made before it ran stay where they
// were charged until the relation moves them; a volume over its limit
// then refuses writes until it is below.
//
// Only for simple quotas: under full quotas nested subvolumes are not
// counted at all.
func (b *Backend) Reconcile(path string) (int, error) {
	if !b.simple {
		return 0, nil
	}
	f, err := os.OpenFile(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return 0, fmt.Errorf("open volume %s: %w", path, err)
	}
	defer f.Close()
	if root, err := isSubvolumeRoot(f); err != nil || !root {
		return 0, err
	}
	volume, err := subvolumeID(f)
	if err != nil {
		return 0, err
	}
	limitGroup := qgroupID(1, volume)
	changed := 0
	tree := []uint64{volume}
	for i := 0; i < len(tree); i++ {
		children, err := childSubvolumes(b.root, tree[i])
		if err != nil {
			return changed, err
		}
		tree = append(tree, children...)
		if i == 0 {
			continue
		}
		own := qgroupID(0, tree[i])
		parents, err := qgroupParents(b.root, own)
		if err != nil {
			return changed, err
		}
		member := false
		for _, parent := range parents {
			if parent == limitGroup {
				member = true
				continue
			}
			if err := assignQgroup(b.root, own, parent, false); err != nil && !errors.Is(err, unix.ENOENT) {
				return changed, err
			}
			changed++
		}
		if !member {
			if err := assignQgroup(b.root, own, limitGroup, true); err != nil && !errors.Is(err, unix.EEXIST) {
				return changed, err
			}
			changed++
		}
	}
	return changed, nil
}
