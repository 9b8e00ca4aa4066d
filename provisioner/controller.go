// Package provisioner is toposnap's node-deployed volume provisioner: on
// every node it watches claims of the driver's StorageClasses, creates the
// volume through the local CSI socket once the scheduler selected this node,
// and publishes a PV whose nodeAffinity is where the volume is reachable. It
// also deletes volumes of released Delete-policy PVs it can reach.
package provisioner

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	volumehelpers "k8s.io/component-helpers/storage/volume"
	"k8s.io/klog/v2"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapshotlisters "github.com/kubernetes-csi/external-snapshotter/client/v8/listers/volumesnapshot/v1"

	"github.com/toposnap/toposnap/internal/claimsource"
	"github.com/toposnap/toposnap/internal/kube"
	"github.com/toposnap/toposnap/internal/topology"
)

// Controller provisions and deletes volumes for one node.
type Controller struct {
	driverName  string
	nodeName    string
	nodeSegment topology.Segment
	timeout     time.Duration

	client      kubernetes.Interface
	snapClient  snapshotclient.Interface
	csi         csi.ControllerClient
	recorder    record.EventRecorder
	claims      corelisters.PersistentVolumeClaimLister
	volumes     corelisters.PersistentVolumeLister
	classes     storagelisters.StorageClassLister
	nodes       corelisters.NodeLister
	snapshots   snapshotlisters.VolumeSnapshotLister
	contents    snapshotlisters.VolumeSnapshotContentLister
	claimQueue  workqueue.TypedRateLimitingInterface[string]
	volumeQueue workqueue.TypedRateLimitingInterface[string]
	synced      []cache.InformerSynced

	capacityNamespace string
	capacityChanged   chan struct{}
	zone              leaseHolder
	campaign          *kube.Holder
	metrics           *metrics
	// sourceQueue holds the snapshots and claims that restores and clones
	// read from (sourceKey), whose protection finalizer may be due to go.
	sourceQueue workqueue.TypedRateLimitingInterface[string]
	// released are the volumes --delete-orphans may delete (orphans.go).
	released *releasedVolumes
	// routed and sourcesOnly are Config's Routed and SourcesOnly.
	routed, sourcesOnly bool
	role                Role
}

// Role says which of a node's volumes a Controller acts on. A routed node
// runs two: RoleNode from start to end, over its node's objects, and
// RoleZone only while it holds its zone's Lease, over the zone's objects
// (watched only then), so a zone's objects reach one node.
type Role int

const (
	// RoleAll: the node's and, while it holds the zone's Lease (the
	// Controller campaigns for it), the zone's.
	RoleAll Role = iota
	// RoleNode: the node's only; the zone's Lease is someone else's concern.
	RoleNode
	// RoleZone: the zone's only, with the Lease held by Config.Zone.
	RoleZone
)

func (r Role) String() string {
	return [...]string{"node-and-zone", "node", "zone"}[r]
}

// Config wires a Controller.
type Config struct {
	DriverName  string
	NodeName    string
	NodeSegment topology.Segment
	Timeout     time.Duration
	Client      kubernetes.Interface
	Snapshots   snapshotclient.Interface
	CSI         csi.ControllerClient
	Recorder    record.EventRecorder
	// CapacityNamespace holds CSIStorageCapacity objects and zone Leases.
	CapacityNamespace string
	Registry          *prometheus.Registry
	// Routed: the informers hold only what the central controller routed
	// to this node or its zone. A source or node outside them is read from
	// the API server, and releasing source protection, which needs every
	// claim, is left to the central controller.
	Routed bool
	// Role: which volumes (RoleAll by default). Zone is the zone Lease's
	// holder for RoleZone.
	Role Role
	Zone leaseHolder
	// SourcesOnly: the central controller's part, releasing source
	// protection from whole-cluster caches; nothing is provisioned, and
	// no CSI driver is needed.
	SourcesOnly bool
}

