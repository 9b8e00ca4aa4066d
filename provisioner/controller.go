// Package provisioner is toposnap's node-deployed volume provisioner: on
// every node it watches claims of the driver's StorageClasses, creates the
// volume through the local CSI socket once the scheduler selected this node,
// and publishes a PV whose nodeAffinity is where the volume is reachable. It
// also deletes volumes of released Delete-policy PVs it can reach.
package provisioner

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	volumehelpers "k8s.io/component-helpers/storage/volume"
	"k8s.io/klog/v2"

	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
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
	zone              *zoneOwner
	metrics           *metrics
	// inFlight holds CreateVolume requests that ended in a transient error:
	// the volume may exist, so they are finished (and then deleted) even if
	// their claim goes away.
	inFlightMu sync.Mutex
	inFlight   map[string]inFlightCreate
}

// inFlightCreate is a creation to finish after its claim is gone.
type inFlightCreate struct {
	req   *csi.CreateVolumeRequest
	claim *corev1.PersistentVolumeClaim
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
}

// NewController builds the controller and registers its informers; start
// the factories and call Run.
func NewController(cfg Config, kubeInformers informers.SharedInformerFactory, snapInformers snapshotinformers.SharedInformerFactory) *Controller {
	c := &Controller{
		driverName: cfg.DriverName, nodeName: cfg.NodeName, nodeSegment: cfg.NodeSegment, timeout: cfg.Timeout,
		client: cfg.Client, snapClient: cfg.Snapshots, csi: cfg.CSI, recorder: cfg.Recorder,
		claims:            kubeInformers.Core().V1().PersistentVolumeClaims().Lister(),
		volumes:           kubeInformers.Core().V1().PersistentVolumes().Lister(),
		classes:           kubeInformers.Storage().V1().StorageClasses().Lister(),
		nodes:             kubeInformers.Core().V1().Nodes().Lister(),
		snapshots:         snapInformers.Snapshot().V1().VolumeSnapshots().Lister(),
		contents:          snapInformers.Snapshot().V1().VolumeSnapshotContents().Lister(),
		capacityNamespace: cfg.CapacityNamespace, capacityChanged: make(chan struct{}, 1), zone: &zoneOwner{}, metrics: newMetrics(cfg.Registry),
		inFlight:    map[string]inFlightCreate{},
		claimQueue:  kube.NewQueue("claims"),
		volumeQueue: kube.NewQueue("volumes"),
	}
	claimInformer := kubeInformers.Core().V1().PersistentVolumeClaims().Informer()
	_, _ = claimInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.enqueue(c.claimQueue, obj) },
		UpdateFunc: func(_, obj any) { c.enqueue(c.claimQueue, obj) },
		DeleteFunc: func(obj any) { c.enqueue(c.claimQueue, obj) },
	})
	volumeInformer := kubeInformers.Core().V1().PersistentVolumes().Informer()
	_, _ = volumeInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.enqueue(c.volumeQueue, obj) },
		UpdateFunc: func(_, obj any) { c.enqueue(c.volumeQueue, obj) },
	})
	c.synced = []cache.InformerSynced{
		claimInformer.HasSynced, volumeInformer.HasSynced,
		kubeInformers.Storage().V1().StorageClasses().Informer().HasSynced,
		kubeInformers.Core().V1().Nodes().Informer().HasSynced,
		snapInformers.Snapshot().V1().VolumeSnapshots().Informer().HasSynced,
		snapInformers.Snapshot().V1().VolumeSnapshotContents().Informer().HasSynced,
	}
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
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return errors.New("informer caches did not sync")
	}
	klog.InfoS("Provisioner running", "driver", c.driverName, "node", c.nodeName, "segment", c.nodeSegment)
	if zone := c.nodeSegment[topology.ZoneKey]; zone != "" {
		lease := ZoneLeaseName(c.nodeSegment[topology.RegionKey], zone)
		go c.zone.Campaign(ctx, c.client, c.capacityNamespace, lease, c.nodeName)
	}
	if background.CapacityInterval > 0 {
		go c.publishCapacity(ctx, background.CapacityInterval)
	}
	if background.OrphanInterval > 0 {
		go c.reportOrphans(ctx, background.OrphanInterval, background.OrphanGrace, background.DeleteOrphans)
	}
	for range workers {
		go wait.UntilWithContext(ctx, func(ctx context.Context) { kube.Work(ctx, c.claimQueue, c.syncClaim) }, time.Second)
		go wait.UntilWithContext(ctx, func(ctx context.Context) { kube.Work(ctx, c.volumeQueue, c.syncVolume) }, time.Second)
	}
	<-ctx.Done()
	return nil
}

