package provisioner

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/toposnap/toposnap/internal/kube"
)

// ZoneLeaseName is the coordination.k8s.io Lease whose holder owns a zone's
// node-independent work: Immediate-binding zone claims, zone volume
// deletion, resizing and the zone's orphan report.
func ZoneLeaseName(region, zone string) string {
	sum := sha256.Sum256([]byte(region + "/" + zone))
	return "toposnap-zone-" + hex.EncodeToString(sum[:8])
}

// zoneOwner campaigns for the zone's Lease and says whether this node holds it.
type zoneOwner = kube.Holder
