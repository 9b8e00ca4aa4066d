package central

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	snapshotlisters "github.com/kubernetes-csi/external-snapshotter/client/v8/listers/volumesnapshot/v1"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/fakeapi"
	"github.com/toposnap/toposnap/internal/route"
	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/internal/volumeid"
	"github.com/toposnap/toposnap/provisioner"
)

func TestRoutePatch(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		want        any // the label's value in the patch: a string, or nil for JSON null
	}{
		{name: "a route sets the label", value: route.Node("node-1"), want: route.Node("node-1")},
		{name: "no route removes the label with null", value: "", want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body, err := routePatch("42", tc.value)
			if err != nil {
				t.Fatal(err)
			}
			var patch struct {
				Metadata struct {
					ResourceVersion *string        `json:"resourceVersion"`
					Labels          map[string]any `json:"labels"`
				} `json:"metadata"`
			}
			if err := json.Unmarshal(body, &patch); err != nil {
				t.Fatalf("patch %s: %v", body, err)
			}
			if patch.Metadata.ResourceVersion == nil || *patch.Metadata.ResourceVersion != "42" {
				t.Errorf("patch %s does not hold the object to resourceVersion 42", body)
			}
			got, present := patch.Metadata.Labels[route.Label]
			if !present || got != tc.want || len(patch.Metadata.Labels) != 1 {
				t.Errorf("patch %s: labels %v, want only %s: %v", body, patch.Metadata.Labels, route.Label, tc.want)
			}
		})
	}
}

func TestNodeIndexes(t *testing.T) {
	hash := volumeid.OwnerHash
	for _, tc := range []struct {
		name                    string
		node                    any
		ownerHashes, zones, ids []string
	}{
		{name: "node with a driver id of its own in a zone",
			node:        nodeMetadata("node-1", zoned("r", "a", topology.NodeKey, "id-1")),
			ownerHashes: []string{hash("node-1"), hash("id-1"), hash("r/a")}, zones: []string{"r/a"}, ids: []string{"id-1"}},
		{name: "node whose driver id is its name is hashed once",
			node:        nodeMetadata("node-3", zoned("r", "c", topology.NodeKey, "node-3")),
			ownerHashes: []string{hash("node-3"), hash("r/c")}, zones: []string{"r/c"}, ids: []string{"node-3"}},
		{name: "node labelled with the failure-domain keys",
			node:        nodeMetadata("old", map[string]string{topology.LegacyRegionKey: "old", topology.LegacyZoneKey: "x", topology.NodeKey: "old"}),
			ownerHashes: []string{hash("old"), hash("old/x")}, zones: []string{"old/x"}, ids: []string{"old"}},
		{name: "node in a zone without a region",
			node:        nodeMetadata("n", map[string]string{topology.ZoneKey: "a", topology.NodeKey: "n"}),
			ownerHashes: []string{hash("n"), hash("/a")}, zones: []string{"/a"}, ids: []string{"n"}},
		{name: "node without the driver offers its zone to no Immediate claim",
			node:        nodeMetadata("cp", map[string]string{topology.ZoneKey: "a"}),
			ownerHashes: []string{hash("cp"), hash("/a")}},
		{name: "node in a region without a zone is in no zone",
			node:        nodeMetadata("n", map[string]string{topology.RegionKey: "r"}),
			ownerHashes: []string{hash("n")}},
		{name: "node without labels", node: nodeMetadata("n", nil), ownerHashes: []string{hash("n")}},
		{name: "something that is not an object is not indexed", node: "n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, index := range []struct {
				name string
				fn   cache.IndexFunc
				want []string
			}{
				{name: "owner hash", fn: indexOwnerHash, want: tc.ownerHashes},
				{name: "zone", fn: indexZone, want: tc.zones},
				{name: "topology id", fn: indexTopologyID, want: tc.ids},
			} {
				got, err := index.fn(tc.node)
				if err != nil || !slices.Equal(got, index.want) {
					t.Errorf("%s index: got %v, %v; want %v", index.name, got, err, index.want)
				}
			}
		})
	}
}

