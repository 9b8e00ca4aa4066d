// Package snapshotter cuts, tracks and deletes toposnap snapshots. Its
// content half (always on) turns VolumeSnapshotContents of the driver whose
// source this node reaches into CSI CreateSnapshot calls and records the
// result; its common half (--common-controller) binds VolumeSnapshots to
// contents, for clusters without the upstream snapshot-controller.
package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapshotlisters "github.com/kubernetes-csi/external-snapshotter/client/v8/listers/volumesnapshot/v1"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	volumehelpers "k8s.io/component-helpers/storage/volume"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/kube"
	"github.com/toposnap/toposnap/internal/topology"
)

// Config wires a Controller.
type Config struct {
	DriverName       string
	NodeName         string
	NodeSegment      topology.Segment
	Timeout          time.Duration
	CommonController bool
	Snapshots        snapshotclient.Interface
	// Client reads claims and PVs a routed cache lacks.
	Client   kubernetes.Interface
	CSI      csi.ControllerClient
	Recorder record.EventRecorder
	// Registry receives the snapshotter's metrics; nil: not exported.
	Registry *prometheus.Registry
	// Routed: the informers hold only what the central controller routed
	// to this node or its zone; a source claim or PV outside them is read
	// from the API server. A routed node does not bind VolumeSnapshots:
	// the central controller does (Binder). With CommonController it still
	// deletes its orphaned contents.
	Routed bool
	// Binder: the central controller's part, binding every VolumeSnapshot
	// of the driver from whole-cluster caches; no content is cut, and no
	// CSI driver or Node is needed.
	Binder bool
}

// Controller runs both halves for one node.
type Controller struct {
	cfg          Config
	claims       corelisters.PersistentVolumeClaimLister
	volumes      corelisters.PersistentVolumeLister
	nodes        corelisters.NodeLister
	snapLister   snapshotlisters.VolumeSnapshotLister
	contents     snapshotlisters.VolumeSnapshotContentLister
	classes      snapshotlisters.VolumeSnapshotClassLister
	snapQueue    workqueue.TypedRateLimitingInterface[string]
	contentQueue workqueue.TypedRateLimitingInterface[string]
	synced       []cache.InformerSynced
	metrics      *metrics
}

// NewController registers informers; start the factories, then Run.
func NewController(cfg Config, inf kube.Informers) *Controller {
	c := &Controller{
		cfg:          cfg,
		metrics:      newMetrics(cfg.Registry),
		claims:       inf.Routed.Core().V1().PersistentVolumeClaims().Lister(),
		volumes:      inf.Routed.Core().V1().PersistentVolumes().Lister(),
		snapLister:   inf.RoutedSnaps.Snapshot().V1().VolumeSnapshots().Lister(),
		contents:     inf.RoutedSnaps.Snapshot().V1().VolumeSnapshotContents().Lister(),
		classes:      inf.ClusterSnaps.Snapshot().V1().VolumeSnapshotClasses().Lister(),
		snapQueue:    kube.NewQueue("snapshots"),
		contentQueue: kube.NewQueue("contents"),
	}
	snapInformer := inf.RoutedSnaps.Snapshot().V1().VolumeSnapshots().Informer()
	contentInformer := inf.RoutedSnaps.Snapshot().V1().VolumeSnapshotContents().Informer()
	if c.binds() {
		_, _ = snapInformer.AddEventHandler(handler(c.snapQueue))
	}
	// A snapshot gone is its content's business: an orphan is deleted. A
	// snapshot being deleted lets its content go.
	_, _ = snapInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj any) {
			if snap, ok := obj.(*snapv1.VolumeSnapshot); ok && snap.DeletionTimestamp != nil {
				c.contentQueue.Add(boundContentName(snap))
			}
		},
		DeleteFunc: func(obj any) {
			if tombstone, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tombstone.Obj
			}
			if snap, ok := obj.(*snapv1.VolumeSnapshot); ok {
				c.contentQueue.Add(boundContentName(snap))
			}
		},
	})
	_, _ = contentInformer.AddEventHandler(handler(c.contentQueue))
	// A content's progress is its snapshot's progress.
	_, _ = contentInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj any) {
			if content, ok := obj.(*snapv1.VolumeSnapshotContent); ok && c.binds() {
				c.snapQueue.Add(content.Spec.VolumeSnapshotRef.Namespace + "/" + content.Spec.VolumeSnapshotRef.Name)
			}
		},
		DeleteFunc: func(obj any) {
			if content, ok := obj.(*snapv1.VolumeSnapshotContent); ok && c.binds() {
				c.snapQueue.Add(content.Spec.VolumeSnapshotRef.Namespace + "/" + content.Spec.VolumeSnapshotRef.Name)
			}
		},
	})
	c.synced = []cache.InformerSynced{
		snapInformer.HasSynced, contentInformer.HasSynced,
		inf.ClusterSnaps.Snapshot().V1().VolumeSnapshotClasses().Informer().HasSynced,
		inf.Routed.Core().V1().PersistentVolumeClaims().Informer().HasSynced,
		inf.Routed.Core().V1().PersistentVolumes().Informer().HasSynced,
	}
	if cfg.Binder {
		return c // the central caches: no Node, no sizes to report per node
	}
	nodeInformer := inf.Self.Core().V1().Nodes().Informer()
	c.nodes = inf.Self.Core().V1().Nodes().Lister()
	c.synced = append(c.synced, nodeInformer.HasSynced)
	kube.RegisterCacheSizes(cfg.Registry, "toposnap_snapshotter_cached_objects", map[string]cache.Store{
		"persistentvolumeclaims": inf.Routed.Core().V1().PersistentVolumeClaims().Informer().GetStore(),
		"persistentvolumes":      inf.Routed.Core().V1().PersistentVolumes().Informer().GetStore(),
		"volumesnapshots":        snapInformer.GetStore(), "volumesnapshotcontents": contentInformer.GetStore(),
		"nodes": nodeInformer.GetStore(),
	})
	return c
}

