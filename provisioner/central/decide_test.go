package central

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/route"
	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/internal/volumeid"
	"github.com/toposnap/toposnap/provisioner"
)

const testDriver = "csi.toposnap.io"

// factsTable is Facts as a table: what the central caches would hold.
type factsTable struct {
	classes  map[string]*storagev1.StorageClass
	volumes  map[string]*corev1.PersistentVolume
	claims   map[string]*corev1.PersistentVolumeClaim // by "namespace/name"
	contents map[string]*snapv1.VolumeSnapshotContent
	nodes    map[string]map[string]string // labels by Node name
}

func newFacts(objects ...runtime.Object) *factsTable {
	f := &factsTable{
		classes:  map[string]*storagev1.StorageClass{},
		volumes:  map[string]*corev1.PersistentVolume{},
		claims:   map[string]*corev1.PersistentVolumeClaim{},
		contents: map[string]*snapv1.VolumeSnapshotContent{},
		nodes:    map[string]map[string]string{},
	}
	for _, obj := range objects {
		switch o := obj.(type) {
		case *storagev1.StorageClass:
			f.classes[o.Name] = o
		case *corev1.PersistentVolume:
			f.volumes[o.Name] = o
		case *corev1.PersistentVolumeClaim:
			f.claims[o.Namespace+"/"+o.Name] = o
		case *snapv1.VolumeSnapshotContent:
			f.contents[o.Name] = o
		case *metav1.PartialObjectMetadata:
			labels := maps.Clone(o.Labels)
			if labels == nil {
				labels = map[string]string{}
			}
			f.nodes[o.Name] = labels
		default:
			panic(fmt.Sprintf("factsTable cannot hold %T", obj))
		}
	}
	return f
}

func (f *factsTable) Class(name string) *storagev1.StorageClass         { return f.classes[name] }
func (f *factsTable) PV(name string) *corev1.PersistentVolume           { return f.volumes[name] }
func (f *factsTable) NodeLabels(name string) map[string]string          { return f.nodes[name] }
func (f *factsTable) Content(name string) *snapv1.VolumeSnapshotContent { return f.contents[name] }

func (f *factsTable) Claim(namespace, name string) *corev1.PersistentVolumeClaim {
	return f.claims[namespace+"/"+name]
}

func (f *factsTable) PVByHandle(handle string) *corev1.PersistentVolume {
	for _, pv := range f.volumes {
		if pv.Spec.CSI != nil && pv.Spec.CSI.VolumeHandle == handle {
			return pv
		}
	}
	return nil
}

// NodeByID answers "" for an id no Node carries, as the central caches do
// (the router then takes the id for the Node's name).
func (f *factsTable) NodeByID(id string) string {
	for name, labels := range f.nodes {
		if labels[topology.NodeKey] == id {
			return name
		}
	}
	return ""
}

func (f *factsTable) Owner(hash string) (node, zone string) {
	for name, labels := range f.nodes {
		if volumeid.OwnerHash(name) == hash || labels[topology.NodeKey] != "" && volumeid.OwnerHash(labels[topology.NodeKey]) == hash {
			node = name
		}
		if z := nodeZone(name, labels); z != "" && volumeid.OwnerHash(z) == hash {
			zone = z
		}
	}
	return node, zone
}

func (f *factsTable) Zones() []string {
	var zones []string
	for name, labels := range f.nodes {
		if z := nodeZone(name, labels); z != "" && !slices.Contains(zones, z) {
			zones = append(zones, z)
		}
	}
	slices.Sort(zones)
	return zones
}

func nodeZone(name string, labels map[string]string) string {
	location := topology.LocationFromLabels(name, labels)
	return route.ZoneOf(location.Region, location.Zone)
}

// Objects of a routing world.

// nodeMetadata is a Node as the central controller caches it: metadata only.
func nodeMetadata(name string, labels map[string]string) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
	}
}

func zoned(region, zone string, more ...string) map[string]string {
	labels := map[string]string{topology.ZoneKey: zone, topology.RegionKey: region}
	for i := 0; i+1 < len(more); i += 2 {
		labels[more[i]] = more[i+1]
	}
	return labels
}

func class(name, scope string, mode storagev1.VolumeBindingMode, allowed ...corev1.TopologySelectorTerm) *storagev1.StorageClass {
	return &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: testDriver,
		Parameters: map[string]string{"scope": scope}, VolumeBindingMode: ptr.To(mode), AllowedTopologies: allowed}
}

func zonesTerm(region string, zones ...string) corev1.TopologySelectorTerm {
	return corev1.TopologySelectorTerm{MatchLabelExpressions: []corev1.TopologySelectorLabelRequirement{
		{Key: topology.RegionKey, Values: []string{region}},
		{Key: topology.ZoneKey, Values: zones},
	}}
}