// NewController builds the controller and registers its informers; start
// the factories and call Run.
func NewController(cfg Config, inf kube.Informers) *Controller {
	holder := &kube.Holder{}
	c := &Controller{
		zone: holder, campaign: holder, routed: cfg.Routed, sourcesOnly: cfg.SourcesOnly, role: cfg.Role,
		driverName: cfg.DriverName, nodeName: cfg.NodeName, nodeSegment: cfg.NodeSegment, timeout: cfg.Timeout,
		client: cfg.Client, snapClient: cfg.Snapshots, csi: cfg.CSI, recorder: cfg.Recorder,
		claims:            inf.Routed.Core().V1().PersistentVolumeClaims().Lister(),
		volumes:           inf.Routed.Core().V1().PersistentVolumes().Lister(),
		classes:           inf.Cluster.Storage().V1().StorageClasses().Lister(),
		snapshots:         inf.RoutedSnaps.Snapshot().V1().VolumeSnapshots().Lister(),
		contents:          inf.RoutedSnaps.Snapshot().V1().VolumeSnapshotContents().Lister(),
		capacityNamespace: cfg.CapacityNamespace, capacityChanged: make(chan struct{}, 1), metrics: newMetrics(cfg.Registry),
		released:    &releasedVolumes{},
		claimQueue:  kube.NewQueue("claims"),
		volumeQueue: kube.NewQueue("volumes"),
		sourceQueue: kube.NewQueue("sources"),
	}
	claimInformer := inf.Routed.Core().V1().PersistentVolumeClaims().Informer()
	_, _ = claimInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.enqueueClaim(obj) },
		UpdateFunc: func(_, obj any) { c.enqueueClaim(obj) },
		DeleteFunc: func(obj any) { c.enqueueClaim(obj) },
	})
	// A protected snapshot is looked at when it changes too: after a restart
	// nothing else would bring back one whose restores were deleted meanwhile.
	snapInformer := inf.RoutedSnaps.Snapshot().V1().VolumeSnapshots().Informer()
	_, _ = snapInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.enqueueProtectedSnapshot(obj) },
		UpdateFunc: func(_, obj any) { c.enqueueProtectedSnapshot(obj) },
	})
	classInformer := inf.Cluster.Storage().V1().StorageClasses().Informer()
	volumeInformer := inf.Routed.Core().V1().PersistentVolumes().Informer()
	contentInformer := inf.RoutedSnaps.Snapshot().V1().VolumeSnapshotContents().Informer()
	switch cfg.Role {
	case RoleNode:
		c.zone, c.campaign = neverHolds{}, nil
	case RoleZone:
		c.zone, c.campaign = cfg.Zone, nil
	}
	c.synced = []cache.InformerSynced{claimInformer.HasSynced, volumeInformer.HasSynced, classInformer.HasSynced,
		snapInformer.HasSynced, contentInformer.HasSynced}
	kube.RegisterCacheSizes(cfg.Registry, "toposnap_provisioner_cached_objects", map[string]cache.Store{
		"persistentvolumeclaims": claimInformer.GetStore(), "persistentvolumes": volumeInformer.GetStore(),
		"volumesnapshots": snapInformer.GetStore(), "volumesnapshotcontents": contentInformer.GetStore(),
	})
	if c.sourcesOnly {
		return c
	}
	// A deleted class's capacity goes at the next refresh: ask for it now.
	// (Not for a zone term's Controller, which publishes nothing: the class
	// informer is shared and outlives the term.)
	if c.role != RoleZone {
		_, _ = classInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			DeleteFunc: func(any) { c.capacityMayHaveChanged() },
		})
	}
	_, _ = volumeInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.enqueue(c.volumeQueue, obj) },
		UpdateFunc: func(_, obj any) { c.enqueue(c.volumeQueue, obj) },
		DeleteFunc: c.volumeDeleted,
	})
	// Nodes only off the central controller, which keeps their metadata.
	nodeInformer := inf.Self.Core().V1().Nodes().Informer()
	c.nodes = inf.Self.Core().V1().Nodes().Lister()
	c.synced = append(c.synced, nodeInformer.HasSynced)
	kube.RegisterCacheSizes(cfg.Registry, "toposnap_provisioner_cached_objects", map[string]cache.Store{"nodes": nodeInformer.GetStore()})
	return c
}