// binds says whether this controller binds VolumeSnapshots: the central
// binder, or an unrouted node's common half. Nothing else fills or drains
// the snapshot queue (a routed node's would only grow).
func (c *Controller) binds() bool {
	return c.cfg.Binder || c.cfg.CommonController && !c.cfg.Routed
}

func handler(queue workqueue.TypedRateLimitingInterface[string]) cache.ResourceEventHandlerFuncs {
	add := func(obj any) {
		key, err := cache.MetaNamespaceKeyFunc(obj)
		if err != nil {
			utilruntime.HandleError(err)
			return
		}
		queue.Add(key)
	}
	return cache.ResourceEventHandlerFuncs{AddFunc: add, UpdateFunc: func(_, obj any) { add(obj) }}
}

// Run processes snapshots and contents until ctx ends.
func (c *Controller) Run(ctx context.Context, workers int) error {
	defer c.snapQueue.ShutDown()
	defer c.contentQueue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return errors.New("informer caches did not sync")
	}
	if c.cfg.Binder {
		klog.InfoS("Binding VolumeSnapshots", "driver", c.cfg.DriverName)
		for range workers {
			go wait.UntilWithContext(ctx, func(ctx context.Context) { kube.Work(ctx, c.snapQueue, c.syncSnapshot) }, time.Second)
		}
		<-ctx.Done()
		return nil
	}
	klog.InfoS("Snapshotter running", "driver", c.cfg.DriverName, "node", c.cfg.NodeName, "commonController", c.cfg.CommonController, "routed", c.cfg.Routed)
	for range workers {
		go wait.UntilWithContext(ctx, func(ctx context.Context) { kube.Work(ctx, c.contentQueue, c.syncContent) }, time.Second)
		if c.binds() {
			go wait.UntilWithContext(ctx, func(ctx context.Context) { kube.Work(ctx, c.snapQueue, c.syncSnapshot) }, time.Second)
		}
	}
	<-ctx.Done()
	return nil
}

// reachesHandle reports whether this node reaches the PV with that volume handle.
func (c *Controller) reachesHandle(handle string) (*corev1.PersistentVolume, bool) {
	pvs, err := c.volumes.List(labels.Everything())
	if err != nil {
		return nil, false
	}
	for _, pv := range pvs {
		if pv.Spec.CSI != nil && pv.Spec.CSI.Driver == c.cfg.DriverName && pv.Spec.CSI.VolumeHandle == handle {
			return pv, volumehelpers.CheckNodeAffinity(pv, c.nodeLabels()) == nil
		}
	}
	return nil, false
}

func (c *Controller) nodeLabels() map[string]string {
	labels := map[string]string{}
	if c.nodes == nil {
		return labels // the central binder is on no node
	}
	if node, err := c.nodes.Get(c.cfg.NodeName); err == nil {
		for k, v := range node.Labels {
			labels[k] = v
		}
	}
	for k, v := range c.cfg.NodeSegment {
		labels[k] = v
	}
	return labels
}

// ownsContent says whether this node acts on a content: where its snapshot
// lives (the accessible-topology annotation, stamped before the first cut),
// else where its source volume is, else whether this node's driver holds
// its handle. The source PV may be long gone when a content is deleted, so
// the annotation, not the PV, is what decides once it is there.
func (c *Controller) ownsContent(ctx context.Context, content *snapv1.VolumeSnapshotContent) bool {
	if annotation := content.Annotations[topology.AnnAccessibleTopology]; annotation != "" {
		if segments, err := topology.DecodeSegments(annotation); err == nil && len(segments) > 0 {
			return topology.ReachableFrom(c.nodeLabels(), segments)
		}
	}
	if content.Spec.Source.VolumeHandle != nil {
		if pv, ok := c.reachesHandle(*content.Spec.Source.VolumeHandle); pv != nil {
			return ok
		}
	}
	if handle := contentHandle(content); handle != "" {
		return c.reachesSnapshot(ctx, handle)
	}
	return false
}

// neverCut: a dynamic content without a handle or location whose source PV
// is gone was never sent to a driver (the location is stamped before the
// first cut), so any node may let it go once it is deleted. The release is
// an update at the content's resourceVersion: if the owner stamped it
// meanwhile, the release fails and the owner's view wins.
func (c *Controller) neverCut(content *snapv1.VolumeSnapshotContent) bool {
	if content.Spec.Source.VolumeHandle == nil || contentHandle(content) != "" || content.Annotations[topology.AnnAccessibleTopology] != "" {
		return false
	}
	pv, _ := c.reachesHandle(*content.Spec.Source.VolumeHandle)
	return pv == nil
}

// contentHandle is the backend snapshot a content names, if known yet.
func contentHandle(content *snapv1.VolumeSnapshotContent) string {
	if content.Status != nil && content.Status.SnapshotHandle != nil {
		return *content.Status.SnapshotHandle
	}
	return ptr.Deref(content.Spec.Source.SnapshotHandle, "")
}