// syncClaim provisions a volume for a pending claim this node owns.
func (c *Controller) syncClaim(ctx context.Context, key string) error {
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	claim, err := c.claims.PersistentVolumeClaims(namespace).Get(name)
	if apierrors.IsNotFound(err) {
		return c.abandon(ctx, key)
	}
	if err != nil {
		return err
	}
	if claim.DeletionTimestamp != nil {
		return nil
	}
	if claim.Spec.VolumeName != "" {
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
	if class.Provisioner != c.driverName || !c.ownsClaim(claim, class) {
		return nil
	}
	if _, err := c.volumes.Get(PVName(claim)); err == nil {
		return nil // provisioned; the PV controller binds it
	}
	return c.provision(ctx, key, claim, class)
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

// abandon finishes a creation that ended in a transient error after its
// claim went away: create-or-find the volume by name, then delete it.
func (c *Controller) abandon(ctx context.Context, key string) error {
	c.inFlightMu.Lock()
	entry, ok := c.inFlight[key]
	c.inFlightMu.Unlock()
	if !ok {
		return nil
	}
	req := entry.req
	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.csi.CreateVolume(callCtx, req)
	if err != nil && classify(err) == retryInBackground {
		return fmt.Errorf("finish abandoned volume %s: %w", req.GetName(), err)
	}
	if err == nil {
		if _, err := c.csi.DeleteVolume(callCtx, &csi.DeleteVolumeRequest{VolumeId: resp.GetVolume().GetVolumeId()}); err != nil {
			return fmt.Errorf("delete abandoned volume %s: %w", resp.GetVolume().GetVolumeId(), err)
		}
		klog.InfoS("Deleted the volume of a claim deleted during provisioning", "claim", key, "volume", resp.GetVolume().GetVolumeId())
	}
	if err := c.protectSource(ctx, entry.claim, false); err != nil {
		return err
	}
	c.setInFlight(key, nil, nil)
	return nil
}

func (c *Controller) setInFlight(key string, req *csi.CreateVolumeRequest, claim *corev1.PersistentVolumeClaim) {
	c.inFlightMu.Lock()
	defer c.inFlightMu.Unlock()
	if req == nil {
		delete(c.inFlight, key)
	} else {
		c.inFlight[key] = inFlightCreate{req: req, claim: claim.DeepCopy()}
	}
}

// ownsClaim: a delayed-binding claim belongs to the node the scheduler
// selected; an immediate-binding zone claim to the owner of a zone the class
// allows. Immediate node-scope claims have no owner: nothing can pick their
// node (the webhook defaults such classes to WaitForFirstConsumer).
func (c *Controller) ownsClaim(claim *corev1.PersistentVolumeClaim, class *storagev1.StorageClass) bool {
	if class.VolumeBindingMode != nil && *class.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer {
		return claim.Annotations[AnnSelectedNode] == c.nodeName
	}
	params, err := DriverParameters(class)
	if err != nil || params["scope"] != string(topology.ScopeZone) || !c.zone.Holds() {
		return false
	}
	return AllowedOnNode(class, c.zoneLabels())
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
				return true
			}
		}
	}
	return c.zone.Holds()
}