// newCaches are the central caches holding objects, indexed as the
// central informers are.
func newCaches(tb testing.TB, objects ...runtime.Object) *caches {
	tb.Helper()
	classes := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	volumes := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{byHandle: indexHandle})
	claims := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	contents := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	nodes := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{byTopologyID: indexTopologyID, byOwnerHash: indexOwnerHash, byZone: indexZone})
	for _, obj := range objects {
		var store cache.Store
		switch obj.(type) {
		case *storagev1.StorageClass:
			store = classes
		case *corev1.PersistentVolume:
			store = volumes
		case *corev1.PersistentVolumeClaim:
			store = claims
		case *snapv1.VolumeSnapshotContent:
			store = contents
		case *metav1.PartialObjectMetadata:
			store = nodes
		default:
			tb.Fatalf("the central caches hold no %T", obj)
		}
		if err := store.Add(obj); err != nil {
			tb.Fatal(err)
		}
	}
	return &caches{
		classes: storagelisters.NewStorageClassLister(classes),
		volumes: corelisters.NewPersistentVolumeLister(volumes), volumeIndex: volumes,
		claims:   corelisters.NewPersistentVolumeClaimLister(claims),
		contents: snapshotlisters.NewVolumeSnapshotContentLister(contents),
		nodes:    nodes,
	}
}

func TestCachesFindNodesAndZones(t *testing.T) {
	facts := newCaches(t, node1, node2, node3, nodeLegacy, nodeNoZone, nodeMetadata("node-unlabelled", nil))
	hash := volumeid.OwnerHash
	for _, tc := range []struct {
		name, hash, node, zone string
	}{
		{name: "a Node's name", hash: hash("node-2"), node: "node-2"},
		{name: "a Node's driver id", hash: hash("id-1"), node: "node-1"},
		{name: "the name of a Node whose driver id differs", hash: hash("node-1"), node: "node-1"},
		{name: "a zone", hash: hash("r/a"), zone: "r/a"},
		{name: "a zone of failure-domain labels", hash: hash("old/x"), zone: "old/x"},
		{name: "a zone no node is in", hash: hash("r/z")},
		{name: "a node that does not exist", hash: hash("node-9")},
	} {
		if node, zone := facts.Owner(tc.hash); node != tc.node || zone != tc.zone {
			t.Errorf("Owner of %s = (%q, %q), want (%q, %q)", tc.name, node, zone, tc.node, tc.zone)
		}
	}
	// node-2 and node-legacy run no driver (no topology.toposnap.io/node).
	if got, want := facts.Zones(), []string{"r/a", "r/c"}; !slices.Equal(got, want) {
		t.Errorf("Zones = %v, want %v", got, want)
	}
	for id, want := range map[string]string{"id-1": "node-1", "node-3": "node-3", "node-2": "", "node-9": ""} {
		if got := facts.NodeByID(id); got != want {
			t.Errorf("NodeByID(%q) = %q, want %q", id, got, want)
		}
	}
	if labels := facts.NodeLabels("node-unlabelled"); labels == nil {
		t.Error("NodeLabels of a Node without labels is nil, as if there were no such Node")
	}
	if labels := facts.NodeLabels("node-9"); labels != nil {
		t.Errorf("NodeLabels of no Node = %v, want nil", labels)
	}
	if got := newCaches(t).Zones(); len(got) != 0 {
		t.Errorf("Zones without nodes = %v, want none", got)
	}
}