// claim is a pending claim of class in namespace "ns"; annotations come
// in key, value pairs.
func claim(name, className string, annotations ...string) *corev1.PersistentVolumeClaim {
	c := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("uid-" + name)},
		Spec:       corev1.PersistentVolumeClaimSpec{StorageClassName: ptr.To(className)},
	}
	for i := 0; i+1 < len(annotations); i += 2 {
		metav1.SetMetaDataAnnotation(&c.ObjectMeta, annotations[i], annotations[i+1])
	}
	return c
}

// csiPV is a PV of driver with handle and, when segment is not empty, a
// required node affinity on it.
func csiPV(name, driver, handle string, segment topology.Segment) *corev1.PersistentVolume {
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name)},
		Spec: corev1.PersistentVolumeSpec{PersistentVolumeSource: corev1.PersistentVolumeSource{
			CSI: &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: handle},
		}},
	}
	if len(segment) > 0 {
		var term corev1.NodeSelectorTerm
		for _, key := range slices.Sorted(maps.Keys(segment)) {
			term.MatchExpressions = append(term.MatchExpressions, corev1.NodeSelectorRequirement{
				Key: key, Operator: corev1.NodeSelectorOpIn, Values: []string{segment[key]}})
		}
		pv.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{term}}}
	}
	return pv
}

func volumeHandle(scope topology.Scope, owner, name string) string {
	return volumeid.MakeID(volumeid.KindVolume, scope, owner, name)
}

func snapshotHandle(scope topology.Scope, owner, name string) string {
	return volumeid.MakeID(volumeid.KindSnapshot, scope, owner, name)
}

// content is a content of driver; the edits fill in its source and
// annotations.
func content(name, driver string, edits ...func(*snapv1.VolumeSnapshotContent)) *snapv1.VolumeSnapshotContent {
	c := &snapv1.VolumeSnapshotContent{ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name)},
		Spec: snapv1.VolumeSnapshotContentSpec{Driver: driver}}
	for _, edit := range edits {
		edit(c)
	}
	return c
}

func fromVolume(handle string) func(*snapv1.VolumeSnapshotContent) {
	return func(c *snapv1.VolumeSnapshotContent) { c.Spec.Source.VolumeHandle = ptr.To(handle) }
}

func fromSnapshot(handle string) func(*snapv1.VolumeSnapshotContent) {
	return func(c *snapv1.VolumeSnapshotContent) { c.Spec.Source.SnapshotHandle = ptr.To(handle) }
}

func accessibleFrom(t testing.TB, segments ...topology.Segment) func(*snapv1.VolumeSnapshotContent) {
	annotation, err := topology.EncodeSegments(segments)
	if err != nil {
		t.Fatal(err)
	}
	return annotated(topology.AnnAccessibleTopology, annotation)
}

func annotated(key, value string) func(*snapv1.VolumeSnapshotContent) {
	return func(c *snapv1.VolumeSnapshotContent) { metav1.SetMetaDataAnnotation(&c.ObjectMeta, key, value) }
}

func edit[T any](obj T, change func(T)) T {
	change(obj)
	return obj
}

// The shared world: node-1's driver id differs from its name; node-2's is
// its name; node-legacy carries the failure-domain labels only.
var (
	node1      = nodeMetadata("node-1", zoned("r", "a", topology.NodeKey, "id-1"))
	node2      = nodeMetadata("node-2", zoned("r", "b"))
	node3      = nodeMetadata("node-3", zoned("r", "c", topology.NodeKey, "node-3"))
	nodeLegacy = nodeMetadata("node-legacy", map[string]string{topology.LegacyRegionKey: "old", topology.LegacyZoneKey: "x"})
	nodeNoZone = nodeMetadata("node-nozone", map[string]string{"kubernetes.io/hostname": "node-nozone"})

	classLocal        = class("local", "node", storagev1.VolumeBindingWaitForFirstConsumer)
	classLocalNow     = class("local-now", "node", storagev1.VolumeBindingImmediate)
	classZonal        = class("zonal", "zone", storagev1.VolumeBindingWaitForFirstConsumer)
	classZonalNow     = class("zonal-now", "zone", storagev1.VolumeBindingImmediate)
	classZonalAB      = class("zonal-ab", "zone", storagev1.VolumeBindingImmediate, zonesTerm("r", "a", "b"))
	classZonalNowhere = class("zonal-nowhere", "zone", storagev1.VolumeBindingImmediate, zonesTerm("r", "z"))
	classOther        = edit(class("other", "node", storagev1.VolumeBindingWaitForFirstConsumer),
		func(c *storagev1.StorageClass) { c.Provisioner = "other.csi.example.com" })
	classTypo = edit(class("typo", "zone", storagev1.VolumeBindingWaitForFirstConsumer),
		func(c *storagev1.StorageClass) { c.Parameters = map[string]string{"scoep": "zone"} })
	classTypoNow = edit(class("typo-now", "zone", storagev1.VolumeBindingImmediate),
		func(c *storagev1.StorageClass) { c.Parameters = map[string]string{"scoep": "zone"} })

	pvOnNode1 = csiPV("pv-node-1", testDriver, volumeHandle(topology.ScopeNode, "id-1", "pv-node-1"), topology.Segment{topology.NodeKey: "id-1"})
	pvInZoneB = csiPV("pv-zone-b", testDriver, volumeHandle(topology.ScopeZone, "r/b", "pv-zone-b"),
		topology.Segment{topology.RegionKey: "r", topology.ZoneKey: "b"})
	// pvForeign is a static PV of the driver that no node or zone can act on.
	pvForeign = csiPV("pv-foreign", testDriver, "foreign-0123", nil)
)