// syncContent is the sidecar half: cut, poll and delete backend snapshots.
func (c *Controller) syncContent(ctx context.Context, name string) error {
	content, err := c.contents.Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if content.Spec.Driver != c.cfg.DriverName {
		return nil
	}
	if content.DeletionTimestamp != nil && c.neverCut(content) {
		return c.releaseContent(ctx, content, "")
	}
	if !c.ownsContent(ctx, content) {
		return nil // another node's snapshotter owns it
	}
	handle := contentHandle(content)
	if content.DeletionTimestamp != nil {
		unused, err := c.unusedContent(ctx, content)
		switch {
		case err != nil:
			return err
		case unused:
			return c.deleteContent(ctx, content, handle)
		case !slices.Contains(content.Finalizers, FinalizerContentBound):
			return nil // nothing of ours holds it
		}
		c.metrics.deletedKept.Inc()
		klog.V(2).InfoS("Deleted content kept: its VolumeSnapshot uses it", "content", content.Name,
			"snapshot", klog.KRef(content.Spec.VolumeSnapshotRef.Namespace, content.Spec.VolumeSnapshotRef.Name))
		// Deleted by hand while its VolumeSnapshot lives: as upstream, it
		// stays intact (a cut in flight finishes) until that is deleted.
	} else if deleted, err := c.deleteOrphan(ctx, content); deleted || err != nil {
		return err // its deletion brings it back
	}
	if content.Status != nil && ptr.Deref(content.Status.ReadyToUse, false) {
		return nil
	}
	if content.Spec.Source.VolumeHandle != nil && content.Spec.VolumeSnapshotRef.UID == "" {
		// Its CSI name would be "snapshot-", shared by every such content.
		return c.contentRefused(ctx, content, fmt.Sprintf("VolumeSnapshotContent %s has no spec.volumeSnapshotRef.uid: "+
			"a dynamic snapshot's content is made by the snapshot controller for one VolumeSnapshot, not by hand", content.Name))
	}
	unstamped := content.Spec.Source.VolumeHandle != nil && content.Annotations[topology.AnnAccessibleTopology] == ""
	if !slices.Contains(content.Finalizers, FinalizerContentBound) || unstamped {
		// Pre-provisioned contents come without the finalizer; it guards the
		// backend snapshot. The location is stamped before the first cut, so
		// whoever deletes the content later knows which node holds it.
		if content, err = c.stampContent(ctx, content); err != nil {
			return err
		}
	}
	var snapshot *csi.Snapshot
	callCtx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	if content.Spec.Source.VolumeHandle != nil {
		class := c.snapshotClass(content.Spec.VolumeSnapshotClassName)
		resp, err := c.cfg.CSI.CreateSnapshot(callCtx, &csi.CreateSnapshotRequest{
			Name: SnapshotName(content), SourceVolumeId: *content.Spec.Source.VolumeHandle, Parameters: SnapshotParameters(class),
		})
		c.metrics.creates.WithLabelValues(status.Code(err).String()).Inc()
		if err != nil {
			return c.contentFailed(ctx, content, fmt.Sprintf("cut snapshot: %s", status.Convert(err).Message()), err)
		}
		snapshot = resp.GetSnapshot()
	} else {
		resp, err := c.cfg.CSI.GetSnapshot(callCtx, &csi.GetSnapshotRequest{SnapshotId: handle})
		if err != nil {
			return c.contentFailed(ctx, content, fmt.Sprintf("read pre-provisioned snapshot %s: %s", handle, status.Convert(err).Message()), err)
		}
		snapshot = resp.GetSnapshot()
	}
	if err := c.recordSnapshot(ctx, content, snapshot); err != nil {
		return err
	}
	if !snapshot.GetReadyToUse() {
		return kube.ErrRequeue
	}
	return nil
}

// stampContent adds the bound-protection finalizer and, for a dynamic
// content, where its snapshot will live (its source volume's segments),
// in one update at the content's resourceVersion.
func (c *Controller) stampContent(ctx context.Context, content *snapv1.VolumeSnapshotContent) (*snapv1.VolumeSnapshotContent, error) {
	updated := content.DeepCopy()
	if !slices.Contains(updated.Finalizers, FinalizerContentBound) {
		updated.Finalizers = append(updated.Finalizers, FinalizerContentBound)
	}
	if content.Spec.Source.VolumeHandle != nil && updated.Annotations[topology.AnnAccessibleTopology] == "" {
		pv, _ := c.reachesHandle(*content.Spec.Source.VolumeHandle)
		if pv == nil {
			return nil, fmt.Errorf("content %s: source volume %s has no PV", content.Name, *content.Spec.Source.VolumeHandle)
		}
		annotation, err := topology.EncodeSegments(SegmentsOfAffinity(pv))
		if err != nil {
			return nil, err
		}
		if updated.Annotations == nil {
			updated.Annotations = map[string]string{}
		}
		updated.Annotations[topology.AnnAccessibleTopology] = annotation
	}
	stamped, err := c.cfg.Snapshots.SnapshotV1().VolumeSnapshotContents().Update(ctx, updated, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("stamp content %s: %w", content.Name, err)
	}
	return stamped, nil
}

// bindsFor says whether this binder binds and releases the snapshot of a
// content: the central binder every one of the driver's, a node's binder
// those of contents its node owns.
func (c *Controller) bindsFor(ctx context.Context, content *snapv1.VolumeSnapshotContent) bool {
	return c.cfg.Binder || c.ownsContent(ctx, content)
}