func TestCachesFindVolumesByHandle(t *testing.T) {
	facts := newCaches(t, pvOnNode1, pvInZoneB, &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "nfs"}})
	if pv := facts.PVByHandle(pvInZoneB.Spec.CSI.VolumeHandle); pv == nil || pv.Name != "pv-zone-b" {
		t.Errorf("PVByHandle(%s) = %v, want pv-zone-b", pvInZoneB.Spec.CSI.VolumeHandle, pv)
	}
	if pv := facts.PVByHandle("vn-0000000000000000-0000000000000000"); pv != nil {
		t.Errorf("PVByHandle of no PV = %s, want nil", pv.Name)
	}
	if facts.Class("") != nil || facts.PV("pv-9") != nil || facts.Claim("ns", "c") != nil || facts.Content("vsc") != nil {
		t.Error("a lookup of an object not cached answered one")
	}
}

// routerWorld is a central router over a fake API, its caches filled with
// what the API holds and its clients' actions cleared; its events go
// nowhere and its metrics are registered nowhere.
func routerWorld(t *testing.T, objects ...runtime.Object) (*fakeapi.World, *router) {
	t.Helper()
	rt := newRouterTest(t, &record.FakeRecorder{}, nil, objects...)
	return rt.World, rt.router
}

// routerTest is a router's world with what a test looks at besides the
// API: the router's informers, events and metrics.
type routerTest struct {
	*fakeapi.World
	router        *router
	kubeInformers informers.SharedInformerFactory
	snapInformers snapshotinformers.SharedInformerFactory
}

func newRouterTest(t *testing.T, recorder record.EventRecorder, registry *prometheus.Registry, objects ...runtime.Object) *routerTest {
	t.Helper()
	var nodes []any
	var stored []runtime.Object
	for _, obj := range objects {
		if node, ok := obj.(*metav1.PartialObjectMetadata); ok {
			nodes = append(nodes, node)
			continue
		}
		stored = append(stored, obj.DeepCopyObject()) // the fake API writes into what it creates
	}
	rt := &routerTest{World: fakeapi.NewWorld(t, stored...)}
	rt.kubeInformers = informers.NewSharedInformerFactory(rt.Kube, 0)
	rt.snapInformers = snapshotinformers.NewSharedInformerFactory(rt.Snaps, 0)
	// Nodes come from a metadata informer in production; nothing starts this one.
	nodeInformer := cache.NewSharedIndexInformer(&cache.ListWatch{}, &metav1.PartialObjectMetadata{}, 0, cache.Indexers{})
	r, err := newRouter(testDriver, rt.Kube, rt.Snaps, rt.kubeInformers, rt.snapInformers, nodeInformer, recorder, registry)
	if err != nil {
		t.Fatal(err)
	}
	rt.router = r
	t.Cleanup(r.queue.ShutDown)
	rt.Fill(rt.kubeInformers, rt.snapInformers)
	if err := nodeInformer.GetStore().Replace(nodes, ""); err != nil {
		t.Fatal(err)
	}
	rt.Kube.ClearActions()
	rt.Snaps.ClearActions()
	return rt
}

// addNode puts a Node into the router's cache, as its informer would.
func (rt *routerTest) addNode(t *testing.T, node *metav1.PartialObjectMetadata) {
	t.Helper()
	if err := rt.router.Facts.(*caches).nodes.Add(node); err != nil {
		t.Fatal(err)
	}
}

// sync syncs item, as a worker does.
func (rt *routerTest) sync(t *testing.T, item string) {
	t.Helper()
	if err := rt.router.sync(context.Background(), item); err != nil {
		t.Fatalf("sync %s: %v", item, err)
	}
}

// recorded are the events recorded since the last call.
func recorded(recorder *record.FakeRecorder) []string {
	var events []string
	for {
		select {
		case event := <-recorder.Events:
			events = append(events, event)
		default:
			return events
		}
	}
}