func (c *Controller) provision(ctx context.Context, key string, claim *corev1.PersistentVolumeClaim, class *storagev1.StorageClass) error {
	req, err := c.createRequest(claim, class)
	if errors.Is(err, errUnreachableSource) {
		c.recorder.Eventf(claim, corev1.EventTypeWarning, "ProvisioningFailed",
			"node %s cannot provision this claim, asking the scheduler to pick another node: %v", c.nodeName, err)
		return c.dropSelectedNode(ctx, claim)
	}
	if err != nil {
		c.recorder.Event(claim, corev1.EventTypeWarning, "ProvisioningFailed", err.Error())
		return err
	}
	if err := c.protectSource(ctx, claim, true); err != nil {
		return err
	}
	c.recorder.Eventf(claim, corev1.EventTypeNormal, "Provisioning", "External provisioner is provisioning volume for claim %s/%s on node %s", claim.Namespace, claim.Name, c.nodeName)
	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	resp, err := c.csi.CreateVolume(callCtx, req)
	cancel()
	if err != nil {
		c.metrics.provisions.WithLabelValues(status.Code(err).String()).Inc()
		switch classify(err) {
		case retryInBackground:
			c.setInFlight(key, req, claim)
		case reschedule:
			c.recorder.Eventf(claim, corev1.EventTypeWarning, "ProvisioningFailed",
				"node %s cannot provision this claim, asking the scheduler to pick another node: %s", c.nodeName, status.Convert(err).Message())
			if err := c.protectSource(ctx, claim, false); err != nil {
				return err
			}
			return c.dropSelectedNode(ctx, claim)
		case final:
			c.recorder.Eventf(claim, corev1.EventTypeWarning, "ProvisioningFailed", "failed to provision volume: %s", status.Convert(err).Message())
		}
		return fmt.Errorf("create volume for %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	c.setInFlight(key, nil, nil)
	c.metrics.provisions.WithLabelValues("OK").Inc()
	c.capacityMayHaveChanged()
	pv := BuildPV(claim, class, c.driverName, resp.GetVolume())
	if _, err := c.client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create PV %s: %w", pv.Name, err)
	}
	if err := c.protectSource(ctx, claim, false); err != nil {
		return err
	}
	c.recorder.Eventf(claim, corev1.EventTypeNormal, "ProvisioningSucceeded", "Successfully provisioned volume %s on node %s", pv.Name, c.nodeName)
	klog.InfoS("Provisioned", "pvc", klog.KObj(claim), "pv", pv.Name, "volume", resp.GetVolume().GetVolumeId())
	return nil
}

// createRequest builds the CreateVolume call for a claim.
func (c *Controller) createRequest(claim *corev1.PersistentVolumeClaim, class *storagev1.StorageClass) (*csi.CreateVolumeRequest, error) {
	params, err := DriverParameters(class)
	if err != nil {
		return nil, err
	}
	caps, err := VolumeCapabilities(claim, class)
	if err != nil {
		return nil, err
	}
	var requirement *csi.TopologyRequirement
	if claim.Annotations[AnnSelectedNode] == c.nodeName {
		node, err := c.nodes.Get(c.nodeName)
		if err != nil {
			return nil, fmt.Errorf("read selected node %s: %w", c.nodeName, err)
		}
		if requirement, err = TopologyRequirement(c.nodeSegment, node.Labels, class); err != nil {
			return nil, err
		}
	} else if requirement, err = TopologyRequirement(topology.Segment(c.zoneLabels()), c.zoneLabels(), class); err != nil {
		return nil, err
	}
	request := claim.Spec.Resources.Requests[corev1.ResourceStorage]
	req := &csi.CreateVolumeRequest{
		Name:                      PVName(claim),
		CapacityRange:             &csi.CapacityRange{RequiredBytes: request.Value()},
		VolumeCapabilities:        caps,
		Parameters:                params,
		AccessibilityRequirements: requirement,
	}
	source, err := c.contentSource(claim)
	if err != nil {
		return nil, err
	}
	req.VolumeContentSource = source
	return req, nil
}

// contentSource resolves a claim's dataSource with upstream's checks.
func (c *Controller) contentSource(claim *corev1.PersistentVolumeClaim) (*csi.VolumeContentSource, error) {
	ref, ok := claimsource.Of(claim)
	if !ok {
		return nil, nil
	}
	request := claim.Spec.Resources.Requests[corev1.ResourceStorage]
	switch {
	case ref.IsSnapshot():
		snap, err := c.snapshots.VolumeSnapshots(claim.Namespace).Get(ref.Name)
		if err != nil {
			return nil, fmt.Errorf("dataSource VolumeSnapshot %s/%s: %w", claim.Namespace, ref.Name, err)
		}
		if snap.Status == nil || snap.Status.BoundVolumeSnapshotContentName == nil {
			return nil, fmt.Errorf("VolumeSnapshot %s/%s is not bound to a content yet", claim.Namespace, ref.Name)
		}
		if snap.Status.ReadyToUse == nil || !*snap.Status.ReadyToUse {
			return nil, fmt.Errorf("VolumeSnapshot %s/%s is not ready to use yet", claim.Namespace, ref.Name)
		}
		content, err := c.contents.Get(*snap.Status.BoundVolumeSnapshotContentName)
		if err != nil {
			return nil, fmt.Errorf("VolumeSnapshotContent %s: %w", *snap.Status.BoundVolumeSnapshotContentName, err)
		}
		if content.Spec.Driver != c.driverName {
			return nil, fmt.Errorf("VolumeSnapshot %s/%s belongs to driver %s, not %s", claim.Namespace, ref.Name, content.Spec.Driver, c.driverName)
		}
		if content.Status == nil || content.Status.SnapshotHandle == nil {
			return nil, fmt.Errorf("VolumeSnapshotContent %s has no snapshot handle yet", content.Name)
		}
		if err := c.checkSnapshotReachable(content.Annotations[topology.AnnAccessibleTopology]); err != nil {
			return nil, fmt.Errorf("VolumeSnapshot %s/%s: %w", claim.Namespace, ref.Name, err)
		}
		if snap.Status.RestoreSize != nil && request.Cmp(*snap.Status.RestoreSize) < 0 {
			return nil, fmt.Errorf("requested %s is smaller than VolumeSnapshot %s/%s's restoreSize %s", request.String(), claim.Namespace, ref.Name, snap.Status.RestoreSize.String())
		}
		return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: *content.Status.SnapshotHandle}}}, nil
	case ref.IsClaim():
		source, err := c.claims.PersistentVolumeClaims(claim.Namespace).Get(ref.Name)
		if err != nil {
			return nil, fmt.Errorf("dataSource PersistentVolumeClaim %s/%s: %w", claim.Namespace, ref.Name, err)
		}
		if source.Spec.VolumeName == "" {
			return nil, fmt.Errorf("source claim %s/%s is not bound yet", claim.Namespace, ref.Name)
		}
		pv, err := c.volumes.Get(source.Spec.VolumeName)
		if err != nil {
			return nil, fmt.Errorf("source PV %s: %w", source.Spec.VolumeName, err)
		}
		if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != c.driverName {
			return nil, fmt.Errorf("source claim %s/%s is not a %s volume", claim.Namespace, ref.Name, c.driverName)
		}
		sourceSize := source.Spec.Resources.Requests[corev1.ResourceStorage]
		if request.Cmp(sourceSize) < 0 {
			return nil, fmt.Errorf("requested %s is smaller than source claim %s/%s's %s", request.String(), claim.Namespace, ref.Name, sourceSize.String())
		}
		return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: pv.Spec.CSI.VolumeHandle}}}, nil
	}
	return nil, fmt.Errorf("dataSource kind %s is not supported (use a VolumeSnapshot or a PersistentVolumeClaim)", ref.Kind)
}

