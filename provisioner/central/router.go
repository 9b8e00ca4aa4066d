package central

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	snapshotlisters "github.com/kubernetes-csi/external-snapshotter/client/v8/listers/volumesnapshot/v1"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/kube"
	"github.com/toposnap/toposnap/internal/route"
	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/internal/volumeid"
	"github.com/toposnap/toposnap/provisioner"
)

// Index names of the central caches.
const (
	byHandle      = "handle"      // PVs by CSI volume handle
	byTopologyID  = "topology-id" // Nodes by the driver's node id label
	byOwnerHash   = "owner-hash"  // Nodes by the hash of their name and of their zone
	byZone        = "zone"        // Nodes by "region/zone"
	bySourceClaim = "source-claim"
)

// Kinds of routed objects, as queue keys begin.
const (
	kindClaim    = "pvc"
	kindVolume   = "pv"
	kindSnapshot = "vs"
	kindContent  = "vsc"
)

// resources name each kind as toposnap_controller_unrouted_objects does.
var resources = map[string]string{kindClaim: "claims", kindVolume: "volumes", kindSnapshot: "snapshots", kindContent: "contents"}

// reasonNotRouted is the reason of the event on an object of the driver
// that no node or zone can act on.
const reasonNotRouted = "NotRouted"

// router stamps route labels: one queue of "<kind>/<key>" items, each
// decided from the caches and written with a merge patch that carries the
// resourceVersion it decided on.
type router struct {
	Router
	client    kubernetes.Interface
	snapshots snapshotclient.Interface
	recorder  record.EventRecorder
	claims    corelisters.PersistentVolumeClaimLister
	volumes   corelisters.PersistentVolumeLister
	snapList  snapshotlisters.VolumeSnapshotLister
	contents  snapshotlisters.VolumeSnapshotContentLister
	queue     workqueue.TypedRateLimitingInterface[string]
	synced    []cache.InformerSynced
	routed    *prometheus.CounterVec
	unrouted  *prometheus.GaugeVec
	// zones are the zones seen so far (nodeChanged's memory).
	zonesMu sync.Mutex
	zones   map[string]bool
	// notRouted is why each object of the driver that no node or zone can
	// act on has no route, by UID: the one state kept, so that a resync
	// posts no second event for the same reason. An entry goes when its
	// object is routed, needs no route, or is deleted.
	notRoutedMu sync.Mutex
	notRouted   map[types.UID]notRouted
}

// notRouted is why an object has no route.
type notRouted struct {
	kind, reason string
}

// routedObject is what the router routes: an API object, for its labels
// and for events.
type routedObject interface {
	metav1.Object
	runtime.Object
}

// caches implements Facts over the central informers.
type caches struct {
	classes     storagelisters.StorageClassLister
	volumes     corelisters.PersistentVolumeLister
	volumeIndex cache.Indexer
	claims      corelisters.PersistentVolumeClaimLister
	contents    snapshotlisters.VolumeSnapshotContentLister
	nodes       cache.Indexer
}