// unroutedGauge is what toposnap_controller_unrouted_objects reads for a
// resource.
func unroutedGauge(t *testing.T, registry *prometheus.Registry, resource string) float64 {
	t.Helper()
	families, err := registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, family := range families {
		if family.GetName() != "toposnap_controller_unrouted_objects" {
			continue
		}
		for _, metric := range family.GetMetric() {
			for _, label := range metric.GetLabel() {
				if label.GetName() == "resource" && label.GetValue() == resource {
					return metric.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no series toposnap_controller_unrouted_objects{resource=%q}", resource)
	return 0
}

// writes are the patches the router sent.
func writes(w *fakeapi.World) []k8stesting.PatchAction {
	var patches []k8stesting.PatchAction
	for _, action := range slices.Concat(w.Kube.Actions(), w.Snaps.Actions()) {
		if patch, ok := action.(k8stesting.PatchAction); ok {
			patches = append(patches, patch)
		}
	}
	return patches
}

// routeInAPI is the route label the API holds for a queue item.
func routeInAPI(t *testing.T, w *fakeapi.World, kind, namespace, name string) string {
	t.Helper()
	ctx, get := context.Background(), metav1.GetOptions{}
	var (
		object metav1.Object
		err    error
	)
	switch kind {
	case kindClaim:
		object, err = w.Kube.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, name, get)
	case kindVolume:
		object, err = w.Kube.CoreV1().PersistentVolumes().Get(ctx, name, get)
	case kindSnapshot:
		object, err = w.Snaps.SnapshotV1().VolumeSnapshots(namespace).Get(ctx, name, get)
	case kindContent:
		object, err = w.Snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, name, get)
	}
	if err != nil {
		t.Fatal(err)
	}
	value, present := object.GetLabels()[route.Label]
	if present && value == "" {
		t.Errorf("%s %s holds an empty route label", kind, name)
	}
	return value
}

func labelled[T metav1.Object](obj T, value string) T {
	labels := obj.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	labels[route.Label] = value
	obj.SetLabels(labels)
	return obj
}

func TestSync(t *testing.T) {
	const selected = provisioner.AnnSelectedNode
	node1Route, zoneARoute := route.Node("node-1"), route.Zone("r/a")
	provisioning := func(c *corev1.PersistentVolumeClaim) {
		c.Finalizers = append(c.Finalizers, provisioner.FinalizerProvisioning)
	}
	base := []runtime.Object{node1, node2, classLocal, classZonal, classOther}
	for _, tc := range []struct {
		name                  string
		objects               []runtime.Object
		kind, namespace, item string // item is the object's name
		want                  string
		wantWrites            int
	}{
		{name: "node-scope claim with a selected node is routed to it",
			objects: []runtime.Object{claim("c", "local", selected, "node-1")},
			kind:    kindClaim, namespace: "ns", item: "c", want: node1Route, wantWrites: 1},
		{name: "claim already routed right is not written",
			objects: []runtime.Object{labelled(claim("c", "local", selected, "node-1"), node1Route)},
			kind:    kindClaim, namespace: "ns", item: "c", want: node1Route},
		{name: "claim routed elsewhere is rerouted",
			objects: []runtime.Object{labelled(claim("c", "local", selected, "node-2"), node1Route)},
			kind:    kindClaim, namespace: "ns", item: "c", want: route.Node("node-2"), wantWrites: 1},
		{name: "claim that lost its selected node loses its route",
			objects: []runtime.Object{labelled(claim("c", "local"), node1Route)},
			kind:    kindClaim, namespace: "ns", item: "c", want: "", wantWrites: 1},
		{name: "claim being provisioned that lost its selected node keeps its route",
			objects: []runtime.Object{edit(labelled(claim("c", "local"), node1Route), provisioning)},
			kind:    kindClaim, namespace: "ns", item: "c", want: node1Route},
		{name: "bound claim whose route cannot be decided keeps it",
			objects: []runtime.Object{edit(labelled(claim("c", "zonal", selected, "node-9"), zoneARoute),
				func(c *corev1.PersistentVolumeClaim) { c.Spec.VolumeName = "pv-9" })},
			kind: kindClaim, namespace: "ns", item: "c", want: zoneARoute},
		{name: "claim of another driver is not routed",
			objects: []runtime.Object{claim("c", "other", selected, "node-1")},
			kind:    kindClaim, namespace: "ns", item: "c", want: ""},
		{name: "zone claim is routed to its selected node's zone",
			objects: []runtime.Object{claim("c", "zonal", selected, "node-1")},
			kind:    kindClaim, namespace: "ns", item: "c", want: zoneARoute, wantWrites: 1},
		{name: "PV is routed by its affinity",
			objects: []runtime.Object{pvOnNode1.DeepCopy()},
			kind:    kindVolume, item: "pv-node-1", want: node1Route, wantWrites: 1},
		{name: "PV whose owner is gone keeps its route",
			objects: []runtime.Object{labelled(csiPV("pv", testDriver, volumeHandle(topology.ScopeNode, "node-9", "pv"), nil), route.Node("node-9"))},
			kind:    kindVolume, item: "pv", want: route.Node("node-9")},
		{name: "content is routed where its snapshot lives",
			objects: []runtime.Object{content("vsc", testDriver, accessibleFrom(t, topology.Segment{topology.RegionKey: "r", topology.ZoneKey: "a"}))},
			kind:    kindContent, item: "vsc", want: zoneARoute, wantWrites: 1},
		{name: "snapshot is routed where its source claim is",
			objects: []runtime.Object{claim("c", "local", selected, "node-1"), &snapv1.VolumeSnapshot{
				ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "snap"},
				Spec:       snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To("c")}}}},
			kind: kindSnapshot, namespace: "ns", item: "snap", want: node1Route, wantWrites: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, r := routerWorld(t, append(slices.Clone(base), tc.objects...)...)
			key := tc.item
			if tc.namespace != "" {
				key = tc.namespace + "/" + tc.item
			}
			if err := r.sync(context.Background(), tc.kind+"/"+key); err != nil {
				t.Fatal(err)
			}
			if got := len(writes(w)); got != tc.wantWrites {
				t.Errorf("%d writes, want %d", got, tc.wantWrites)
			}
			if got := routeInAPI(t, w, tc.kind, tc.namespace, tc.item); got != tc.want {
				t.Errorf("route in the API = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSyncPatchHoldsTheDecidedVersion(t *testing.T) {
	w, r := routerWorld(t, node1, classLocal, claim("c", "local", provisioner.AnnSelectedNode, "node-1"))
	cached, err := r.claims.PersistentVolumeClaims("ns").Get("c")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.sync(context.Background(), "pvc/ns/c"); err != nil {
		t.Fatal(err)
	}
	patches := writes(w)
	if len(patches) != 1 {
		t.Fatalf("%d writes, want 1", len(patches))
	}
	want, err := routePatch(cached.ResourceVersion, route.Node("node-1"))
	if err != nil {
		t.Fatal(err)
	}
	if got := patches[0].GetPatch(); string(got) != string(want) {
		t.Errorf("patch %s, want %s (the cached resourceVersion)", got, want)
	}
}

// The fake clientset applies a merge patch's resourceVersion without
// checking it; this reactor checks it as the API server does.
func TestSyncDropsAStaleDecision(t *testing.T) {
	w, r := routerWorld(t, node1, classLocal, claim("c", "local", provisioner.AnnSelectedNode, "node-1"))
	w.Kube.PrependReactor("patch", "persistentvolumeclaims", func(action k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewConflict(action.GetResource().GroupResource(), "c", errors.New("the object has been modified"))
	})
	if err := r.sync(context.Background(), "pvc/ns/c"); err != nil {
		t.Errorf("sync of a claim changed since it was cached: %v, want nil (its update event brings it back)", err)
	}
	if got := routeInAPI(t, w, kindClaim, "ns", "c"); got != "" {
		t.Errorf("route in the API = %q after a conflict, want none", got)
	}
}

func TestSyncReturnsAFailedWrite(t *testing.T) {
	w, r := routerWorld(t, node1, classLocal, claim("c", "local", provisioner.AnnSelectedNode, "node-1"))
	w.Kube.PrependReactor("patch", "persistentvolumeclaims", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewServiceUnavailable("etcd is away")
	})
	if err := r.sync(context.Background(), "pvc/ns/c"); err == nil {
		t.Error("sync whose write failed returned nil, want the error (to be retried)")
	}
}

func TestSyncSkipsWhatIsNotCached(t *testing.T) {
	w, r := routerWorld(t, node1, classLocal)
	for _, item := range []string{"pvc/ns/gone", "pv/gone", "vs/ns/gone", "vsc/gone", "pod/ns/p", "pvc/a/b/c"} {
		if err := r.sync(context.Background(), item); err != nil {
			t.Errorf("sync %s: %v, want nil", item, err)
		}
	}
	if got := len(writes(w)); got != 0 {
		t.Errorf("%d writes, want none", got)
	}
}

func TestChangesRequeueWhatDependsOnThem(t *testing.T) {
	source := claim("c", "local", provisioner.AnnSelectedNode, "node-1")
	snap := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "snap"},
		Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To("c")}}}
	_, r := routerWorld(t, node1, classLocal, source, snap)
	snapIndex := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{bySourceClaim: indexSourceClaim})
	if err := snapIndex.Add(snap); err != nil {
		t.Fatal(err)
	}
	boundPV := edit(pvOnNode1.DeepCopy(), func(pv *corev1.PersistentVolume) {
		pv.Spec.ClaimRef = &corev1.ObjectReference{Namespace: "ns", Name: "c"}
	})
	snapContent := content("vsc", testDriver, func(c *snapv1.VolumeSnapshotContent) {
		c.Spec.VolumeSnapshotRef = corev1.ObjectReference{Namespace: "ns", Name: "snap"}
	})
	for _, tc := range []struct {
		name   string
		change func()
		want   string
	}{
		{name: "a claim's snapshots follow it", change: func() { r.claimChanged(source, snapIndex) }, want: "vs/ns/snap"},
		{name: "a PV's claim follows it", change: func() { r.volumeChanged(boundPV) }, want: "pvc/ns/c"},
		{name: "a content's snapshot follows it", change: func() { r.contentChanged(snapContent) }, want: "vs/ns/snap"},
	} {
		tc.change()
		if r.queue.Len() != 1 {
			t.Fatalf("%s: %d items queued, want 1", tc.name, r.queue.Len())
		}
		item, _ := r.queue.Get()
		r.queue.Done(item)
		if item != tc.want {
			t.Errorf("%s: queued %q, want %q", tc.name, item, tc.want)
		}
	}
	r.volumeChanged(pvOnNode1) // unbound: no claim follows it
	r.contentChanged(content("vsc", testDriver))
	if r.queue.Len() != 0 {
		t.Errorf("an unbound PV or content queued %d items", r.queue.Len())
	}
}