// reachesSnapshot reports whether this node's driver holds a snapshot: it
// answers NOT_FOUND for one in another node's pool. Without a driver (the
// central binder) nothing is reached.
func (c *Controller) reachesSnapshot(ctx context.Context, handle string) bool {
	if c.cfg.CSI == nil {
		return false
	}
	callCtx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	_, err := c.cfg.CSI.GetSnapshot(callCtx, &csi.GetSnapshotRequest{SnapshotId: handle})
	return status.Code(err) != codes.NotFound
}

// recordSnapshot stores the handle, readiness and topology on the content.
func (c *Controller) recordSnapshot(ctx context.Context, content *snapv1.VolumeSnapshotContent, snapshot *csi.Snapshot) error {
	annotation, err := TopologyAnnotation(snapshot)
	if err != nil {
		return err
	}
	// An answer without a location keeps the stamped one.
	if len(snapshot.GetAccessibleTopology()) > 0 && content.Annotations[topology.AnnAccessibleTopology] != annotation {
		updated := content.DeepCopy()
		if updated.Annotations == nil {
			updated.Annotations = map[string]string{}
		}
		updated.Annotations[topology.AnnAccessibleTopology] = annotation
		content, err = c.cfg.Snapshots.SnapshotV1().VolumeSnapshotContents().Update(ctx, updated, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("annotate content %s: %w", updated.Name, err)
		}
	}
	updated := content.DeepCopy()
	updated.Status = ContentStatus(snapshot)
	if _, err := c.cfg.Snapshots.SnapshotV1().VolumeSnapshotContents().UpdateStatus(ctx, updated, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status of content %s: %w", content.Name, err)
	}
	if snapshot.GetReadyToUse() {
		klog.InfoS("Snapshot ready", "content", content.Name, "handle", snapshot.GetSnapshotId())
		c.metrics.ready.Observe(time.Since(content.CreationTimestamp.Time).Seconds())
	}
	return nil
}

func (c *Controller) contentFailed(ctx context.Context, content *snapv1.VolumeSnapshotContent, message string, cause error) error {
	c.cfg.Recorder.Event(content, corev1.EventTypeWarning, "SnapshotCreationFailed", message)
	updated := content.DeepCopy()
	if updated.Status == nil {
		updated.Status = &snapv1.VolumeSnapshotContentStatus{}
	}
	updated.Status.Error = SnapshotError(message)
	if _, err := c.cfg.Snapshots.SnapshotV1().VolumeSnapshotContents().UpdateStatus(ctx, updated, metav1.UpdateOptions{}); err != nil {
		klog.V(2).InfoS("Could not record snapshot error", "content", content.Name, "err", err)
	}
	return fmt.Errorf("content %s: %w", content.Name, cause)
}

// contentRefused reports on a content why it is not acted on; it stays so
// until edited (which brings it back), so it is not retried.
func (c *Controller) contentRefused(ctx context.Context, content *snapv1.VolumeSnapshotContent, message string) error {
	c.cfg.Recorder.Event(content, corev1.EventTypeWarning, "SnapshotContentRefused", message)
	if content.Status != nil && content.Status.Error != nil && ptr.Deref(content.Status.Error.Message, "") == message {
		return nil
	}
	updated := content.DeepCopy()
	if updated.Status == nil {
		updated.Status = &snapv1.VolumeSnapshotContentStatus{}
	}
	updated.Status.Error = SnapshotError(message)
	if _, err := c.cfg.Snapshots.SnapshotV1().VolumeSnapshotContents().UpdateStatus(ctx, updated, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("record refusal on content %s: %w", content.Name, err)
	}
	return nil
}

// unusedContent is upstream's shouldDelete for a deleted content, made
// stricter: its backend snapshot may go (policy Delete) or be let go
// (Retain) only when no VolumeSnapshot uses it any more: one never bound, or
// one whose VolumeSnapshot, read from the API server, is gone, replaced by
// another of its name, or being deleted with the binder's being-deleted
// mark on the content and no restore reading it (upstream's binder marks
// only then). The mark alone is never enough: any node's ServiceAccount may
// annotate any content, and a re-imported content may carry a stale one.
func (c *Controller) unusedContent(ctx context.Context, content *snapv1.VolumeSnapshotContent) (bool, error) {
	ref := content.Spec.VolumeSnapshotRef
	if ref.UID == "" {
		// Never bound: a pre-provisioned content not imported yet, or a
		// hand-made dynamic one refused for its missing uid. The binder
		// binds no content being deleted; the decision is fenced in
		// deleteContent against one bound meanwhile.
		return true, nil
	}
	// Live in the cache: no need to ask, unless the binder marked the
	// content because it saw the snapshot being deleted (the mark and the
	// snapshot's deletion reach this cache in either order).
	if cached, err := c.snapLister.VolumeSnapshots(ref.Namespace).Get(ref.Name); err == nil && cached.UID == ref.UID && cached.DeletionTimestamp == nil &&
		!metav1.HasAnnotation(content.ObjectMeta, AnnSnapshotBeingDeleted) {
		return false, nil
	}
	snap, err := c.cfg.Snapshots.SnapshotV1().VolumeSnapshots(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("read VolumeSnapshot %s/%s of deleted content %s: %w", ref.Namespace, ref.Name, content.Name, err)
	case snap.UID != ref.UID:
		return true, nil
	}
	return snap.DeletionTimestamp != nil && metav1.HasAnnotation(content.ObjectMeta, AnnSnapshotBeingDeleted) &&
		!slices.Contains(snap.Finalizers, FinalizerRestoreSource), nil
}