func newRouter(driver string, client kubernetes.Interface, snapshots snapshotclient.Interface,
	kubeInformers informers.SharedInformerFactory, snapInformers snapshotinformers.SharedInformerFactory,
	nodeInformer cache.SharedIndexInformer, recorder record.EventRecorder, registry *prometheus.Registry) (*router, error) {
	claimInformer := kubeInformers.Core().V1().PersistentVolumeClaims().Informer()
	volumeInformer := kubeInformers.Core().V1().PersistentVolumes().Informer()
	classInformer := kubeInformers.Storage().V1().StorageClasses().Informer()
	snapInformer := snapInformers.Snapshot().V1().VolumeSnapshots().Informer()
	contentInformer := snapInformers.Snapshot().V1().VolumeSnapshotContents().Informer()
	if err := volumeInformer.AddIndexers(cache.Indexers{byHandle: indexHandle}); err != nil {
		return nil, err
	}
	if err := nodeInformer.AddIndexers(cache.Indexers{byTopologyID: indexTopologyID, byOwnerHash: indexOwnerHash, byZone: indexZone}); err != nil {
		return nil, err
	}
	if err := snapInformer.AddIndexers(cache.Indexers{bySourceClaim: indexSourceClaim}); err != nil {
		return nil, err
	}
	facts := &caches{
		classes: kubeInformers.Storage().V1().StorageClasses().Lister(),
		volumes: kubeInformers.Core().V1().PersistentVolumes().Lister(), volumeIndex: volumeInformer.GetIndexer(),
		claims:   kubeInformers.Core().V1().PersistentVolumeClaims().Lister(),
		contents: snapInformers.Snapshot().V1().VolumeSnapshotContents().Lister(),
		nodes:    nodeInformer.GetIndexer(),
	}
	r := &router{
		Router: Router{Driver: driver, Facts: facts}, client: client, snapshots: snapshots, recorder: recorder,
		claims: facts.claims, volumes: facts.volumes, contents: facts.contents,
		snapList: snapInformers.Snapshot().V1().VolumeSnapshots().Lister(),
		queue:    kube.NewQueue("routes"),
		routed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "toposnap_controller_routes_written_total",
			Help: "Route labels written (set, changed or removed), by kind of object.",
		}, []string{"kind"}),
		unrouted: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "toposnap_controller_unrouted_objects",
			Help: "Objects of the driver that no node or zone can act on (each has a NotRouted event saying why), by resource.",
		}, []string{"resource"}),
		notRouted: map[types.UID]notRouted{},
	}
	for _, resource := range resources {
		r.unrouted.WithLabelValues(resource).Set(0)
	}
	if registry != nil {
		registry.MustRegister(r.routed, r.unrouted)
	}
	add := func(kind string) cache.ResourceEventHandlerFuncs {
		enqueue := func(obj any) {
			if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
				r.queue.Add(kind + "/" + key)
			}
		}
		return cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, obj any) { enqueue(obj) }, DeleteFunc: r.deleted}
	}
	_, _ = claimInformer.AddEventHandler(add(kindClaim))
	_, _ = volumeInformer.AddEventHandler(add(kindVolume))
	_, _ = snapInformer.AddEventHandler(add(kindSnapshot))
	_, _ = contentInformer.AddEventHandler(add(kindContent))
	// What a route is decided from changes with other objects: a claim
	// follows its PV, a snapshot its claim and content, a content its
	// source PV.
	_, _ = claimInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj any) { r.claimChanged(obj, snapInformer.GetIndexer()) },
	})
	_, _ = volumeInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    r.volumeChanged,
		UpdateFunc: func(_, obj any) { r.volumeChanged(obj) },
	})
	_, _ = contentInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    r.contentChanged,
		UpdateFunc: func(_, obj any) { r.contentChanged(obj) },
	})
	// A zone that appears (its first node with the driver) may be where
	// waiting Immediate zone claims can go: look at unrouted claims again.
	_, _ = nodeInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    r.nodeChanged,
		UpdateFunc: func(_, obj any) { r.nodeChanged(obj) },
	})
	r.synced = []cache.InformerSynced{claimInformer.HasSynced, volumeInformer.HasSynced, classInformer.HasSynced,
		snapInformer.HasSynced, contentInformer.HasSynced, nodeInformer.HasSynced}
	return r, nil
}

func (r *router) nodeChanged(obj any) {
	zones, _ := indexZone(obj)
	if len(zones) == 0 {
		return
	}
	r.zonesMu.Lock()
	known := r.zones[zones[0]]
	if r.zones == nil {
		r.zones = map[string]bool{}
	}
	r.zones[zones[0]] = true
	r.zonesMu.Unlock()
	if known {
		return
	}
	claims, _ := r.claims.List(labels.Everything())
	for _, claim := range claims {
		if claim.Spec.VolumeName == "" && route.Of(claim.Labels) == "" {
			r.queue.Add(kindClaim + "/" + claim.Namespace + "/" + claim.Name)
		}
	}
}