func (c *Controller) enqueue(queue workqueue.TypedRateLimitingInterface[string], obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		utilruntime.HandleError(err)
		return
	}
	queue.Add(key)
}

// enqueueClaim queues a claim, the source it reads from, and itself as a
// source when it carries the cloning protection (tombstones included).
func (c *Controller) enqueueClaim(obj any) {
	if !c.sourcesOnly {
		c.enqueue(c.claimQueue, obj)
	}
	if c.routed {
		return // sources are the central controller's
	}
	if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tombstone.Obj
	}
	claim, ok := obj.(*corev1.PersistentVolumeClaim)
	if !ok {
		return
	}
	if source, ok := claimsource.Of(claim); ok && (source.IsSnapshot() || source.IsClaim()) {
		c.sourceQueue.Add(sourceKey(source))
	}
	if slices.Contains(claim.Finalizers, FinalizerCloneSource) {
		c.sourceQueue.Add(sourceKey(claimsource.Source{Kind: claimsource.KindClaim, Namespace: claim.Namespace, Name: claim.Name}))
	}
}

func (c *Controller) enqueueProtectedSnapshot(obj any) {
	if c.routed {
		return
	}
	snap, ok := obj.(*snapv1.VolumeSnapshot)
	if ok && (slices.Contains(snap.Finalizers, FinalizerRestoreSource) || slices.Contains(snap.Finalizers, FinalizerSnapshotAsSource)) {
		c.sourceQueue.Add(sourceKey(claimsource.Source{
			APIGroup: claimsource.SnapshotGroup, Kind: claimsource.KindSnapshot, Namespace: snap.Namespace, Name: snap.Name}))
	}
}

// Background says how often the controller's periodic work runs.
type Background struct {
	CapacityInterval time.Duration
	OrphanInterval   time.Duration
	OrphanGrace      time.Duration
	DeleteOrphans    bool
}

// Run processes claims and volumes with the given number of workers each
// until ctx ends, campaigns for the zone's Lease, publishes capacity and
// reports orphans.
func (c *Controller) Run(ctx context.Context, workers int, background Background) error {
	defer c.claimQueue.ShutDown()
	defer c.volumeQueue.ShutDown()
	defer c.sourceQueue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return errors.New("informer caches did not sync")
	}
	if c.sourcesOnly {
		// The central controller's part: whole-cluster decisions only.
		klog.InfoS("Releasing source protection", "driver", c.driverName)
		if background.CapacityInterval > 0 {
			go wait.UntilWithContext(ctx, func(ctx context.Context) {
				if err := c.removeStaleCapacity(ctx); err != nil {
					klog.ErrorS(err, "Removing the storage capacity of deleted classes failed")
				}
			}, background.CapacityInterval)
		}
		for range workers {
			go wait.UntilWithContext(ctx, func(ctx context.Context) { kube.Work(ctx, c.sourceQueue, c.syncSource) }, time.Second)
		}
		<-ctx.Done()
		return nil
	}
	klog.InfoS("Provisioner running", "driver", c.driverName, "node", c.nodeName, "segment", c.nodeSegment, "role", c.role)
	if zone := c.nodeSegment[topology.ZoneKey]; zone != "" && c.campaign != nil {
		lease := ZoneLeaseName(c.nodeSegment[topology.RegionKey], zone)
		// A new holder takes over the zone's work that waited for it: no
		// event would bring back a claim its zone claimed, or a released
		// zone volume, while the former holder was dying.
		c.campaign.OnStart = func(context.Context) { c.requeueAll() }
		c.campaign.Bounded = true
		go c.campaign.Campaign(ctx, c.client, c.capacityNamespace, lease, c.nodeName)
	}
	if background.CapacityInterval > 0 && c.role != RoleZone {
		go c.publishCapacity(ctx, background.CapacityInterval)
	}
	if background.OrphanInterval > 0 {
		go c.reportOrphans(ctx, background.OrphanInterval, background.OrphanGrace, background.DeleteOrphans)
	}
	for range workers {
		go wait.UntilWithContext(ctx, func(ctx context.Context) { kube.Work(ctx, c.claimQueue, c.syncClaim) }, time.Second)
		go wait.UntilWithContext(ctx, func(ctx context.Context) { kube.Work(ctx, c.volumeQueue, c.syncVolume) }, time.Second)
		if !c.routed {
			go wait.UntilWithContext(ctx, func(ctx context.Context) { kube.Work(ctx, c.sourceQueue, c.syncSource) }, time.Second)
		}
	}
	<-ctx.Done()
	return nil
}