// deleteContent deletes the backend snapshot (policy Delete), then releases
// the content. A snapshot deleted mid-copy is deleted too: the driver cancels
// the copy and removes what it had.
func (c *Controller) deleteContent(ctx context.Context, content *snapv1.VolumeSnapshotContent, handle string) error {
	if !slices.Contains(content.Finalizers, FinalizerContentBound) {
		return nil
	}
	if content.Spec.DeletionPolicy == snapv1.VolumeSnapshotContentDelete {
		// Recorded at the resourceVersion decided on: nothing is deleted if
		// the content changed since (bound meanwhile, say).
		fenced := content.DeepCopy()
		metav1.SetMetaDataAnnotation(&fenced.ObjectMeta, AnnDeletingSnapshot, handle)
		fenced, err := c.cfg.Snapshots.SnapshotV1().VolumeSnapshotContents().Update(ctx, fenced, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("record deletion of content %s: %w", content.Name, err)
		}
		content = fenced
		// No uid: its CSI name would be any such content's, never look it up.
		if handle == "" && content.Spec.Source.VolumeHandle != nil && content.Spec.VolumeSnapshotRef.UID != "" {
			// Deleted before the first answer came back: cut-or-find by name,
			// so the handle is known and nothing is left behind. NOT_FOUND:
			// neither the source nor a snapshot of that name is here.
			callCtx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
			resp, err := c.cfg.CSI.CreateSnapshot(callCtx, &csi.CreateSnapshotRequest{Name: SnapshotName(content), SourceVolumeId: *content.Spec.Source.VolumeHandle})
			cancel()
			switch {
			case err == nil:
				handle = resp.GetSnapshot().GetSnapshotId()
			case status.Code(err) != codes.NotFound:
				return fmt.Errorf("find snapshot of deleted content %s: %w", content.Name, err)
			}
		}
		if handle != "" {
			callCtx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
			_, err := c.cfg.CSI.DeleteSnapshot(callCtx, &csi.DeleteSnapshotRequest{SnapshotId: handle})
			cancel()
			if err != nil {
				c.cfg.Recorder.Eventf(content, corev1.EventTypeWarning, "SnapshotDeleteFailed", "delete snapshot %s: %s", handle, status.Convert(err).Message())
				return fmt.Errorf("delete snapshot %s: %w", handle, err)
			}
		}
	}
	return c.releaseContent(ctx, content, handle)
}

// releaseContent removes the content's bound-protection finalizer, at the
// resourceVersion the decision was made on.
func (c *Controller) releaseContent(ctx context.Context, content *snapv1.VolumeSnapshotContent, handle string) error {
	if !slices.Contains(content.Finalizers, FinalizerContentBound) {
		return nil
	}
	updated := content.DeepCopy()
	updated.Finalizers = slices.DeleteFunc(updated.Finalizers, func(f string) bool { return f == FinalizerContentBound })
	if _, err := c.cfg.Snapshots.SnapshotV1().VolumeSnapshotContents().Update(ctx, updated, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("release content %s: %w", content.Name, err)
	}
	klog.InfoS("Content released", "content", content.Name, "handle", handle, "policy", content.Spec.DeletionPolicy)
	return nil
}

func (c *Controller) snapshotClass(name *string) *snapv1.VolumeSnapshotClass {
	if name == nil {
		return nil
	}
	class, err := c.classes.Get(*name)
	if err != nil {
		return nil
	}
	return class
}