func (r *router) claimChanged(obj any, snapIndex cache.Indexer) {
	claim, ok := obj.(*corev1.PersistentVolumeClaim)
	if !ok {
		return
	}
	snaps, _ := snapIndex.ByIndex(bySourceClaim, claim.Namespace+"/"+claim.Name)
	for _, snap := range snaps {
		if key, err := cache.MetaNamespaceKeyFunc(snap); err == nil {
			r.queue.Add(kindSnapshot + "/" + key)
		}
	}
}

func (r *router) volumeChanged(obj any) {
	pv, ok := obj.(*corev1.PersistentVolume)
	if !ok || pv.Spec.ClaimRef == nil {
		return
	}
	r.queue.Add(kindClaim + "/" + pv.Spec.ClaimRef.Namespace + "/" + pv.Spec.ClaimRef.Name)
}

func (r *router) contentChanged(obj any) {
	content, ok := obj.(*snapv1.VolumeSnapshotContent)
	if !ok {
		return
	}
	ref := content.Spec.VolumeSnapshotRef
	if ref.Name != "" {
		r.queue.Add(kindSnapshot + "/" + ref.Namespace + "/" + ref.Name)
	}
}

// sync decides one object's route and writes it when it differs; an
// object left without a route it cannot get is remembered and reported.
func (r *router) sync(ctx context.Context, item string) error {
	kind, key, _ := strings.Cut(item, "/")
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	var (
		object routedObject
		want   Decision
		patch  func(context.Context, []byte) error
	)
	switch kind {
	case kindClaim:
		claim, err := r.claims.PersistentVolumeClaims(namespace).Get(name)
		if err != nil {
			return ignoreNotFound(err)
		}
		object, want = claim, r.ClaimRoute(claim)
		patch = func(ctx context.Context, body []byte) error {
			_, err := r.client.CoreV1().PersistentVolumeClaims(namespace).Patch(ctx, name, types.MergePatchType, body, metav1.PatchOptions{})
			return err
		}
	case kindVolume:
		pv, err := r.volumes.Get(name)
		if err != nil {
			return ignoreNotFound(err)
		}
		object, want = pv, r.VolumeRoute(pv)
		patch = func(ctx context.Context, body []byte) error {
			_, err := r.client.CoreV1().PersistentVolumes().Patch(ctx, name, types.MergePatchType, body, metav1.PatchOptions{})
			return err
		}
	case kindSnapshot:
		snap, err := r.snapList.VolumeSnapshots(namespace).Get(name)
		if err != nil {
			return ignoreNotFound(err)
		}
		object, want = snap, r.SnapshotRoute(snap)
		patch = func(ctx context.Context, body []byte) error {
			_, err := r.snapshots.SnapshotV1().VolumeSnapshots(namespace).Patch(ctx, name, types.MergePatchType, body, metav1.PatchOptions{})
			return err
		}
	case kindContent:
		content, err := r.contents.Get(name)
		if err != nil {
			return ignoreNotFound(err)
		}
		object, want = content, r.ContentRoute(content)
		patch = func(ctx context.Context, body []byte) error {
			_, err := r.snapshots.SnapshotV1().VolumeSnapshotContents().Patch(ctx, name, types.MergePatchType, body, metav1.PatchOptions{})
			return err
		}
	default:
		return nil
	}
	have := route.Of(object.GetLabels())
	if have != want.Route && (want.Route != "" || r.mayUnroute(kind, object)) {
		body, err := routePatch(object.GetResourceVersion(), want.Route)
		if err != nil {
			return err
		}
		if err := patch(ctx, body); err != nil {
			if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
				return nil // it changed or went: its event brings it back
			}
			return fmt.Errorf("route %s %s to %q: %w", kind, key, want.Route, err)
		}
		r.routed.WithLabelValues(kind).Inc()
		klog.V(2).InfoS("Routed", "kind", kind, "object", key, "from", have, "to", want.Route)
		have = want.Route
	}
	if have != "" || want.Reason == "" {
		r.forget(object.GetUID())
		return nil
	}
	r.remember(kind, object, want.Reason)
	return nil
}