// errUnreachableSource: the claim's source cannot be read from this node, so
// the scheduler must pick another (before any CSI call is wasted on it).
var errUnreachableSource = errors.New("not reachable from this node")

// checkSnapshotReachable narrows a restore to where its snapshot can be
// read, from the content's toposnap.io/accessible-topology annotation
// (absent: no constraint known).
func (c *Controller) checkSnapshotReachable(annotation string) error {
	if annotation == "" {
		return nil
	}
	segments, err := topology.DecodeSegments(annotation)
	if err != nil || len(segments) == 0 {
		return nil
	}
	labels := map[string]string{}
	if node, err := c.nodes.Get(c.nodeName); err == nil {
		for k, v := range node.Labels {
			labels[k] = v
		}
	}
	for k, v := range c.nodeSegment {
		labels[k] = v
	}
	if topology.ReachableFrom(labels, segments) {
		return nil
	}
	return fmt.Errorf("its snapshot can be restored only in %v, which node %s is not in: %w", segments, c.nodeName, errUnreachableSource)
}

// dropSelectedNode removes the scheduler's choice so it picks again.
func (c *Controller) dropSelectedNode(ctx context.Context, claim *corev1.PersistentVolumeClaim) error {
	patch := []byte(fmt.Sprintf(`{"metadata":{"annotations":{%q:null}}}`, AnnSelectedNode))
	_, err := c.client.CoreV1().PersistentVolumeClaims(claim.Namespace).Patch(ctx, claim.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("remove %s from %s/%s: %w", AnnSelectedNode, claim.Namespace, claim.Name, err)
	}
	return nil
}