// syncSnapshot is the common half: bind a VolumeSnapshot to its content and
// mirror the content's status.
func (c *Controller) syncSnapshot(ctx context.Context, key string) error {
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	snap, err := c.snapLister.VolumeSnapshots(namespace).Get(name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if snap.DeletionTimestamp != nil {
		return c.syncDeletedSnapshot(ctx, snap)
	}
	source := snap.Spec.Source.PersistentVolumeClaimName
	if source == nil {
		return c.bindPreProvisioned(ctx, snap, ptr.Deref(snap.Spec.Source.VolumeSnapshotContentName, ""))
	}
	claim, err := c.getClaim(ctx, namespace, *source)
	if err != nil {
		if content, err := c.contents.Get(ContentName(snap)); err == nil {
			// Cut already: the source may go, the snapshot stays.
			return c.mirrorStatus(ctx, snap, content)
		}
		if snap.Status != nil && snap.Status.BoundVolumeSnapshotContentName != nil {
			return c.contentMissing(ctx, snap)
		}
		return c.snapshotFailed(ctx, snap, fmt.Sprintf("source PersistentVolumeClaim %s/%s not found", namespace, *source))
	}
	if claim.Spec.VolumeName == "" {
		return c.snapshotFailed(ctx, snap, fmt.Sprintf("source PersistentVolumeClaim %s/%s is not bound yet", namespace, *source))
	}
	pv, err := c.getPV(ctx, claim.Spec.VolumeName)
	if err != nil || pv.Spec.CSI == nil || pv.Spec.CSI.Driver != c.cfg.DriverName {
		return nil // not ours
	}
	if !c.cfg.Binder && volumehelpers.CheckNodeAffinity(pv, c.nodeLabels()) != nil {
		return nil // the snapshotter of a node that reaches it handles it
	}
	if snap, err = c.addSnapshotFinalizer(ctx, snap); err != nil {
		return err
	}
	content, err := c.contents.Get(ContentName(snap))
	if apierrors.IsNotFound(err) && snap.Status != nil && snap.Status.BoundVolumeSnapshotContentName != nil {
		return c.contentMissing(ctx, snap)
	}
	if apierrors.IsNotFound(err) {
		class, err := c.classFor(snap)
		if err != nil {
			return c.snapshotFailed(ctx, snap, err.Error())
		}
		content = BuildContent(snap, class, pv.Spec.CSI.VolumeHandle)
		if _, err := c.cfg.Snapshots.SnapshotV1().VolumeSnapshotContents().Create(ctx, content, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create content for %s: %w", key, err)
		}
		c.cfg.Recorder.Eventf(snap, corev1.EventTypeNormal, "SnapshotCreated", "Created VolumeSnapshotContent %s for PVC %s", content.Name, *source)
		return nil // the content's events bring the snapshot back
	} else if err != nil {
		return err
	}
	return c.mirrorStatus(ctx, snap, content)
}

// contentMissing fails a snapshot whose bound content is gone (deleted past
// its finalizer), as upstream does. It is never cut again under the same
// name: that would re-point a snapshot taken then at today's data. A cache
// miss is confirmed by a read from the API server.
func (c *Controller) contentMissing(ctx context.Context, snap *snapv1.VolumeSnapshot) error {
	name := *snap.Status.BoundVolumeSnapshotContentName
	_, err := c.cfg.Snapshots.SnapshotV1().VolumeSnapshotContents().Get(ctx, name, metav1.GetOptions{})
	switch {
	case err == nil:
		return kube.ErrRequeue // the cache is behind
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("read content %s of %s/%s: %w", name, snap.Namespace, snap.Name, err)
	}
	return c.snapshotFailed(ctx, snap, fmt.Sprintf("VolumeSnapshotContent %s is missing", name))
}

// syncDeletedSnapshot deletes a deleted snapshot's content (policy Delete)
// and then lets the snapshot go, but not while a restore still reads from
// it (toposnap's restore-source-protection, or upstream's
// volumesnapshot-as-source-protection: the provisioner removes them once no
// pending claim uses the snapshot).
func (c *Controller) syncDeletedSnapshot(ctx context.Context, snap *snapv1.VolumeSnapshot) error {
	if !slices.Contains(snap.Finalizers, FinalizerSnapshotBound) {
		return nil
	}
	if slices.Contains(snap.Finalizers, FinalizerSnapshotAsSource) || slices.Contains(snap.Finalizers, FinalizerRestoreSource) {
		return kube.ErrRequeue // a restore still reads it
	}
	content, err := c.boundContent(ctx, snap)
	switch {
	case err != nil:
		return err
	case content != nil && !c.bindsFor(ctx, content) && !c.neverCut(content):
		return nil // the node holding the snapshot handles it
	}
	return c.deleteSnapshot(ctx, snap, content)
}

// boundContent is the content bound to snap, nil when there is none. Letting
// a snapshot go without its content leaks the backend snapshot for good, so
// "none" is never the cache's word alone: a cache misses contents created a
// moment ago, or all of them while it lists again after an API server
// restart. A miss is confirmed by a read from the API server.
func (c *Controller) boundContent(ctx context.Context, snap *snapv1.VolumeSnapshot) (*snapv1.VolumeSnapshotContent, error) {
	name := boundContentName(snap)
	content, err := c.contents.Get(name)
	if err == nil && boundTo(content, snap) {
		return content, nil
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, err
	}
	content, err = c.cfg.Snapshots.SnapshotV1().VolumeSnapshotContents().Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("read content %s of %s/%s: %w", name, snap.Namespace, snap.Name, err)
	case !boundTo(content, snap):
		return nil, nil // not this snapshot's: never delete another's content
	}
	return content, nil
}

// snapshotGone reports whether the VolumeSnapshot a bound content names is
// gone (deleted, or replaced by another of the same name), confirmed by a
// read from the API server: the cache alone may simply not have it yet.
func (c *Controller) snapshotGone(ctx context.Context, content *snapv1.VolumeSnapshotContent) (bool, error) {
	ref := content.Spec.VolumeSnapshotRef
	if ref.UID == "" {
		return false, nil // a pre-provisioned content not bound yet
	}
	if snap, err := c.snapLister.VolumeSnapshots(ref.Namespace).Get(ref.Name); err == nil && snap.UID == ref.UID {
		return false, nil
	}
	snap, err := c.cfg.Snapshots.SnapshotV1().VolumeSnapshots(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("read VolumeSnapshot %s/%s of content %s: %w", ref.Namespace, ref.Name, content.Name, err)
	}
	return snap.UID != ref.UID, nil
}

// deleteOrphan deletes a Delete-policy content whose VolumeSnapshot is gone
// (released without it by a crash or an older version, or deleted by a
// tool that bypassed the finalizer), as upstream's common controller does:
// its finalizer then deletes the backend snapshot.
func (c *Controller) deleteOrphan(ctx context.Context, content *snapv1.VolumeSnapshotContent) (bool, error) {
	if !c.cfg.CommonController || content.Spec.DeletionPolicy != snapv1.VolumeSnapshotContentDelete {
		return false, nil
	}
	gone, err := c.snapshotGone(ctx, content)
	if err != nil || !gone {
		return false, err
	}
	ref := content.Spec.VolumeSnapshotRef
	err = c.cfg.Snapshots.SnapshotV1().VolumeSnapshotContents().Delete(ctx, content.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &content.UID}})
	if err != nil && !apierrors.IsNotFound(err) {
		return false, fmt.Errorf("delete content %s of deleted VolumeSnapshot %s/%s: %w", content.Name, ref.Namespace, ref.Name, err)
	}
	c.cfg.Recorder.Eventf(content, corev1.EventTypeNormal, "SnapshotGone", "VolumeSnapshot %s/%s (uid %s) is gone: deleting this content and its snapshot (deletionPolicy Delete)",
		ref.Namespace, ref.Name, ref.UID)
	return true, nil
}