func world(objects ...runtime.Object) Router {
	base := []runtime.Object{node1, node2, node3, nodeLegacy, nodeNoZone,
		classLocal, classLocalNow, classZonal, classZonalNow, classZonalAB, classZonalNowhere, classOther, classTypo, classTypoNow,
		pvOnNode1, pvInZoneB, pvForeign}
	return Router{Driver: testDriver, Facts: newFacts(append(base, objects...)...)}
}

// checkDecision: got routes to wantRoute and, when wantReason is not "",
// says why it cannot with a reason that names wantReason; when wantReason
// is "", it gives no reason (the object is not the driver's, or waits).
func checkDecision(t *testing.T, got Decision, wantRoute, wantReason string) {
	t.Helper()
	if got.Route != wantRoute {
		t.Errorf("route = %q, want %q", got.Route, wantRoute)
	}
	switch {
	case wantReason == "" && got.Reason != "":
		t.Errorf("reason %q, want none", got.Reason)
	case wantReason != "" && !strings.Contains(got.Reason, wantReason):
		t.Errorf("reason %q, want one naming %q", got.Reason, wantReason)
	}
}

func TestClaimRoute(t *testing.T) {
	const selected = provisioner.AnnSelectedNode
	routed := func(value string) func(*corev1.PersistentVolumeClaim) {
		return func(c *corev1.PersistentVolumeClaim) { metav1.SetMetaDataLabel(&c.ObjectMeta, route.Label, value) }
	}
	provisioning := func(c *corev1.PersistentVolumeClaim) {
		c.Finalizers = append(c.Finalizers, provisioner.FinalizerProvisioning)
	}
	boundTo := func(pv string) func(*corev1.PersistentVolumeClaim) {
		return func(c *corev1.PersistentVolumeClaim) { c.Spec.VolumeName = pv }
	}
	for _, tc := range []struct {
		name  string
		claim *corev1.PersistentVolumeClaim
		want  string
		why   string // a fact the reason names when the claim cannot be routed
	}{
		{name: "claim of another driver's class is not routed", claim: claim("c", "other", selected, "node-1"), want: ""},
		{name: "claim of an unknown class is not routed", claim: claim("c", "gone", selected, "node-1"), want: ""},
		{name: "claim without a class is not routed",
			claim: edit(claim("c", "", selected, "node-1"), func(c *corev1.PersistentVolumeClaim) { c.Spec.StorageClassName = nil }), want: ""},
		{name: "class named by the beta annotation routes the claim",
			claim: edit(claim("c", "", selected, "node-1", corev1.BetaStorageClassAnnotation, "local"),
				func(c *corev1.PersistentVolumeClaim) { c.Spec.StorageClassName = nil }),
			want: route.Node("node-1")},
		{name: "class with an unknown parameter goes to the selected node, which reports it", claim: claim("c", "typo", selected, "node-1"), want: route.Node("node-1")},
		{name: "class with an unknown parameter and no selected node waits for the scheduler", claim: claim("c", "typo"), want: ""},
		{name: "immediate class with an unknown parameter cannot be routed, naming the parameter",
			claim: claim("c", "typo-now"), want: "", why: "scoep"},
		{name: "node-scope claim waits for the scheduler", claim: claim("c", "local"), want: ""},
		{name: "node-scope claim goes to its selected node", claim: claim("c", "local", selected, "node-2"), want: route.Node("node-2")},
		{name: "node-scope claim goes to its selected node before that Node is cached",
			claim: claim("c", "local", selected, "node-9"), want: route.Node("node-9")},
		{name: "immediate node-scope claim has no owner, naming its class", claim: claim("c", "local-now"), want: "", why: `"local-now"`},
		{name: "zone claim goes to the zone of its selected node", claim: claim("c", "zonal", selected, "node-1"), want: route.Zone("r/a")},
		{name: "zone of a node labelled with the failure-domain keys", claim: claim("c", "zonal", selected, "node-legacy"), want: route.Zone("old/x")},
		{name: "zone claim whose selected node is not cached cannot be routed, naming the node",
			claim: claim("c", "zonal", selected, "node-9"), want: "", why: `"node-9" does not exist`},
		{name: "zone claim whose selected node has no zone cannot be routed, naming the node",
			claim: claim("c", "zonal", selected, "node-nozone"), want: "", why: `"node-nozone" has no zone`},
		{name: "immediate zone claim whose class allows no zone with nodes cannot be routed, naming the class",
			claim: claim("c", "zonal-nowhere"), want: "", why: `"zonal-nowhere" allows no zone`},
		{name: "delayed zone claim waits for the scheduler", claim: claim("c", "zonal"), want: ""},
		{name: "claim a zone took goes to that zone",
			claim: claim("c", "zonal-now", provisioner.AnnProvisioningZone, "r/c"), want: route.Zone("r/c")},
		{name: "claim a zone took goes to that zone, not its selected node's",
			claim: claim("c", "zonal", selected, "node-1", provisioner.AnnProvisioningZone, "r/b"), want: route.Zone("r/b")},
		{name: "an empty provisioning-zone annotation is no zone",
			claim: claim("c", "zonal", selected, "node-1", provisioner.AnnProvisioningZone, ""), want: route.Zone("r/a")},
		{name: "claim being provisioned keeps its route when the scheduler picks again",
			claim: edit(claim("c", "local", selected, "node-2"), func(c *corev1.PersistentVolumeClaim) {
				routed(route.Node("node-1"))(c)
				provisioning(c)
			}),
			want: route.Node("node-1")},
		{name: "claim being provisioned keeps its route after losing its selected node",
			claim: edit(claim("c", "local"), func(c *corev1.PersistentVolumeClaim) {
				routed(route.Node("node-1"))(c)
				provisioning(c)
			}),
			want: route.Node("node-1")},
		{name: "claim being provisioned without a route yet is decided",
			claim: edit(claim("c", "local", selected, "node-2"), provisioning), want: route.Node("node-2")},
		{name: "claim not being provisioned follows its new selected node",
			claim: edit(claim("c", "local", selected, "node-2"), routed(route.Node("node-1"))), want: route.Node("node-2")},
		{name: "claim not being provisioned that lost its selected node is unrouted",
			claim: edit(claim("c", "local"), routed(route.Node("node-1"))), want: ""},
		{name: "bound claim follows its PV, not its selected node",
			claim: edit(claim("c", "local", selected, "node-2"), boundTo("pv-node-1")), want: route.Node("node-1")},
		{name: "bound zone claim follows its PV's zone",
			claim: edit(claim("c", "zonal", selected, "node-1"), boundTo("pv-zone-b")), want: route.Zone("r/b")},
		{name: "bound claim whose class is gone follows its PV",
			claim: edit(claim("c", "gone"), boundTo("pv-node-1")), want: route.Node("node-1")},
		{name: "bound claim whose PV cannot be routed says why the PV cannot",
			claim: edit(claim("c", "zonal", selected, "node-9"), boundTo("pv-foreign")), want: "", why: `bound PV "pv-foreign": volume handle "foreign-0123"`},
		{name: "bound claim whose PV cannot be routed but whose selected node can goes there",
			claim: edit(claim("c", "local", selected, "node-2"), boundTo("pv-foreign")), want: route.Node("node-2")},
		{name: "bound claim of an unknown class whose PV is not cached keeps its route",
			claim: edit(claim("c", "gone"), func(c *corev1.PersistentVolumeClaim) {
				boundTo("pv-9")(c)
				routed(route.Zone("r/c"))(c)
			}),
			want: route.Zone("r/c")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkDecision(t, world().ClaimRoute(tc.claim), tc.want, tc.why)
		})
	}
}