// syncVolume deletes the backend volume of a released Delete-policy PV this
// node can reach, then lets the PV go.
func (c *Controller) syncVolume(ctx context.Context, key string) error {
	pv, err := c.volumes.Get(key)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != c.driverName || pv.Annotations[AnnProvisionedBy] != c.driverName {
		return nil
	}
	if pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
		return nil
	}
	released := pv.Status.Phase == corev1.VolumeReleased || pv.Status.Phase == corev1.VolumeFailed || pv.DeletionTimestamp != nil
	if !released || !c.responsibleFor(pv) {
		return nil
	}
	callCtx, cancel := context.WithTimeout(ctx, c.timeout)
	_, err = c.csi.DeleteVolume(callCtx, &csi.DeleteVolumeRequest{VolumeId: pv.Spec.CSI.VolumeHandle})
	cancel()
	if err != nil {
		if status.Code(err) != codes.Aborted {
			c.recorder.Eventf(pv, corev1.EventTypeWarning, "VolumeFailedDelete", "delete volume %s: %s", pv.Spec.CSI.VolumeHandle, status.Convert(err).Message())
		}
		return fmt.Errorf("delete volume of PV %s: %w", pv.Name, err)
	}
	if slices.Contains(pv.Finalizers, FinalizerVolume) {
		updated := pv.DeepCopy()
		updated.Finalizers = slices.DeleteFunc(updated.Finalizers, func(f string) bool { return f == FinalizerVolume })
		if _, err := c.client.CoreV1().PersistentVolumes().Update(ctx, updated, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("remove finalizer from PV %s: %w", pv.Name, err)
		}
	}
	if pv.DeletionTimestamp == nil {
		err := c.client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete PV %s: %w", pv.Name, err)
		}
	}
	c.capacityMayHaveChanged()
	klog.InfoS("Deleted volume", "pv", pv.Name, "volume", pv.Spec.CSI.VolumeHandle)
	return nil
}

// reaches reports whether this node satisfies the PV's nodeAffinity.
func (c *Controller) reaches(pv *corev1.PersistentVolume) bool {
	labels := map[string]string{}
	for k, v := range c.nodeSegment {
		labels[k] = v
	}
	if node, err := c.nodes.Get(c.nodeName); err == nil {
		for k, v := range node.Labels {
			labels[k] = v
		}
	}
	return volumehelpers.CheckNodeAffinity(pv, labels) == nil
}