// remember records why an object has no route and, the first time it has
// this reason, posts a NotRouted event with it. An object deleted since it
// was read is not remembered: its delete handler has run or will find it.
func (r *router) remember(kind string, object routedObject, reason string) {
	uid := object.GetUID()
	r.notRoutedMu.Lock()
	last, known := r.notRouted[uid]
	if known && last.reason == reason {
		r.notRoutedMu.Unlock()
		return
	}
	// The informer removes an object from its cache before its delete
	// handler runs, which forgets under this lock: checking the cache
	// here never leaves behind an entry of an object that is gone.
	if !r.cached(kind, object) {
		r.notRoutedMu.Unlock()
		return
	}
	r.notRouted[uid] = notRouted{kind: kind, reason: reason}
	if !known {
		r.unrouted.WithLabelValues(resources[kind]).Inc()
	}
	r.notRoutedMu.Unlock()
	r.recorder.Event(object, corev1.EventTypeWarning, reasonNotRouted, reason)
	klog.V(2).InfoS("Not routed", "kind", kind, "object", klog.KObj(object), "reason", reason)
}

// forget drops what is remembered of an object that is routed, needs no
// route, or is gone.
func (r *router) forget(uid types.UID) {
	r.notRoutedMu.Lock()
	defer r.notRoutedMu.Unlock()
	if last, known := r.notRouted[uid]; known {
		delete(r.notRouted, uid)
		r.unrouted.WithLabelValues(resources[last.kind]).Dec()
	}
}

// deleted is the routed informers' delete handler.
func (r *router) deleted(obj any) {
	if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tombstone.Obj
	}
	if object, ok := obj.(metav1.Object); ok {
		r.forget(object.GetUID())
	}
}

// cached: the router's cache holds this object (this UID under its name).
func (r *router) cached(kind string, object metav1.Object) bool {
	namespace, name := object.GetNamespace(), object.GetName()
	var (
		got metav1.Object
		err error
	)
	switch kind {
	case kindClaim:
		got, err = r.claims.PersistentVolumeClaims(namespace).Get(name)
	case kindVolume:
		got, err = r.volumes.Get(name)
	case kindSnapshot:
		got, err = r.snapList.VolumeSnapshots(namespace).Get(name)
	case kindContent:
		got, err = r.contents.Get(name)
	default:
		return false
	}
	return err == nil && got.GetUID() == object.GetUID()
}

// mayUnroute: a route is removed only from a claim that lost its selected
// node before any node began making its volume (the scheduler picks
// again); a PV, snapshot or content keeps the route it had when the facts
// to decide it are gone (its source PV deleted, its Node gone), so its
// owner can still finish it.
func (r *router) mayUnroute(kind string, object metav1.Object) bool {
	if kind != kindClaim {
		return false
	}
	claim := object.(*corev1.PersistentVolumeClaim)
	return claim.Spec.VolumeName == "" && !slices.Contains(claim.Finalizers, provisioner.FinalizerProvisioning)
}

// routePatch sets (or, for "", removes) the route label, on the condition
// that the object is still at resourceVersion.
func routePatch(resourceVersion, value string) ([]byte, error) {
	var label any
	if value != "" {
		label = value
	}
	return json.Marshal(map[string]any{"metadata": map[string]any{
		"resourceVersion": resourceVersion,
		"labels":          map[string]any{route.Label: label},
	}})
}

func ignoreNotFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func indexHandle(obj any) ([]string, error) {
	pv, ok := obj.(*corev1.PersistentVolume)
	if !ok || pv.Spec.CSI == nil {
		return nil, nil
	}
	return []string{pv.Spec.CSI.VolumeHandle}, nil
}

func indexSourceClaim(obj any) ([]string, error) {
	snap, ok := obj.(*snapv1.VolumeSnapshot)
	if !ok || snap.Spec.Source.PersistentVolumeClaimName == nil {
		return nil, nil
	}
	return []string{snap.Namespace + "/" + *snap.Spec.Source.PersistentVolumeClaimName}, nil
}

