package webhook

import (
	"fmt"
	"sort"
	"strings"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
)

// AnnDefaultSnapshotClass marks a driver's default VolumeSnapshotClass
// (snapshotter.AnnDefaultClass; not imported to keep the binary lean).
const AnnDefaultSnapshotClass = "snapshot.storage.kubernetes.io/is-default-class"

// isDefaultSnapshotClass reports whether class is marked its driver's default.
func isDefaultSnapshotClass(class *snapv1.VolumeSnapshotClass) bool {
	return class != nil && class.Annotations[AnnDefaultSnapshotClass] == "true"
}

// ValidateSnapshotClass decides on a VolumeSnapshotClass CREATE or UPDATE
// (old is nil on CREATE): a driver may have at most one default class, as
// snapshot controllers cannot choose between two. A class that was already
// its driver's default stays admissible, so that clusters which had two
// defaults before the webhook can still edit them. Field validation is left
// to the CRD's own rules.
func ValidateSnapshotClass(class, old *snapv1.VolumeSnapshotClass, classes []*snapv1.VolumeSnapshotClass) Decision {
	if !isDefaultSnapshotClass(class) {
		return allow()
	}
	if isDefaultSnapshotClass(old) && old.Driver == class.Driver {
		return allow()
	}
	var defaults []string
	for _, existing := range classes {
		if existing != nil && existing.Name != class.Name && existing.Driver == class.Driver && isDefaultSnapshotClass(existing) {
			defaults = append(defaults, existing.Name)
		}
	}
	if len(defaults) == 0 {
		return allow()
	}
	sort.Strings(defaults)
	existing, is := "VolumeSnapshotClass "+defaults[0]+" is", defaults[0]
	if len(defaults) > 1 {
		existing, is = "VolumeSnapshotClasses "+strings.Join(defaults, ", ")+" are", strings.Join(defaults, ", ")
	}
	return deny(fmt.Sprintf("%s already the default for driver %s: remove annotation %s from %s or from %s",
		existing, class.Driver, AnnDefaultSnapshotClass, is, class.Name))
}