func TestImmediateZoneClaimsSpreadOverAllowedZones(t *testing.T) {
	r := world()
	for _, tc := range []struct {
		name, class string
		allowed     []string
	}{
		{name: "class without allowedTopologies spreads over every zone", class: "zonal-now",
			allowed: []string{"old/x", "r/a", "r/b", "r/c"}},
		{name: "class allowing zones a and b spreads over those", class: "zonal-ab", allowed: []string{"r/a", "r/b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			allowed := map[string]string{}
			for _, zone := range tc.allowed {
				allowed[route.Zone(zone)] = zone
			}
			claims := map[string]int{}
			for i := range 200 {
				c := claim(fmt.Sprintf("c-%d", i), tc.class)
				got := r.ClaimRoute(c).Route
				if _, ok := allowed[got]; !ok {
					t.Fatalf("claim %s routed to %q, not a zone of %v", c.UID, got, tc.allowed)
				}
				if again := r.ClaimRoute(c.DeepCopy()).Route; again != got {
					t.Fatalf("claim %s routed to %q, then to %q", c.UID, got, again)
				}
				claims[allowed[got]]++
			}
			for _, zone := range tc.allowed {
				if claims[zone] < 200/len(tc.allowed)/2 {
					t.Errorf("zone %s got %d of 200 claims, want about %d: %v", zone, claims[zone], 200/len(tc.allowed), claims)
				}
			}
		})
	}
	t.Run("no zone has nodes of the driver", func(t *testing.T) {
		empty := Router{Driver: testDriver, Facts: newFacts(classZonalNow)}
		checkDecision(t, empty.ClaimRoute(claim("c", "zonal-now")), "", "no node of the driver is in a zone")
	})
}