// requeueAll looks at every claim and PV again.
func (c *Controller) requeueAll() {
	claims, _ := c.claims.List(labels.Everything())
	for _, claim := range claims {
		c.claimQueue.Add(claim.Namespace + "/" + claim.Name)
	}
	volumes, _ := c.volumes.List(labels.Everything())
	for _, pv := range volumes {
		c.volumeQueue.Add(pv.Name)
	}
}

// syncClaim provisions a volume for a pending claim this node owns, and
// finishes (deletes) a volume whose claim was deleted while it was made.
func (c *Controller) syncClaim(ctx context.Context, key string) error {
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	claim, err := c.claims.PersistentVolumeClaims(namespace).Get(name)
	if apierrors.IsNotFound(err) {
		return nil // a claim holding FinalizerProvisioning cannot go before it is finished
	}
	if err != nil {
		return err
	}
	provisioning := slices.Contains(claim.Finalizers, FinalizerProvisioning)
	switch {
	case claim.DeletionTimestamp != nil:
		if provisioning && c.provisionsClaim(claim) {
			return c.finishDeleted(ctx, claim)
		}
		return nil
	case claim.Spec.VolumeName != "":
		if provisioning && c.provisionsClaim(claim) {
			return c.releaseClaim(ctx, claim, false) // bound: its PV holds the volume now
		}
		return c.syncBound(ctx, claim)
	}
	className := volumehelpers.GetPersistentVolumeClaimClass(claim)
	if className == "" {
		return nil
	}
	class, err := c.classes.Get(className)
	if err != nil {
		return nil // not ours, or the class is missing: the PV controller reports that
	}
	if class.Provisioner != c.driverName {
		return nil
	}
	if c.mayClaimForZone(ctx, claim, class) {
		return c.claimForZone(ctx, claim)
	}
	if !c.provisionsClaim(claim) {
		return nil
	}
	if _, err := c.volumes.Get(PVName(claim)); err == nil {
		if provisioning {
			return c.releaseClaim(ctx, claim, false)
		}
		return nil // provisioned; the PV controller binds it
	}
	return c.provision(ctx, claim, class)
}

// syncBound resizes a bound claim of ours when its request outgrew its PV.
func (c *Controller) syncBound(ctx context.Context, claim *corev1.PersistentVolumeClaim) error {
	if claim.Status.Phase != corev1.ClaimBound {
		return nil
	}
	pv, err := c.volumes.Get(claim.Spec.VolumeName)
	if err != nil || pv.Spec.CSI == nil || pv.Spec.CSI.Driver != c.driverName || !c.responsibleFor(pv) {
		return nil
	}
	return c.expand(ctx, claim, pv)
}

