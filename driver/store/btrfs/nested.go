package btrfs

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// NestedSubvolumeError refuses a snapshot or clone of a volume that holds
// subvolumes nested in it (made by a pod with `btrfs subvolume create`,
// podman, snapper...). btrfs snapshots are not recursive: the copy would
// show an empty directory where each one is, so it is not made at all.
type NestedSubvolumeError struct {
	// Source is the volume's path in the pool.
	Source string
	// Paths are the nested subvolumes, relative to the volume's root.
	Paths []string
}

// maxNamedPaths bounds how many paths the message names: a tenant may nest
// thousands, and the message ends up in an event.
const maxNamedPaths = 5

func (e *NestedSubvolumeError) Error() string {
	// Source is a path the pool chose (through a held descriptor, say:
	// /proc/self/fd/N/<id>); its last element names the object, which is
	// all a user needs.
	return fmt.Sprintf("%s: %s", filepath.Base(e.Source), e.Refusal())
}

// Refusal says what the user can do about it; the paths are quoted, as a
// tenant chose them.
func (e *NestedSubvolumeError) Refusal() string {
	var named strings.Builder
	for i, path := range e.Paths[:min(len(e.Paths), maxNamedPaths)] {
		if i > 0 {
			named.WriteString(", ")
		}
		named.WriteString(strconv.Quote(path))
	}
	if more := len(e.Paths) - maxNamedPaths; more > 0 {
		fmt.Fprintf(&named, " and %d more", more)
	}
	return fmt.Sprintf("the volume holds nested btrfs subvolumes that a snapshot cannot include: %s; "+
		"remove them (or make them plain directories) and retry", named.String())
}