// TestGivenBackZoneClaimMovesOn: each zone that gave an Immediate zone
// claim back (the provisioner counts it in AnnZoneAttempts) sends it to the
// next zone its class allows, so after as many attempts as zones every
// allowed zone had its turn; a count that is not a number counts as none.
func TestGivenBackZoneClaimMovesOn(t *testing.T) {
	r := world()
	allowed := map[string]bool{route.Zone("r/a"): true, route.Zone("r/b"): true}
	seen := map[string]bool{}
	for attempts := range 2 {
		got := r.ClaimRoute(claim("c", "zonal-ab", provisioner.AnnZoneAttempts, strconv.Itoa(attempts))).Route
		if !allowed[got] {
			t.Fatalf("after %d attempts routed to %q, not an allowed zone", attempts, got)
		}
		seen[got] = true
	}
	if len(seen) != 2 {
		t.Errorf("two attempts visited %d zones, want both allowed zones", len(seen))
	}
	if got, want := r.ClaimRoute(claim("c", "zonal-ab", provisioner.AnnZoneAttempts, "many")), r.ClaimRoute(claim("c", "zonal-ab")); got != want {
		t.Errorf("a malformed attempt count routed to %q, want %q as with none", got, want)
	}
}

func TestVolumeRoute(t *testing.T) {
	for _, tc := range []struct {
		name string
		pv   *corev1.PersistentVolume
		want string
		why  string // a fact the reason names when the PV cannot be routed
	}{
		{name: "node affinity routes to the Node with that driver id", pv: pvOnNode1, want: route.Node("node-1")},
		{name: "node affinity on a driver id that is the Node's name",
			pv:   csiPV("pv", testDriver, volumeHandle(topology.ScopeNode, "node-2", "pv"), topology.Segment{topology.NodeKey: "node-2"}),
			want: route.Node("node-2")},
		{name: "zone affinity routes to the zone", pv: pvInZoneB, want: route.Zone("r/b")},
		{name: "zone affinity without a region routes to the region-less zone",
			pv: csiPV("pv", testDriver, "", topology.Segment{topology.ZoneKey: "b"}), want: route.Zone("/b")},
		{name: "PV of another driver is not routed",
			pv:   csiPV("pv", "other.csi.example.com", volumeHandle(topology.ScopeNode, "node-2", "pv"), topology.Segment{topology.NodeKey: "node-2"}),
			want: ""},
		{name: "PV of no CSI driver is not routed",
			pv: &corev1.PersistentVolume{Spec: corev1.PersistentVolumeSpec{PersistentVolumeSource: corev1.PersistentVolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: "/tmp"}}}},
			want: ""},
		{name: "PV without affinity goes to the node its handle names",
			pv: csiPV("pv", testDriver, volumeHandle(topology.ScopeNode, "node-2", "pv"), nil), want: route.Node("node-2")},
		{name: "PV without affinity goes to the node whose driver id its handle names",
			pv: csiPV("pv", testDriver, volumeHandle(topology.ScopeNode, "id-1", "pv"), nil), want: route.Node("node-1")},
		{name: "PV without affinity goes to the zone its handle names",
			pv: csiPV("pv", testDriver, volumeHandle(topology.ScopeZone, "r/c", "pv"), nil), want: route.Zone("r/c")},
		{name: "PV without affinity goes to the legacy-labelled zone its handle names",
			pv: csiPV("pv", testDriver, volumeHandle(topology.ScopeZone, "old/x", "pv"), nil), want: route.Zone("old/x")},
		{name: "zone handle naming a node's hash cannot be routed: no zone has that hash",
			pv: csiPV("pv", testDriver, volumeHandle(topology.ScopeZone, "node-2", "pv"), nil), want: "",
			why: volumeHandle(topology.ScopeZone, "node-2", "pv") + `" names the pool of a zone no node is in`},
		{name: "PV without affinity whose handle names no known owner cannot be routed, naming the handle",
			pv: csiPV("pv", testDriver, volumeHandle(topology.ScopeNode, "node-9", "pv"), nil), want: "",
			why: volumeHandle(topology.ScopeNode, "node-9", "pv") + `" names the pool of a node that does not exist`},
		{name: "PV without affinity and a foreign handle cannot be routed, naming the handle",
			pv: csiPV("pv", testDriver, "pvc-0123", nil), want: "",
			why: `volume handle "pvc-0123" is not a toposnap volume ID and the PV has no node affinity`},
		{name: "affinity the driver does not read and a foreign handle cannot be routed, naming both",
			pv: csiPV("pv", testDriver, "pvc-0123", topology.Segment{"kubernetes.io/hostname": "node-1"}), want: "",
			why: `node affinity names neither topology.toposnap.io/node nor a zone, and volume handle "pvc-0123"`},
		{name: "affinity on keys that are not the driver's falls back to the handle",
			pv:   csiPV("pv", testDriver, volumeHandle(topology.ScopeNode, "node-2", "pv"), topology.Segment{"kubernetes.io/hostname": "node-1"}),
			want: route.Node("node-2")},
		{name: "affinity with several values names no segment: the handle decides",
			pv: edit(csiPV("pv", testDriver, volumeHandle(topology.ScopeZone, "r/c", "pv"), topology.Segment{topology.ZoneKey: "a"}),
				func(pv *corev1.PersistentVolume) {
					pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0].Values = []string{"a", "b"}
				}),
			want: route.Zone("r/c")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkDecision(t, world().VolumeRoute(tc.pv), tc.want, tc.why)
		})
	}
}