// boundContentName is the content a snapshot uses: the one it is bound to,
// the pre-provisioned one it names, or the one cut for it.
func boundContentName(snap *snapv1.VolumeSnapshot) string {
	if snap.Status != nil && snap.Status.BoundVolumeSnapshotContentName != nil {
		return *snap.Status.BoundVolumeSnapshotContentName
	}
	if name := ptr.Deref(snap.Spec.Source.VolumeSnapshotContentName, ""); name != "" {
		return name
	}
	return ContentName(snap)
}

// boundTo reports whether a content's volumeSnapshotRef names this very
// snapshot (namespace, name and uid).
func boundTo(content *snapv1.VolumeSnapshotContent, snap *snapv1.VolumeSnapshot) bool {
	ref := content.Spec.VolumeSnapshotRef
	return ref.Namespace == snap.Namespace && ref.Name == snap.Name && ref.UID == snap.UID
}

// bindPreProvisioned binds a snapshot to the content it names, as upstream
// does: only a content whose volumeSnapshotRef names this snapshot's
// namespace and name (a content is cluster-wide; a snapshot is one tenant's)
// and whose uid is empty (then it is filled in) or this snapshot's.
func (c *Controller) bindPreProvisioned(ctx context.Context, snap *snapv1.VolumeSnapshot, contentName string) error {
	if contentName == "" {
		return nil
	}
	content, err := c.contents.Get(contentName)
	if apierrors.IsNotFound(err) {
		return c.snapshotFailed(ctx, snap, fmt.Sprintf("VolumeSnapshotContent %s not found", contentName))
	}
	if err != nil {
		return err
	}
	if content.Spec.Driver != c.cfg.DriverName || !c.bindsFor(ctx, content) {
		return nil // another driver's, or another node's
	}
	ref := content.Spec.VolumeSnapshotRef
	if ref.Namespace != snap.Namespace || ref.Name != snap.Name || (ref.UID != "" && ref.UID != snap.UID) {
		return c.snapshotFailed(ctx, snap, fmt.Sprintf("VolumeSnapshotContent %s is for VolumeSnapshot %s/%s (uid %q), not for this one: set its spec.volumeSnapshotRef to name this snapshot",
			contentName, ref.Namespace, ref.Name, ref.UID))
	}
	if content.Spec.Source.SnapshotHandle == nil {
		return c.snapshotFailed(ctx, snap, fmt.Sprintf("VolumeSnapshotContent %s is a dynamic snapshot's content, not a pre-provisioned one", contentName))
	}
	if ref.UID == "" && content.DeletionTimestamp != nil {
		// Its backend snapshot may be going this very moment.
		return c.snapshotFailed(ctx, snap, fmt.Sprintf("VolumeSnapshotContent %s is being deleted: it is not bound; import the snapshot under a new content", contentName))
	}
	if ref.UID == "" || metav1.HasAnnotation(content.ObjectMeta, AnnSnapshotBeingDeleted) {
		// A content imported again may carry the mark of the VolumeSnapshot
		// it outlived: it goes in the update that binds.
		updated := content.DeepCopy()
		updated.Spec.VolumeSnapshotRef.UID = snap.UID
		delete(updated.Annotations, AnnSnapshotBeingDeleted)
		if content, err = c.cfg.Snapshots.SnapshotV1().VolumeSnapshotContents().Update(ctx, updated, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("bind content %s to %s/%s: %w", contentName, snap.Namespace, snap.Name, err)
		}
	}
	if snap, err = c.addSnapshotFinalizer(ctx, snap); err != nil {
		return err
	}
	return c.mirrorStatus(ctx, snap, content)
}

// addSnapshotFinalizer makes sure the snapshot cannot go before its content
// is handled.
func (c *Controller) addSnapshotFinalizer(ctx context.Context, snap *snapv1.VolumeSnapshot) (*snapv1.VolumeSnapshot, error) {
	if slices.Contains(snap.Finalizers, FinalizerSnapshotBound) {
		return snap, nil
	}
	updated := snap.DeepCopy()
	updated.Finalizers = append(updated.Finalizers, FinalizerSnapshotBound)
	updated, err := c.cfg.Snapshots.SnapshotV1().VolumeSnapshots(snap.Namespace).Update(ctx, updated, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("add finalizer to %s/%s: %w", snap.Namespace, snap.Name, err)
	}
	return updated, nil
}

func (c *Controller) classFor(snap *snapv1.VolumeSnapshot) (*snapv1.VolumeSnapshotClass, error) {
	if snap.Spec.VolumeSnapshotClassName != nil {
		class, err := c.classes.Get(*snap.Spec.VolumeSnapshotClassName)
		if err != nil {
			return nil, fmt.Errorf("VolumeSnapshotClass %s not found", *snap.Spec.VolumeSnapshotClassName)
		}
		if class.Driver != c.cfg.DriverName {
			return nil, fmt.Errorf("VolumeSnapshotClass %s is for driver %s, but the source volume is a %s volume", class.Name, class.Driver, c.cfg.DriverName)
		}
		return class, nil
	}
	classes, err := c.classes.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	return DefaultClass(classes, c.cfg.DriverName)
}

