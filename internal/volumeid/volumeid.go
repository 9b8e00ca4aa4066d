// Package volumeid makes and parses the IDs of toposnap volumes and snapshots.
// Every component reads them: the driver makes them, the central controller
// routes an imported snapshot by the owner its ID names.
package volumeid

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"

	"github.com/toposnap/toposnap/internal/topology"
)

// Kind tells volumes from snapshots in an ID.
type Kind byte

const (
	KindVolume   Kind = 'v'
	KindSnapshot Kind = 's'
)

// IDs look like "vn-0123456789abcdef-fedcba9876543210": kind (v|s), scope
// (n|z), a hash of the pool's owner (node id or region/zone) and a hash of
// the CSI name. They are deterministic, so a retried Create finds its earlier
// attempt without a name index, and they say which pool holds the object, so a
// driver can tell "not here" from "does not exist". They are opaque to users
// and never contain a path element.
var idPattern = regexp.MustCompile(`^([vs])([nz])-([0-9a-f]{16})-([0-9a-f]{16})$`)

// ID is a parsed object ID.
type ID struct {
	Kind      Kind
	Scope     topology.Scope
	OwnerHash string
	// NameHash is the hash of the CSI name the object was created under.
	NameHash string
}

// OwnerHash is the hash of a pool owner (node id or region/zone) as IDs
// carry it.
func OwnerHash(value string) string { return hash16(value) }

func hash16(value string) string {
	sum := sha256.Sum256([]byte(value))
	return hex.EncodeToString(sum[:8])
}

func scopeLetter(scope topology.Scope) string {
	if scope == topology.ScopeZone {
		return "z"
	}
	return "n"
}

// MakeID returns the ID of the object of this kind named name in the pool of
// the given scope and owner.
func MakeID(kind Kind, scope topology.Scope, owner, name string) string {
	return string(kind) + scopeLetter(scope) + "-" + hash16(owner) + "-" + hash16(name)
}

// ParseID validates an ID and returns what it encodes.
func ParseID(id string) (ID, error) {
	m := idPattern.FindStringSubmatch(id)
	if m == nil {
		return ID{}, fmt.Errorf("%q is not a toposnap ID (want e.g. vn-<16 hex>-<16 hex>)", id)
	}
	scope := topology.ScopeNode
	if m[2] == "z" {
		scope = topology.ScopeZone
	}
	return ID{Kind: Kind(m[1][0]), Scope: scope, OwnerHash: m[3], NameHash: m[4]}, nil
}

// CreatedUnder reports whether id is a toposnap ID made for the CSI name
// name (whatever its pool): a PV's handle made for another PV's name is not
// that PV's volume.
func CreatedUnder(id, name string) bool {
	parsed, err := ParseID(id)
	return err == nil && parsed.NameHash == hash16(name)
}