func TestContentRoute(t *testing.T) {
	// pv-moved's affinity and its handle disagree, so a row shows which decides.
	pvMoved := csiPV("pv-moved", testDriver, volumeHandle(topology.ScopeNode, "node-9", "pv-moved"), topology.Segment{topology.NodeKey: "id-1"})
	for _, tc := range []struct {
		name    string
		content *snapv1.VolumeSnapshotContent
		want    string
		why     string // a fact the reason names when the content cannot be routed
	}{
		{name: "content of another driver is not routed",
			content: content("vsc", "other.csi.example.com", fromVolume(pvOnNode1.Spec.CSI.VolumeHandle)), want: ""},
		{name: "accessible topology of a node routes to the Node with that driver id",
			content: content("vsc", testDriver, accessibleFrom(t, topology.Segment{topology.NodeKey: "id-1"})), want: route.Node("node-1")},
		{name: "accessible topology of a zone routes to the zone",
			content: content("vsc", testDriver, accessibleFrom(t, topology.Segment{topology.RegionKey: "r", topology.ZoneKey: "c"})),
			want:    route.Zone("r/c")},
		{name: "accessible topology decides over the source volume",
			content: content("vsc", testDriver, fromVolume(pvOnNode1.Spec.CSI.VolumeHandle),
				accessibleFrom(t, topology.Segment{topology.RegionKey: "r", topology.ZoneKey: "c"})),
			want: route.Zone("r/c")},
		{name: "unreadable accessible topology falls back to the source volume",
			content: content("vsc", testDriver, fromVolume(pvOnNode1.Spec.CSI.VolumeHandle), annotated(topology.AnnAccessibleTopology, "{not json")),
			want:    route.Node("node-1")},
		{name: "empty accessible topology falls back to the source volume",
			content: content("vsc", testDriver, fromVolume(pvOnNode1.Spec.CSI.VolumeHandle), accessibleFrom(t)),
			want:    route.Node("node-1")},
		{name: "content of a known PV goes where the PV is", content: content("vsc", testDriver, fromVolume(pvOnNode1.Spec.CSI.VolumeHandle)),
			want: route.Node("node-1")},
		{name: "content of a known zone PV goes to its zone", content: content("vsc", testDriver, fromVolume(pvInZoneB.Spec.CSI.VolumeHandle)),
			want: route.Zone("r/b")},
		{name: "a known PV's affinity decides over its handle", content: content("vsc", testDriver, fromVolume(pvMoved.Spec.CSI.VolumeHandle)),
			want: route.Node("node-1")},
		{name: "content of a deleted node-scope PV goes to the node its handle names",
			content: content("vsc", testDriver, fromVolume(volumeHandle(topology.ScopeNode, "node-2", "pv-deleted"))), want: route.Node("node-2")},
		{name: "content of a deleted zone-scope PV goes to the zone its handle names",
			content: content("vsc", testDriver, fromVolume(volumeHandle(topology.ScopeZone, "r/c", "pv-deleted"))), want: route.Zone("r/c")},
		{name: "pre-provisioned node snapshot goes to the node its handle names",
			content: content("vsc", testDriver, fromSnapshot(snapshotHandle(topology.ScopeNode, "node-2", "snap"))), want: route.Node("node-2")},
		{name: "pre-provisioned node snapshot of a driver id goes to its Node",
			content: content("vsc", testDriver, fromSnapshot(snapshotHandle(topology.ScopeNode, "id-1", "snap"))), want: route.Node("node-1")},
		{name: "pre-provisioned zone snapshot goes to the zone its handle names",
			content: content("vsc", testDriver, fromSnapshot(snapshotHandle(topology.ScopeZone, "r/a", "snap"))), want: route.Zone("r/a")},
		{name: "pre-provisioned snapshot of an unknown zone cannot be routed, naming the handle",
			content: content("vsc", testDriver, fromSnapshot(snapshotHandle(topology.ScopeZone, "r/z", "snap"))), want: "",
			why: `snapshot handle "` + snapshotHandle(topology.ScopeZone, "r/z", "snap") + `" names the pool of a zone no node is in`},
		{name: "pre-provisioned snapshot of an unknown node cannot be routed, naming the handle",
			content: content("vsc", testDriver, fromSnapshot(snapshotHandle(topology.ScopeNode, "node-9", "snap"))), want: "",
			why: `snapshot handle "` + snapshotHandle(topology.ScopeNode, "node-9", "snap") + `" names the pool of a node that does not exist`},
		{name: "pre-provisioned snapshot of a foreign handle cannot be routed, naming the handle",
			content: content("vsc", testDriver, fromSnapshot("snap-0123")), want: "",
			why: `snapshot handle "snap-0123" is not a toposnap snapshot ID`},
		{name: "content of an unknown source volume's owner cannot be routed, naming the handle",
			content: content("vsc", testDriver, fromVolume(volumeHandle(topology.ScopeNode, "node-9", "pv-deleted"))), want: "",
			why: `source volume handle "` + volumeHandle(topology.ScopeNode, "node-9", "pv-deleted") + `" names the pool of a node`},
		{name: "content of a known source PV that cannot be routed names the handle",
			content: content("vsc", testDriver, fromVolume(pvForeign.Spec.CSI.VolumeHandle)), want: "",
			why: `source volume handle "foreign-0123" is not a toposnap volume ID`},
		{name: "unreadable accessible topology and a foreign source name both",
			content: content("vsc", testDriver, fromVolume("pvc-0123"), annotated(topology.AnnAccessibleTopology, "{not json")), want: "",
			why: topology.AnnAccessibleTopology + ` is unreadable`},
		{name: "accessible topology of neither node nor zone and a foreign source name both",
			content: content("vsc", testDriver, fromVolume("pvc-0123"), accessibleFrom(t, topology.Segment{"kubernetes.io/hostname": "node-1"})), want: "",
			why: `names neither a node nor a zone; source volume handle "pvc-0123"`},
		{name: "a source volume of an unknown owner and a status handle of an unknown owner name both",
			content: content("vsc", testDriver, fromVolume(volumeHandle(topology.ScopeNode, "node-9", "pv-deleted")),
				func(c *snapv1.VolumeSnapshotContent) {
					c.Status = &snapv1.VolumeSnapshotContentStatus{SnapshotHandle: ptr.To(snapshotHandle(topology.ScopeNode, "node-9", "snap"))}
				}),
			want: "", why: `names the pool of a node that does not exist; status snapshot handle "` + snapshotHandle(topology.ScopeNode, "node-9", "snap")},
		{name: "the status's snapshot handle decides when the source volume's owner is unknown",
			content: content("vsc", testDriver, fromVolume(volumeHandle(topology.ScopeNode, "node-9", "pv-deleted")),
				func(c *snapv1.VolumeSnapshotContent) {
					c.Status = &snapv1.VolumeSnapshotContentStatus{SnapshotHandle: ptr.To(snapshotHandle(topology.ScopeNode, "node-3", "snap"))}
				}),
			want: route.Node("node-3")},
		{name: "content with nothing to decide by cannot be routed", content: content("vsc", testDriver), want: "",
			why: "neither a volume handle nor a snapshot handle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkDecision(t, world(pvMoved).ContentRoute(tc.content), tc.want, tc.why)
		})
	}
}