// TestNewZoneRequeuesUnroutedClaims: the first node of a zone with the
// driver looks at pending claims without a route again (an Immediate zone
// claim made before any zone had a node waits for one); a second node of a
// known zone, or a routed or bound claim, queues nothing.
func TestNewZoneRequeuesUnroutedClaims(t *testing.T) {
	waiting := claim("waiting", "zonal-now")
	routedClaim := labelled(claim("routed", "zonal-now"), route.Zone("r/a"))
	_, r := routerWorld(t, classZonalNow, waiting, routedClaim)
	r.nodeChanged(node1) // zone r/a, new
	if r.queue.Len() != 1 {
		t.Fatalf("a new zone queued %d claims, want the one waiting", r.queue.Len())
	}
	item, _ := r.queue.Get()
	r.queue.Done(item)
	if item != "pvc/ns/waiting" {
		t.Errorf("queued %q, want pvc/ns/waiting", item)
	}
	r.nodeChanged(nodeMetadata("node-1b", zoned("r", "a", topology.NodeKey, "node-1b")))
	r.nodeChanged(node2) // no driver on it: offers no zone
	if r.queue.Len() != 0 {
		t.Errorf("a known zone, or a node without the driver, queued %d claims", r.queue.Len())
	}
}

// TestUnroutableObjectIsReportedUntilRouted: an object of the driver that
// no node or zone can act on gets one NotRouted warning saying why (a
// resync repeats none) and counts in toposnap_controller_unrouted_objects
// until the fact it lacked appears; then it is routed and counts no more.
func TestUnroutableObjectIsReportedUntilRouted(t *testing.T) {
	node9 := nodeMetadata("node-9", zoned("r", "c", topology.NodeKey, "node-9"))
	preZoneZ := snapshotHandle(topology.ScopeZone, "r/z", "snap")
	for _, tc := range []struct {
		name, resource, item string
		objects              []runtime.Object
		why                  string // a fact the event names
		appears              *metav1.PartialObjectMetadata
		want                 string // the route once it has appeared
	}{
		{name: "zone claim whose selected Node is gone", resource: "claims", item: "pvc/ns/c",
			objects: []runtime.Object{claim("c", "zonal", provisioner.AnnSelectedNode, "node-9")},
			why:     "node-9", appears: node9, want: route.Zone("r/c")},
		{name: "PV without affinity whose handle names no known node", resource: "volumes", item: "pv/pv",
			objects: []runtime.Object{csiPV("pv", testDriver, volumeHandle(topology.ScopeNode, "node-9", "pv"), nil)},
			why:     volumeHandle(topology.ScopeNode, "node-9", "pv"), appears: node9, want: route.Node("node-9")},
		{name: "pre-provisioned content whose handle names no known zone", resource: "contents", item: "vsc/vsc",
			objects: []runtime.Object{content("vsc", testDriver, fromSnapshot(preZoneZ))},
			why:     preZoneZ, appears: nodeMetadata("node-z", zoned("r", "z", topology.NodeKey, "node-z")), want: route.Zone("r/z")},
		{name: "snapshot of a claim that cannot be routed", resource: "snapshots", item: "vs/ns/snap",
			objects: []runtime.Object{claim("c", "zonal", provisioner.AnnSelectedNode, "node-9"), &snapv1.VolumeSnapshot{
				ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "snap", UID: "uid-snap"},
				Spec:       snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To("c")}}}},
			why: "node-9", appears: node9, want: route.Zone("r/c")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recorder, registry := record.NewFakeRecorder(10), prometheus.NewRegistry()
			rt := newRouterTest(t, recorder, registry, append([]runtime.Object{node1, classZonal}, tc.objects...)...)
			kind, key, _ := strings.Cut(tc.item, "/")
			namespace, name, _ := cache.SplitMetaNamespaceKey(key)

			rt.sync(t, tc.item)
			rt.sync(t, tc.item) // a resync
			events := recorded(recorder)
			if len(events) != 1 || !strings.HasPrefix(events[0], "Warning NotRouted ") || !strings.Contains(events[0], tc.why) {
				t.Errorf("events %q, want one NotRouted warning naming %s", events, tc.why)
			}
			if got := unroutedGauge(t, registry, tc.resource); got != 1 {
				t.Errorf("unrouted %s = %v, want 1", tc.resource, got)
			}

			rt.addNode(t, tc.appears)
			rt.sync(t, tc.item)
			if got := routeInAPI(t, rt.World, kind, namespace, name); got != tc.want {
				t.Errorf("route in the API = %q once %s appeared, want %q", got, tc.appears.Name, tc.want)
			}
			if got := unroutedGauge(t, registry, tc.resource); got != 0 {
				t.Errorf("unrouted %s = %v once routed, want 0", tc.resource, got)
			}
			if events := recorded(recorder); len(events) != 0 {
				t.Errorf("routing it recorded %q, want no event", events)
			}
		})
	}
}

