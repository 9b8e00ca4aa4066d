// Package route names who acts on an object: the label the central
// controller stamps on every claim, PV, VolumeSnapshot and content of the
// driver, and the selector a node agent watches with, so that a node's
// caches, watches and writes hold its own objects only.
//
// A node's value is "n.<node name>" when that fits a label value, else
// "n-<hash>"; a zone's is "z-<hash of region/zone>". The two never collide:
// node values begin "n." or "n-", zone values "z-".
package route

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Label is the routing label's key.
const Label = "toposnap.io/route"

// Node is the route of a node's own objects: its node-scope volumes and
// snapshots, and its claims while it provisions them.
func Node(name string) string {
	if value := "n." + name; len(validation.IsValidLabelValue(value)) == 0 {
		return value
	}
	return "n-" + digest(name)
}

// Zone is the route of a zone's objects (zone-scope volumes and snapshots,
// claims the zone provisions), handled by the holder of the zone's Lease.
// zone is "<region>/<zone>", as the provisioner records a zone.
func Zone(zone string) string {
	return "z-" + digest(zone)
}

// ZoneOf joins a region and a zone as Zone expects them; "" without a zone.
func ZoneOf(region, zone string) string {
	if zone == "" {
		return ""
	}
	return region + "/" + zone
}

// IsZone says whether a route value is a zone's.
func IsZone(value string) bool { return strings.HasPrefix(value, "z-") }

// Selector is what a node agent watches: objects routed to the node, and
// to its zone when zone is not empty.
func Selector(node, zone string) labels.Selector {
	values := []string{Node(node)}
	if zone != "" {
		values = append(values, Zone(zone))
	}
	requirement, err := labels.NewRequirement(Label, selection.In, values)
	if err != nil {
		// Node and Zone only make valid label values.
		panic(err)
	}
	return labels.NewSelector().Add(*requirement)
}

// Carry is the route label an object passes on to what is made for it (a
// claim to its PV, a snapshot to its content), so the node that made it
// sees it at once; nil when it has no route.
func Carry(from map[string]string) map[string]string {
	if value := Of(from); value != "" {
		return map[string]string{Label: value}
	}
	return nil
}

// Of reads an object's route from its labels.
func Of(objectLabels map[string]string) string { return objectLabels[Label] }

func digest(value string) string {
	sum := sha256.Sum256([]byte(value))
	return hex.EncodeToString(sum[:12])
}