// provisionsClaim says whether this node makes the claim's volume, from the
// claim alone (its class may be gone by the time a deleted claim is
// finished): a zone claim belongs to whoever holds the Lease of the zone
// that claimed it (AnnProvisioningZone), so a zone survives its node;
// any other delayed-binding claim to the node the scheduler selected.
func (c *Controller) provisionsClaim(claim *corev1.PersistentVolumeClaim) bool {
	if zone, ok := claim.Annotations[AnnProvisioningZone]; ok {
		return zone == c.zoneName() && c.zone.Holds()
	}
	if node, ok := claim.Annotations[AnnSelectedNode]; ok {
		return node == c.nodeName
	}
	return false
}

// mayClaimForZone: a zone claim nobody took yet, while this node holds the
// zone's Lease: an immediate one whose class allows this zone, or a
// delayed-binding one whose selected node is in this zone. A zone's pool is
// reached from every node of the zone, so the zone's one provisioner makes
// every zone volume there, whichever node the pod goes to (that node need
// not run a provisioner, nor be up). Immediate node-scope claims have no
// owner: nothing can pick their node (the webhook defaults such classes to
// WaitForFirstConsumer).
func (c *Controller) mayClaimForZone(ctx context.Context, claim *corev1.PersistentVolumeClaim, class *storagev1.StorageClass) bool {
	if _, ok := claim.Annotations[AnnProvisioningZone]; ok {
		return false
	}
	params, err := DriverParameters(class)
	if err != nil || params["scope"] != string(topology.ScopeZone) || !c.zone.Holds() || c.zoneName() == "" {
		return false
	}
	selected, hasSelected := claim.Annotations[AnnSelectedNode]
	if class.VolumeBindingMode != nil && *class.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer {
		if !hasSelected {
			return false // the scheduler has not chosen yet
		}
		node, err := c.getNode(ctx, selected)
		return err == nil && AllowedOnNode(class, node.Labels) && sameZone(node.Labels, c.zoneLabels())
	}
	return !hasSelected && AllowedOnNode(class, c.zoneLabels())
}

// sameZone: a node's labels put it in the zone (and region) of zoneLabels.
func sameZone(nodeLabels, zoneLabels map[string]string) bool {
	for key, value := range zoneLabels {
		if nodeLabels[key] != value {
			return false
		}
	}
	return len(zoneLabels) > 0
}

// zoneName names this node's zone as AnnProvisioningZone records it.
func (c *Controller) zoneName() string {
	zone := c.nodeSegment[topology.ZoneKey]
	if zone == "" {
		return ""
	}
	return c.nodeSegment[topology.RegionKey] + "/" + zone
}

// zoneLabels are the labels every node of this node's zone shares.
func (c *Controller) zoneLabels() map[string]string {
	labels := map[string]string{}
	for _, key := range []string{topology.ZoneKey, topology.RegionKey} {
		if value, ok := c.nodeSegment[key]; ok {
			labels[key] = value
		}
	}
	return labels
}

// responsibleFor: node-scope PVs are their node's, zone-scope PVs the zone
// owner's (any node of the zone reaches them; one acts).
func (c *Controller) responsibleFor(pv *corev1.PersistentVolume) bool {
	if !c.reaches(pv) || pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return false
	}
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, expr := range term.MatchExpressions {
			if expr.Key == topology.NodeKey {
				return c.role != RoleZone
			}
		}
	}
	return c.zone.Holds()
}

// reaches reports whether this node satisfies the PV's nodeAffinity.
func (c *Controller) reaches(pv *corev1.PersistentVolume) bool {
	return volumehelpers.CheckNodeAffinity(pv, c.nodeLabels()) == nil
}

// nodeLabels are this node's labels with the driver's segment on top.
func (c *Controller) nodeLabels() map[string]string {
	labels := map[string]string{}
	if node, err := c.nodes.Get(c.nodeName); err == nil {
		for k, v := range node.Labels {
			labels[k] = v
		}
	}
	for k, v := range c.nodeSegment {
		labels[k] = v
	}
	return labels
}