// TestNotRoutedFollowsTheReason: a new reason is a new event; deleting the
// object (even as a tombstone) forgets it.
func TestNotRoutedFollowsTheReason(t *testing.T) {
	recorder, registry := record.NewFakeRecorder(10), prometheus.NewRegistry()
	waiting := claim("c", "zonal", provisioner.AnnSelectedNode, "node-9")
	rt := newRouterTest(t, recorder, registry, node1, classZonal, waiting)
	rt.sync(t, "pvc/ns/c")
	rt.addNode(t, nodeMetadata("node-9", map[string]string{topology.NodeKey: "node-9"})) // in no zone
	rt.sync(t, "pvc/ns/c")
	rt.sync(t, "pvc/ns/c")
	events := recorded(recorder)
	if len(events) != 2 || !strings.Contains(events[0], `"node-9" does not exist`) || !strings.Contains(events[1], `"node-9" has no zone`) {
		t.Errorf("events %q, want one for the missing Node, then one for its missing zone", events)
	}
	if got := unroutedGauge(t, registry, "claims"); got != 1 {
		t.Errorf("unrouted claims = %v, want 1 (one claim, whatever its reasons)", got)
	}
	rt.router.deleted(cache.DeletedFinalStateUnknown{Key: "ns/c", Obj: waiting})
	if got := unroutedGauge(t, registry, "claims"); got != 0 || len(rt.router.notRouted) != 0 {
		t.Errorf("after its deletion: unrouted claims = %v, %d remembered; want 0, none", got, len(rt.router.notRouted))
	}
}

