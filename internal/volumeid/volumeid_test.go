package volumeid

import (
	"testing"

	"github.com/toposnap/toposnap/internal/topology"
)

func TestCreatedUnder(t *testing.T) {
	made := MakeID(KindVolume, topology.ScopeNode, "node1", "pvc-1")
	for _, tc := range []struct {
		name, id, csiName string
		want              bool
	}{
		{"the name it was made under", made, "pvc-1", true},
		{"another name", made, "pvc-2", false},
		{"the same name in a zone pool", MakeID(KindVolume, topology.ScopeZone, "r/z", "pvc-1"), "pvc-1", true},
		{"not an ID", "pvc-1", "pvc-1", false},
		{"empty", "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := CreatedUnder(tc.id, tc.csiName); got != tc.want {
				t.Fatalf("CreatedUnder(%q, %q) = %v, want %v", tc.id, tc.csiName, got, tc.want)
			}
		})
	}
}

func TestParseIDReturnsWhatMakeIDEncodes(t *testing.T) {
	id := MakeID(KindSnapshot, topology.ScopeZone, "region/zone", "snapcontent-1")
	parsed, err := ParseID(id)
	if err != nil {
		t.Fatal(err)
	}
	want := ID{Kind: KindSnapshot, Scope: topology.ScopeZone, OwnerHash: OwnerHash("region/zone"), NameHash: OwnerHash("snapcontent-1")}
	if parsed != want {
		t.Fatalf("ParseID(%q) = %+v, want %+v", id, parsed, want)
	}
}

func BenchmarkCreatedUnder(b *testing.B) {
	id := MakeID(KindVolume, topology.ScopeNode, "node1", "pvc-1")
	for b.Loop() {
		if !CreatedUnder(id, "pvc-1") {
			b.Fatal("not created under its name")
		}
	}
}
