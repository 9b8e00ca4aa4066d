package provisioner

import (
	"crypto/sha256"
	"encoding/hex"
)

// ZoneLeaseName is the coordination.k8s.io Lease whose holder owns a zone's
// node-independent work: Immediate-binding zone claims, zone volume
// deletion, resizing and the zone's orphan report.
func ZoneLeaseName(region, zone string) string {
	sum := sha256.Sum256([]byte(region + "/" + zone))
	return "toposnap-zone-" + hex.EncodeToString(sum[:8])
}

// leaseHolder says whether this node holds its zone's Lease (kube.Holder
// campaigns for it; tests hold it by decree).
type leaseHolder interface{ Holds() bool }