func nodeMeta(obj any) (string, map[string]string, bool) {
	node, ok := obj.(metav1.Object)
	if !ok {
		return "", nil, false
	}
	return node.GetName(), node.GetLabels(), true
}

func indexTopologyID(obj any) ([]string, error) {
	_, labels, ok := nodeMeta(obj)
	if !ok || labels[topology.NodeKey] == "" {
		return nil, nil
	}
	return []string{labels[topology.NodeKey]}, nil
}

// indexZone: the zones Immediate zone claims may be routed to are those of
// Nodes where the driver registered (the kubelet labels them with the
// driver's node key): a zone of control-plane nodes only has no provisioner.
func indexZone(obj any) ([]string, error) {
	name, labels, ok := nodeMeta(obj)
	if !ok || labels[topology.NodeKey] == "" {
		return nil, nil
	}
	location := topology.LocationFromLabels(name, labels)
	if zone := route.ZoneOf(location.Region, location.Zone); zone != "" {
		return []string{zone}, nil
	}
	return nil, nil
}

// indexOwnerHash: a node-pool ID carries the hash of the driver's node id
// (its topology label, else the Node's name), a zone-pool ID the hash of
// "region/zone".
func indexOwnerHash(obj any) ([]string, error) {
	name, labels, ok := nodeMeta(obj)
	if !ok {
		return nil, nil
	}
	hashes := []string{volumeid.OwnerHash(name)}
	if id := labels[topology.NodeKey]; id != "" && id != name {
		hashes = append(hashes, volumeid.OwnerHash(id))
	}
	location := topology.LocationFromLabels(name, labels)
	if zone := route.ZoneOf(location.Region, location.Zone); zone != "" {
		hashes = append(hashes, volumeid.OwnerHash(zone))
	}
	return hashes, nil
}

func (c *caches) Class(name string) *storagev1.StorageClass {
	if name == "" {
		return nil
	}
	class, _ := c.classes.Get(name)
	return class
}

func (c *caches) PV(name string) *corev1.PersistentVolume {
	pv, _ := c.volumes.Get(name)
	return pv
}

func (c *caches) PVByHandle(handle string) *corev1.PersistentVolume {
	objs, _ := c.volumeIndex.ByIndex(byHandle, handle)
	for _, obj := range objs {
		if pv, ok := obj.(*corev1.PersistentVolume); ok {
			return pv
		}
	}
	return nil
}

func (c *caches) Claim(namespace, name string) *corev1.PersistentVolumeClaim {
	claim, _ := c.claims.PersistentVolumeClaims(namespace).Get(name)
	return claim
}

func (c *caches) Content(name string) *snapv1.VolumeSnapshotContent {
	content, _ := c.contents.Get(name)
	return content
}

func (c *caches) NodeLabels(name string) map[string]string {
	obj, exists, err := c.nodes.GetByKey(name)
	if err != nil || !exists {
		return nil
	}
	_, labels, _ := nodeMeta(obj)
	if labels == nil {
		labels = map[string]string{}
	}
	return labels
}

func (c *caches) NodeByID(id string) string {
	objs, _ := c.nodes.ByIndex(byTopologyID, id)
	for _, obj := range objs {
		if name, _, ok := nodeMeta(obj); ok {
			return name
		}
	}
	return ""
}

func (c *caches) Owner(hash string) (node, zone string) {
	objs, _ := c.nodes.ByIndex(byOwnerHash, hash)
	for _, obj := range objs {
		name, labels, ok := nodeMeta(obj)
		if !ok {
			continue
		}
		if volumeid.OwnerHash(name) == hash || volumeid.OwnerHash(labels[topology.NodeKey]) == hash {
			node = name
		}
		location := topology.LocationFromLabels(name, labels)
		if z := route.ZoneOf(location.Region, location.Zone); z != "" && volumeid.OwnerHash(z) == hash {
			zone = z
		}
	}
	return node, zone
}

func (c *caches) Zones() []string {
	zones := c.nodes.ListIndexFuncValues(byZone)
	slices.Sort(zones)
	return zones
}