// TestGoneObjectIsNotRemembered: a claim read before it was deleted and
// made again under its name (another UID) is not remembered, so no entry
// outlives the object its delete handler already forgot.
func TestGoneObjectIsNotRemembered(t *testing.T) {
	recorder, registry := record.NewFakeRecorder(10), prometheus.NewRegistry()
	rt := newRouterTest(t, recorder, registry, node1, classZonal, claim("c", "zonal", provisioner.AnnSelectedNode, "node-9"))
	before := edit(claim("c", "zonal", provisioner.AnnSelectedNode, "node-9"), func(c *corev1.PersistentVolumeClaim) { c.UID = "uid-before" })
	rt.router.remember(kindClaim, before, `selected node "node-9" does not exist`)
	if got := unroutedGauge(t, registry, "claims"); got != 0 || len(rt.router.notRouted) != 0 {
		t.Errorf("unrouted claims = %v, %d remembered; want 0, none", got, len(rt.router.notRouted))
	}
	if events := recorded(recorder); len(events) != 0 {
		t.Errorf("events %q on a claim that is gone, want none", events)
	}
}

// TestOnlyObjectsWithoutARouteAreReported: an object that keeps the route
// it had (its owner's Node is gone) is still acted on by that owner, and an
// object not the driver's, or waiting for the scheduler, is nobody's
// problem yet: none of them counts or gets an event.
func TestOnlyObjectsWithoutARouteAreReported(t *testing.T) {
	recorder, registry := record.NewFakeRecorder(10), prometheus.NewRegistry()
	kept := labelled(csiPV("pv", testDriver, volumeHandle(topology.ScopeNode, "node-9", "pv"), nil), route.Node("node-9"))
	rt := newRouterTest(t, recorder, registry, node1, classZonal, classOther, kept,
		claim("other", "other", provisioner.AnnSelectedNode, "node-9"), claim("pending", "zonal"))
	for _, item := range []string{"pv/pv", "pvc/ns/other", "pvc/ns/pending"} {
		rt.sync(t, item)
	}
	if events := recorded(recorder); len(events) != 0 {
		t.Errorf("events %q, want none", events)
	}
	for _, resource := range []string{"claims", "volumes", "snapshots", "contents"} {
		if got := unroutedGauge(t, registry, resource); got != 0 {
			t.Errorf("unrouted %s = %v, want 0", resource, got)
		}
	}
}
