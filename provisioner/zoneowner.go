package provisioner

import "github.com/toposnap/toposnap/internal/kube"

// ZoneLeaseName is the coordination.k8s.io Lease whose holder owns a zone's
// node-independent work: Immediate-binding zone claims, zone volume
// deletion, resizing and the zone's orphan report.
func ZoneLeaseName(region, zone string) string { return kube.ZoneLeaseName(region, zone) }

// leaseHolder says whether this node holds its zone's Lease (kube.Holder
// campaigns for it; tests hold it by decree).
type leaseHolder interface{ Holds() bool }

// neverHolds is RoleNode's: the zone's work is another Controller's.
type neverHolds struct{}

func (neverHolds) Holds() bool { return false }
