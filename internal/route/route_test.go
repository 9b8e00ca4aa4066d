package route

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

func TestValuesAreLabelValuesAndDistinct(t *testing.T) {
	long := strings.Repeat("a", 62) + ".example.com"
	for _, tc := range []struct {
		name, got, want string
	}{
		{name: "short node", got: Node("node1"), want: "n.node1"},
		{name: "dotted node", got: Node("ip-10-0-0-1.ec2.internal"), want: "n.ip-10-0-0-1.ec2.internal"},
		{name: "long node is hashed", got: Node(long), want: "n-" + digest(long)},
		{name: "zone is hashed", got: Zone("eu/eu-1a"), want: "z-" + digest("eu/eu-1a")},
		{name: "zone without region", got: Zone("/z1"), want: "z-" + digest("/z1")},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, tc.got, tc.want)
		}
		if errs := validation.IsValidLabelValue(tc.got); len(errs) > 0 {
			t.Errorf("%s: %q is not a label value: %v", tc.name, tc.got, errs)
		}
	}
	// A node named like another node's hash, or like a zone's value, gets
	// a value of its own.
	seen := map[string]string{}
	for _, value := range []string{Node("a"), Node("n.a"), Node(long), Node("z-" + digest("r/z")), Zone("r/z"), Zone("r/z2")} {
		if other, ok := seen[value]; ok {
			t.Errorf("route %q given twice (%s)", value, other)
		}
		seen[value] = value
	}
	if IsZone(Node("z-1")) || !IsZone(Zone("r/z")) {
		t.Error("IsZone mistakes a node's route for a zone's, or the reverse")
	}
}

func TestZoneOf(t *testing.T) {
	for _, tc := range []struct{ region, zone, want string }{
		{"eu", "eu-1a", "eu/eu-1a"},
		{"", "z1", "/z1"},
		{"eu", "", ""},
	} {
		if got := ZoneOf(tc.region, tc.zone); got != tc.want {
			t.Errorf("ZoneOf(%q, %q) = %q, want %q", tc.region, tc.zone, got, tc.want)
		}
	}
}

func TestSelectorMatchesOwnRoutesOnly(t *testing.T) {
	selector := Selector("node1", "r/z1")
	for _, tc := range []struct {
		labels map[string]string
		want   bool
	}{
		{map[string]string{Label: Node("node1")}, true},
		{map[string]string{Label: Zone("r/z1")}, true},
		{map[string]string{Label: Node("node2")}, false},
		{map[string]string{Label: Zone("r/z2")}, false},
		{map[string]string{}, false},
		{map[string]string{"other": Node("node1")}, false},
	} {
		if got := selector.Matches(labels.Set(tc.labels)); got != tc.want {
			t.Errorf("Selector(node1, r/z1) on %v = %v, want %v", tc.labels, got, tc.want)
		}
	}
	if Selector("node1", "").Matches(labels.Set{Label: Zone("")}) {
		t.Error("a node without a zone selects a zone route")
	}
}

func BenchmarkNode(b *testing.B) {
	for b.Loop() {
		_ = Node("ip-10-0-0-1.ec2.internal")
	}
}

func BenchmarkZone(b *testing.B) {
	for b.Loop() {
		_ = Zone("eu-west-1/eu-west-1a")
	}
}

func TestCarry(t *testing.T) {
	if got := Carry(map[string]string{Label: "n.a", "app": "db"}); len(got) != 1 || got[Label] != "n.a" {
		t.Errorf("Carry kept %v, want only the route", got)
	}
	if got := Carry(map[string]string{"app": "db"}); got != nil {
		t.Errorf("Carry of an unrouted object = %v, want nil", got)
	}
}