func TestSnapshotRoute(t *testing.T) {
	facts := []runtime.Object{
		content("vsc-node-1", testDriver, accessibleFrom(t, topology.Segment{topology.NodeKey: "id-1"})),
		content("vsc-pre-zone-a", testDriver, fromSnapshot(snapshotHandle(topology.ScopeZone, "r/a", "snap"))),
		content("vsc-undecided", testDriver),
		content("vsc-other", "other.csi.example.com"),
		content("vsc-pre-node-9", testDriver, fromSnapshot(snapshotHandle(topology.ScopeNode, "node-9", "snap"))),
		claim("on-node-2", "local", provisioner.AnnSelectedNode, "node-2"),
		claim("on-node-9", "zonal", provisioner.AnnSelectedNode, "node-9"),
		claim("pending", "local"),
		edit(claim("bound-zone-b", "zonal"), func(c *corev1.PersistentVolumeClaim) { c.Spec.VolumeName = "pv-zone-b" }),
	}
	snapshot := func(source *string, content *string, bound *string) *snapv1.VolumeSnapshot {
		snap := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "snap"},
			Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: source, VolumeSnapshotContentName: content}}}
		if bound != nil {
			snap.Status = &snapv1.VolumeSnapshotStatus{BoundVolumeSnapshotContentName: bound}
		}
		return snap
	}
	for _, tc := range []struct {
		name string
		snap *snapv1.VolumeSnapshot
		want string
		why  string // a fact the reason names when the snapshot cannot be routed
	}{
		{name: "snapshot goes where its bound content is",
			snap: snapshot(ptr.To("on-node-2"), nil, ptr.To("vsc-node-1")), want: route.Node("node-1")},
		{name: "snapshot whose bound content is not cached goes where its claim is",
			snap: snapshot(ptr.To("on-node-2"), nil, ptr.To("vsc-9")), want: route.Node("node-2")},
		{name: "snapshot whose bound content has no route goes where its claim is",
			snap: snapshot(ptr.To("on-node-2"), nil, ptr.To("vsc-undecided")), want: route.Node("node-2")},
		{name: "unbound snapshot goes where its claim is", snap: snapshot(ptr.To("on-node-2"), nil, nil), want: route.Node("node-2")},
		{name: "unbound snapshot of a bound claim goes where the claim's PV is",
			snap: snapshot(ptr.To("bound-zone-b"), nil, nil), want: route.Zone("r/b")},
		{name: "snapshot of an unknown claim is not routed", snap: snapshot(ptr.To("gone"), nil, nil), want: ""},
		{name: "pre-provisioned snapshot goes where its content is",
			snap: snapshot(nil, ptr.To("vsc-pre-zone-a"), nil), want: route.Zone("r/a")},
		{name: "bound pre-provisioned snapshot goes where its content is",
			snap: snapshot(nil, ptr.To("vsc-pre-zone-a"), ptr.To("vsc-pre-zone-a")), want: route.Zone("r/a")},
		{name: "pre-provisioned snapshot of an uncached content is not routed", snap: snapshot(nil, ptr.To("vsc-9"), nil), want: ""},
		{name: "snapshot without a source is not routed", snap: snapshot(nil, nil, nil), want: ""},
		{name: "pre-provisioned snapshot of another driver's content is not routed", snap: snapshot(nil, ptr.To("vsc-other"), nil), want: ""},
		{name: "snapshot of a pending claim waits with it", snap: snapshot(ptr.To("pending"), nil, nil), want: ""},
		{name: "pre-provisioned snapshot of a content that cannot be routed says why the content cannot",
			snap: snapshot(nil, ptr.To("vsc-pre-node-9"), nil), want: "", why: `content "vsc-pre-node-9": snapshot handle`},
		{name: "snapshot of a claim that cannot be routed says why the claim cannot",
			snap: snapshot(ptr.To("on-node-9"), nil, nil), want: "", why: `source claim "on-node-9": selected node "node-9" does not exist`},
		{name: "snapshot whose bound content and claim cannot be routed names both",
			snap: snapshot(ptr.To("on-node-9"), nil, ptr.To("vsc-undecided")), want: "",
			why: `bound content "vsc-undecided": its source names neither a volume handle nor a snapshot handle; source claim "on-node-9"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkDecision(t, world(facts...).SnapshotRoute(tc.snap), tc.want, tc.why)
		})
	}
}

// benchRouter routes over the production caches of a large cluster: 50
// zones of 100 nodes, one node-scope PV per node.
func benchRouter(b *testing.B) Router {
	b.Helper()
	var objects []runtime.Object
	for z := range 50 {
		for n := range 100 {
			name := fmt.Sprintf("node-%d-%d", z, n)
			objects = append(objects, nodeMetadata(name, zoned("r", fmt.Sprintf("z%d", z), topology.NodeKey, name)),
				csiPV("pv-"+name, testDriver, volumeHandle(topology.ScopeNode, name, "pv-"+name), topology.Segment{topology.NodeKey: name}))
		}
	}
	objects = append(objects, classLocal, classZonal, classZonalNow)
	return Router{Driver: testDriver, Facts: newCaches(b, objects...)}
}

func BenchmarkClaimRoute(b *testing.B) {
	r := benchRouter(b)
	for _, bc := range []struct {
		name  string
		claim *corev1.PersistentVolumeClaim
	}{
		{name: "node scope, selected node", claim: claim("c", "local", provisioner.AnnSelectedNode, "node-7-7")},
		{name: "zone scope, selected node", claim: claim("c", "zonal", provisioner.AnnSelectedNode, "node-7-7")},
		{name: "immediate zone over 50 zones", claim: claim("c", "zonal-now")},
		{name: "bound to a PV", claim: edit(claim("c", "local"), func(c *corev1.PersistentVolumeClaim) { c.Spec.VolumeName = "pv-node-7-7" })},
	} {
		b.Run(bc.name, func(b *testing.B) {
			if r.ClaimRoute(bc.claim).Route == "" {
				b.Fatal("claim not routed")
			}
			b.ReportAllocs()
			for b.Loop() {
				r.ClaimRoute(bc.claim)
			}
		})
	}
}

func BenchmarkContentRoute(b *testing.B) {
	r := benchRouter(b)
	for _, bc := range []struct {
		name    string
		content *snapv1.VolumeSnapshotContent
	}{
		{name: "accessible topology", content: content("vsc", testDriver, accessibleFrom(b, topology.Segment{topology.NodeKey: "node-7-7"}))},
		{name: "source PV by handle", content: content("vsc", testDriver, fromVolume(volumeHandle(topology.ScopeNode, "node-7-7", "pv-node-7-7")))},
		{name: "pre-provisioned snapshot handle", content: content("vsc", testDriver, fromSnapshot(snapshotHandle(topology.ScopeZone, "r/z7", "snap")))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			if r.ContentRoute(bc.content).Route == "" {
				b.Fatal("content not routed")
			}
			b.ReportAllocs()
			for b.Loop() {
				r.ContentRoute(bc.content)
			}
		})
	}
}
