package store

import (
	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/internal/volumeid"
)

// The ID format lives in internal/volumeid, which the controllers read too.
type (
	Kind = volumeid.Kind
	ID   = volumeid.ID
)

const (
	KindVolume   = volumeid.KindVolume
	KindSnapshot = volumeid.KindSnapshot
)

// MakeID returns the ID of the object of this kind named name in the pool of
// the given scope and owner.
func MakeID(kind Kind, scope topology.Scope, owner, name string) string {
	return volumeid.MakeID(kind, scope, owner, name)
}

// ParseID validates an ID and returns what it encodes.
func ParseID(id string) (ID, error) { return volumeid.ParseID(id) }

func hash16(value string) string { return volumeid.OwnerHash(value) }