// mirrorStatus copies the bound content's status onto the snapshot.
func (c *Controller) mirrorStatus(ctx context.Context, snap *snapv1.VolumeSnapshot, content *snapv1.VolumeSnapshotContent) error {
	if !boundTo(content, snap) {
		return c.snapshotFailed(ctx, snap, fmt.Sprintf("VolumeSnapshotContent %s is bound to another VolumeSnapshot", content.Name))
	}
	want := &snapv1.VolumeSnapshotStatus{BoundVolumeSnapshotContentName: ptr.To(content.Name)}
	if s := content.Status; s != nil {
		want.ReadyToUse = s.ReadyToUse
		want.Error = s.Error
		if s.RestoreSize != nil {
			want.RestoreSize = resource.NewQuantity(*s.RestoreSize, resource.BinarySI)
		}
		if s.CreationTime != nil {
			t := metav1.NewTime(time.Unix(0, *s.CreationTime))
			want.CreationTime = &t
		}
	}
	if snap.Status != nil && ptr.Deref(snap.Status.ReadyToUse, false) == ptr.Deref(want.ReadyToUse, false) &&
		ptr.Deref(snap.Status.BoundVolumeSnapshotContentName, "") == content.Name && (snap.Status.Error == nil) == (want.Error == nil) {
		return nil
	}
	updated := snap.DeepCopy()
	updated.Status = want
	if _, err := c.cfg.Snapshots.SnapshotV1().VolumeSnapshots(snap.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status of %s/%s: %w", snap.Namespace, snap.Name, err)
	}
	if ptr.Deref(want.ReadyToUse, false) {
		c.cfg.Recorder.Eventf(snap, corev1.EventTypeNormal, "SnapshotReady", "Snapshot %s/%s is ready to use", snap.Namespace, snap.Name)
	}
	return nil
}

func (c *Controller) snapshotFailed(ctx context.Context, snap *snapv1.VolumeSnapshot, message string) error {
	c.cfg.Recorder.Event(snap, corev1.EventTypeWarning, "SnapshotFailed", message)
	if snap.Status == nil || snap.Status.Error == nil || ptr.Deref(snap.Status.Error.Message, "") != message {
		updated := snap.DeepCopy()
		if updated.Status == nil {
			updated.Status = &snapv1.VolumeSnapshotStatus{}
		}
		updated.Status.ReadyToUse = ptr.To(false)
		updated.Status.Error = SnapshotError(message)
		if _, err := c.cfg.Snapshots.SnapshotV1().VolumeSnapshots(snap.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{}); err != nil {
			klog.V(2).InfoS("Could not record snapshot error", "snapshot", klog.KObj(snap), "err", err)
		}
	}
	return fmt.Errorf("%s/%s: %s", snap.Namespace, snap.Name, message)
}

// deleteSnapshot marks the content as its snapshot's being deleted (only
// then may the content half let its backend snapshot go), deletes it (its
// finalizer makes the content half delete the backend snapshot for policy
// Delete), waits for it to go, then releases the snapshot. content nil:
// none of this snapshot's exists.
func (c *Controller) deleteSnapshot(ctx context.Context, snap *snapv1.VolumeSnapshot, content *snapv1.VolumeSnapshotContent) error {
	if content != nil && !metav1.HasAnnotation(content.ObjectMeta, AnnSnapshotBeingDeleted) {
		// Whatever the policy, as upstream: a Retain content deleted by hand
		// meanwhile is then released.
		marked := content.DeepCopy()
		metav1.SetMetaDataAnnotation(&marked.ObjectMeta, AnnSnapshotBeingDeleted, "yes")
		var err error
		if content, err = c.cfg.Snapshots.SnapshotV1().VolumeSnapshotContents().Update(ctx, marked, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("mark content %s of deleted %s/%s: %w", marked.Name, snap.Namespace, snap.Name, err)
		}
	}
	if content != nil && content.Spec.DeletionPolicy == snapv1.VolumeSnapshotContentDelete {
		if content.DeletionTimestamp == nil {
			err := c.cfg.Snapshots.SnapshotV1().VolumeSnapshotContents().Delete(ctx, content.Name, metav1.DeleteOptions{
				Preconditions: &metav1.Preconditions{UID: &content.UID}})
			if err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("delete content %s: %w", content.Name, err)
			}
		}
		return kube.ErrRequeue
	}
	updated := snap.DeepCopy()
	updated.Finalizers = slices.DeleteFunc(updated.Finalizers, func(f string) bool { return f == FinalizerSnapshotBound })
	if _, err := c.cfg.Snapshots.SnapshotV1().VolumeSnapshots(snap.Namespace).Update(ctx, updated, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("release %s/%s: %w", snap.Namespace, snap.Name, err)
	}
	return nil
}

// getClaim reads a claim from the cache or, on a routed node whose cache
// may not have it yet (the central controller stamps a snapshot and its
// claim one after the other), from the API server.
func (c *Controller) getClaim(ctx context.Context, namespace, name string) (*corev1.PersistentVolumeClaim, error) {
	claim, err := c.claims.PersistentVolumeClaims(namespace).Get(name)
	if c.cfg.Routed && apierrors.IsNotFound(err) && c.cfg.Client != nil {
		return c.cfg.Client.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, name, metav1.GetOptions{})
	}
	return claim, err
}

// getPV is getClaim for PVs.
func (c *Controller) getPV(ctx context.Context, name string) (*corev1.PersistentVolume, error) {
	pv, err := c.volumes.Get(name)
	if c.cfg.Routed && apierrors.IsNotFound(err) && c.cfg.Client != nil {
		return c.cfg.Client.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{})
	}
	return pv, err
}
