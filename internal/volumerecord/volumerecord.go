// Package volumerecord names what the provisioner records on a volume when
// it creates it: CreateVolume parameters the driver keeps with the volume
// without acting on them, and reports back in ListVolumes' volume context.
// An orphan check reads them to know whether a volume without a PV may go.
package volumerecord

import (
	"maps"
	"strings"

	"k8s.io/apimachinery/pkg/util/resourceversion"
)

// Prefix starts every recorded key.
const Prefix = "toposnap.io/record."

const (
	// ReclaimPolicy is the reclaim policy of the volume's PV: a Retain
	// volume outlives its PV by design and is never an orphan to delete.
	ReclaimPolicy = Prefix + "reclaim-policy"
	// ClaimVersion is the claim's resourceVersion when the volume was first
	// asked for: a list of PVs older than that (an etcd restored from a
	// backup that predates the volume) cannot prove the volume unreferenced.
	ClaimVersion = Prefix + "claim-resource-version"
)

// Is reports whether key is a recorded key.
func Is(key string) bool { return strings.HasPrefix(key, Prefix) }

// WithoutRecord returns params without the recorded keys: what a retried
// CreateVolume must match (the record is the first request's, and a retry
// may see a newer claim).
func WithoutRecord(params map[string]string) map[string]string {
	out := maps.Clone(params)
	maps.DeleteFunc(out, func(key string, _ string) bool { return Is(key) })
	return out
}

// Record returns params' recorded keys only.
func Record(params map[string]string) map[string]string {
	out := map[string]string{}
	for key, value := range params {
		if Is(key) {
			out[key] = value
		}
	}
	return out
}

// DeletableOrphan says why a volume no PV references must stay, from its
// volume context and the resourceVersion of the PV list it was compared
// against; "" lets it go.
func DeletableOrphan(context map[string]string, listed string) string {
	policy, version := context[ReclaimPolicy], context[ClaimVersion]
	switch {
	case policy == "":
		return "it records no reclaim policy (created before toposnap recorded one)"
	case policy != "Delete":
		return "its reclaim policy is " + policy + ": it outlives its PV by design"
	}
	order, err := resourceversion.CompareResourceVersion(version, listed)
	switch {
	case err != nil:
		return "its claim's version " + version + " cannot be compared with the PV list's " + listed
	case order >= 0:
		return "it is younger than the PV list it was compared with (claim version " + version + ", list " + listed + "): the API may have been restored from an older backup"
	}
	return ""
}
