package volumerecord

import (
	"strings"
	"testing"
)

func TestDeletableOrphan(t *testing.T) {
	for _, tc := range []struct {
		name    string
		context map[string]string
		listed  string
		want    string
	}{
		{"Delete, older than the list", map[string]string{ReclaimPolicy: "Delete", ClaimVersion: "99"}, "100", ""},
		{"Retain", map[string]string{ReclaimPolicy: "Retain", ClaimVersion: "99"}, "100", "outlives its PV"},
		{"no record", map[string]string{"scope": "node"}, "100", "records no reclaim policy"},
		{"younger than the list (etcd restored)", map[string]string{ReclaimPolicy: "Delete", ClaimVersion: "1000"}, "100", "younger than the PV list"},
		{"same version", map[string]string{ReclaimPolicy: "Delete", ClaimVersion: "100"}, "100", "younger"},
		{"version not a number", map[string]string{ReclaimPolicy: "Delete", ClaimVersion: "x"}, "100", "cannot be compared"},
		{"no list version", map[string]string{ReclaimPolicy: "Delete", ClaimVersion: "5"}, "", "cannot be compared"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := DeletableOrphan(tc.context, tc.listed)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Fatalf("DeletableOrphan = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestWithoutRecordAndRecord(t *testing.T) {
	params := map[string]string{"scope": "node", ReclaimPolicy: "Delete", ClaimVersion: "7"}
	if got := WithoutRecord(params); len(got) != 1 || got["scope"] != "node" {
		t.Fatalf("WithoutRecord = %v", got)
	}
	if got := Record(params); len(got) != 2 || got[ClaimVersion] != "7" {
		t.Fatalf("Record = %v", got)
	}
	if len(params) != 3 {
		t.Fatalf("params changed: %v", params)
	}
}

func BenchmarkDeletableOrphan(b *testing.B) {
	context := map[string]string{ReclaimPolicy: "Delete", ClaimVersion: "123456"}
	for b.Loop() {
		if DeletableOrphan(context, "123457") != "" {
			b.Fatal("kept")
		}
	}
}
