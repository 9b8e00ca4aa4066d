package driver

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/record"

	"github.com/toposnap/toposnap/driver/store"
	"github.com/toposnap/toposnap/internal/topology"
)

// TestUnrecoveredObjectIsAGaugeNotAnExit: a pool holding an object the
// driver cannot recover (metadata it did not write) does not stop the
// driver from starting; the object is counted in
// toposnap_driver_unrecovered_objects for that pool and reported by a
// Warning event on the Node.
func TestUnrecoveredObjectIsAGaugeNotAnExit(t *testing.T) {
	dir := t.TempDir()
	opts := Options{NodeID: "node1", DataDir: filepath.Join(dir, "pool"), ZoneDataDir: filepath.Join(dir, "zone"), Capacity: 1 << 30}
	location := topology.Location{Node: "node1", Zone: "zone-a", Region: "region-a"}
	first, err := New(opts, location)
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	// Root on another node of the zone plants a symlink as a volume's metadata.
	planted := store.MakeID(store.KindVolume, topology.ScopeZone, location.Region+"/"+location.Zone, "planted")
	if err := os.Symlink("/etc/hostname", filepath.Join(opts.ZoneDataDir, "meta", planted+".json")); err != nil {
		t.Fatal(err)
	}

	m := newMetrics()
	events := record.NewFakeRecorder(10)
	opts.events = events
	d, err := newDriver(opts, location, m)
	if err != nil {
		t.Fatalf("a planted metadata file stopped the driver: %v", err)
	}
	defer d.Close()
	select {
	case event := <-events.Events:
		if !strings.HasPrefix(event, "Warning PoolObjectNotRecovered zone pool: ") || !strings.Contains(event, planted) {
			t.Errorf("event %q; want a PoolObjectNotRecovered warning naming the zone pool and %s", event, planted)
		}
	default:
		t.Error("no event on the Node for the unrecovered object")
	}
	families, err := m.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, family := range families {
		if family.GetName() != "toposnap_driver_unrecovered_objects" {
			continue
		}
		for _, metric := range family.GetMetric() {
			for _, label := range metric.GetLabel() {
				got[label.GetValue()] = metric.GetGauge().GetValue()
			}
		}
	}
	if got["node"] != 0 || got["zone"] != 1 {
		t.Fatalf("toposnap_driver_unrecovered_objects by pool = %v; want node 0, zone 1", got)
	}
}
