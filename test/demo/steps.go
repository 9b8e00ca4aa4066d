package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/node"
)

const (
	ns        = "default"
	driver    = "csi.toposnap.io"
	snapGroup = "snapshot.storage.k8s.io"
	// snapshotClass is the chart's default VolumeSnapshotClass (deletionPolicy
	// Delete). The webhook allows one default per driver, so the demo uses it
	// rather than declaring its own.
	snapshotClass = "toposnap"
	extenderName  = "toposnap-extender"
)

type demo struct {
	*stage
	ctx context.Context
	// busybox is the image of every pod the demo runs.
	busybox string
	// checksum is the sha256 the writer pod printed of what it wrote.
	checksum string
}

// warnings collects the API server's warnings (the webhook's words).
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

// clientHearingWebhook is an admin client whose requests' warnings (the
// webhook's words) are collected, to be printed under what was created.
func (d *demo) clientHearingWebhook() (kubernetes.Interface, *warnings, error) {
	collected := &warnings{}
	config := rest.CopyConfig(d.cluster.RestConfig)
	config.WarningHandler = collected
	client, err := kubernetes.NewForConfig(config)
	return client, collected, err
}

func (w *warnings) say() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, text := range w.list {
		say("  webhook warning: %s", text)
	}
}

// createClass creates a StorageClass and prints what the webhook said.
func (d *demo) createClass(class *storagev1.StorageClass) (*storagev1.StorageClass, error) {
	client, collected, err := d.clientHearingWebhook()
	if err != nil {
		return nil, err
	}
	created, err := client.StorageV1().StorageClasses().Create(d.ctx, class, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create StorageClass %s: %w", class.Name, err)
	}
	say("StorageClass %s created; volumeBindingMode %s", created.Name, ptr.Deref(created.VolumeBindingMode, ""))
	collected.say()
	return created, nil
}

func affinity(pv *corev1.PersistentVolume) string {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return "none"
	}
	var parts []string
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, e := range term.MatchExpressions {
			parts = append(parts, fmt.Sprintf("%s in %v", e.Key, e.Values))
		}
	}
	return strings.Join(parts, ", ")
}

// onRealNode insists that a data step's pod runs where a kubelet runs.
func (d *demo) onRealNode(podName, nodeName string) error {
	if nodeName != d.node.Name {
		return fmt.Errorf("pod %s was scheduled on %s, a node without a kubelet; its volume should only be reachable from %s", podName, nodeName, d.node.Name)
	}
	return nil
}

func (d *demo) snapshot() error {
	// No volumeBindingMode: the webhook makes it WaitForFirstConsumer.
	if _, err := d.createClass(&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "topo-disk"}, Provisioner: driver,
		Parameters: map[string]string{"scope": "node"}}); err != nil {
		return err
	}
	if err := d.createClaim("disk-pvc", "topo-disk", "1Gi", nil); err != nil {
		return err
	}
	if _, err := d.createPod("writer", "disk-pvc", writerScript); err != nil {
		return err
	}
	pv, nodeName, err := d.waitPlaced("disk-pvc", "writer")
	if err != nil {
		return err
	}
	say("disk-pvc bound to %s (nodeAffinity %s)", pv.Name, affinity(pv))
	if err := d.onRealNode("writer", nodeName); err != nil {
		return err
	}
	if d.checksum, err = d.volumeFacts("writer"); err != nil {
		return err
	}
	say("writer pod on %s wrote %d MiB of random bytes to %s: sha256 %s", nodeName, dataBytes>>20, dataFile, d.checksum)
	return d.cutSnapshot("disk-snapshot", "disk-pvc")
}

func (d *demo) cutSnapshot(name, claim string) error {
	class, err := d.snaps.SnapshotV1().VolumeSnapshotClasses().Get(d.ctx, snapshotClass, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("the chart's VolumeSnapshotClass: %w", err)
	}
	snap := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: snapv1.VolumeSnapshotSpec{VolumeSnapshotClassName: ptr.To(class.Name),
			Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To(claim)}}}
	if _, err := d.snaps.SnapshotV1().VolumeSnapshots(ns).Create(d.ctx, snap, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create VolumeSnapshot %s: %w", name, err)
	}
	created := time.Now()
	say("VolumeSnapshot %s of %s created (VolumeSnapshotClass %s, deletionPolicy %s)", name, claim, class.Name, class.DeletionPolicy)
	var content string
	err = cluster.Poll(d.ctx, 20*time.Millisecond, 2*time.Minute, func() (bool, error) {
		got, err := d.snaps.SnapshotV1().VolumeSnapshots(ns).Get(d.ctx, name, metav1.GetOptions{})
		if err != nil || got.Status == nil || !ptr.Deref(got.Status.ReadyToUse, false) {
			return false, nil
		}
		content = ptr.Deref(got.Status.BoundVolumeSnapshotContentName, "")
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("VolumeSnapshot %s never became ready: %w", name, err)
	}
	ready := time.Since(created)
	c, err := d.snaps.SnapshotV1().VolumeSnapshotContents().Get(d.ctx, content, metav1.GetOptions{})
	if err != nil {
		return err
	}
	handle := ptr.Deref(c.Status.SnapshotHandle, "")
	say("VolumeSnapshot %s readyToUse; content %s holds snapshotHandle %s, restorable at %s",
		name, content, handle, c.Annotations[topology.AnnAccessibleTopology])
	backend, took, err := d.driverCut(handle)
	if err != nil {
		return err
	}
	say("the driver cut it in %s (%s backend); readyToUse %s after the VolumeSnapshot was created",
		took, backend, ready.Round(time.Millisecond))
	return nil
}

// driverCut reads how long the driver took to cut a snapshot, and with
// which backend, from the "Snapshot ready" line of the driver container's
// log on the real node.
func (d *demo) driverCut(handle string) (backend, took string, err error) {
	pods, err := d.cluster.Client.CoreV1().Pods(node.ReleaseNamespace).List(d.ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + d.node.Name})
	if err != nil {
		return "", "", err
	}
	for _, pod := range pods.Items {
		if !hasContainer(pod, "driver") {
			continue
		}
		logs, err := d.cluster.Client.CoreV1().Pods(pod.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{Container: "driver"}).DoRaw(d.ctx)
		if err != nil {
			return "", "", fmt.Errorf("driver log of %s: %w", pod.Name, err)
		}
		for _, line := range strings.Split(string(logs), "\n") {
			if strings.Contains(line, `"Snapshot ready"`) && strings.Contains(line, `snapshot="`+handle+`"`) {
				return logValue(line, "backend"), logValue(line, "duration"), nil
			}
		}
		return "", "", fmt.Errorf("the driver in %s logged no \"Snapshot ready\" line for snapshot %s", pod.Name, handle)
	}
	return "", "", fmt.Errorf("no pod with a driver container on %s in %s", d.node.Name, node.ReleaseNamespace)
}

func hasContainer(pod corev1.Pod, name string) bool {
	for _, c := range pod.Spec.Containers {
		if c.Name == name {
			return true
		}
	}
	return false
}

// logValue reads key="value" (or key=value) from a klog structured line.
func logValue(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	value := line[i+len(key)+2:]
	if strings.HasPrefix(value, `"`) {
		if end := strings.Index(value[1:], `"`); end >= 0 {
			return value[1 : end+1]
		}
	}
	if end := strings.IndexByte(value, ' '); end >= 0 {
		return value[:end]
	}
	return value
}

func (d *demo) restore() error {
	source := &corev1.TypedLocalObjectReference{APIGroup: ptr.To(snapGroup), Kind: "VolumeSnapshot", Name: "disk-snapshot"}
	if err := d.createClaim("restore-pvc", "topo-disk", "1Gi", source); err != nil {
		return err
	}
	if _, err := d.createPod("reader", "restore-pvc", readerScript); err != nil {
		return err
	}
	pv, nodeName, err := d.waitPlaced("restore-pvc", "reader")
	if err != nil {
		return err
	}
	say("restore-pvc bound to %s (nodeAffinity %s): the extender placed the pod where the snapshot lives", pv.Name, affinity(pv))
	if err := d.onRealNode("reader", nodeName); err != nil {
		return err
	}
	sum, err := d.volumeFacts("reader")
	if err != nil {
		return err
	}
	say("writer's sha256 (before the snapshot) %s", d.checksum)
	say("reader's sha256 (after the restore)   %s", sum)
	if sum != d.checksum {
		return fmt.Errorf("THE RESTORED DATA DIFFERS: the writer wrote sha256 %s, the reader read sha256 %s", d.checksum, sum)
	}
	say("identical")
	snap, err := d.snaps.SnapshotV1().VolumeSnapshots(ns).Get(d.ctx, "disk-snapshot", metav1.GetOptions{})
	if err != nil {
		return err
	}
	content := ptr.Deref(snap.Status.BoundVolumeSnapshotContentName, "")
	if err := d.snaps.SnapshotV1().VolumeSnapshots(ns).Delete(d.ctx, "disk-snapshot", metav1.DeleteOptions{}); err != nil {
		return err
	}
	err = cluster.Poll(d.ctx, 250*time.Millisecond, 2*time.Minute, func() (bool, error) {
		_, err := d.snaps.SnapshotV1().VolumeSnapshotContents().Get(d.ctx, content, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		return fmt.Errorf("content %s survived its VolumeSnapshot: %w", content, err)
	}
	say("deleted VolumeSnapshot disk-snapshot; its content %s and backend snapshot are gone (deletionPolicy Delete); restore-pvc keeps its data", content)
	return nil
}

func (d *demo) localPV() error {
	if _, err := d.createClass(&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "local-storage"},
		Provisioner: "kubernetes.io/no-provisioner"}); err != nil {
		return err
	}
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "local-pv"}, Spec: corev1.PersistentVolumeSpec{
		Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("5Gi")},
		AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain, StorageClassName: "local-storage",
		PersistentVolumeSource: corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: d.localDisk}},
		NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: topology.HostnameKey, Operator: corev1.NodeSelectorOpIn, Values: []string{d.hostname}}}}}}},
	}}
	if _, err := d.cluster.Client.CoreV1().PersistentVolumes().Create(d.ctx, pv, metav1.CreateOptions{}); err != nil {
		return err
	}
	say("PersistentVolume local-pv (%s on the host) created with nodeAffinity %s in [%s]", d.localDisk, topology.HostnameKey, d.hostname)
	if err := d.createClaim("local-pvc", "local-storage", "5Gi", nil); err != nil {
		return err
	}
	// Nothing binds it yet: it waits for its first consumer.
	if err := cluster.Poll(d.ctx, 250*time.Millisecond, 2*time.Second, func() (bool, error) {
		claim, err := d.cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(d.ctx, "local-pvc", metav1.GetOptions{})
		return err == nil && claim.Status.Phase != corev1.ClaimPending, err
	}); err == nil {
		return fmt.Errorf("local-pvc bound before any pod used it")
	}
	say("local-pvc is Pending (WaitForFirstConsumer) with no pod using it")
	if _, err := d.createPod("local-pod", "local-pvc", keepAlive); err != nil {
		return err
	}
	bound, nodeName, err := d.waitPlaced("local-pvc", "local-pod")
	if err != nil {
		return err
	}
	if bound.Name != "local-pv" || nodeName != d.node.Name {
		return fmt.Errorf("local-pvc bound to %s with the pod on %s; want local-pv on %s", bound.Name, nodeName, d.node.Name)
	}
	say("local-pod scheduled on %s, the PV's node, and local-pvc bound to local-pv", nodeName)
	return nil
}

func zoneClass(zone string) *storagev1.StorageClass {
	return &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "topo-zone"}, Provisioner: driver,
		Parameters: map[string]string{"scope": "zone"},
		AllowedTopologies: []corev1.TopologySelectorTerm{{MatchLabelExpressions: []corev1.TopologySelectorLabelRequirement{
			{Key: topology.ZoneKey, Values: []string{zone}}}}}}
}

func (d *demo) topology() error {
	if _, err := d.createClass(zoneClass("cn-hangzhou-d")); err != nil {
		return err
	}
	if err := d.createClaim("zone-pvc", "topo-zone", "2Gi", nil); err != nil {
		return err
	}
	pod, err := d.createPod("zone-pod", "zone-pvc", keepAlive)
	if err != nil {
		return err
	}
	// Two FailedScheduling events: the scheduler's (its VolumeBinding filter
	// rejects every node before the extender is asked) and the extender's
	// explanation of the same decision, with the per-node reasons.
	scheduler := pod.Spec.SchedulerName
	byComponent := map[string]string{}
	err = cluster.Poll(d.ctx, 250*time.Millisecond, 2*time.Minute, func() (bool, error) {
		events, err := d.cluster.Client.CoreV1().Events(ns).List(d.ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=zone-pod,reason=FailedScheduling"})
		if err != nil {
			return false, err
		}
		for _, e := range events.Items {
			component := e.Source.Component
			if component == "" { // events.k8s.io events name their reporter here
				component = e.ReportingController
			}
			byComponent[component] = e.Message
		}
		return byComponent[scheduler] != "" && byComponent[extenderName] != "", nil
	})
	if err != nil {
		return fmt.Errorf("FailedScheduling events for zone-pod from %s and %s: got %q: %w", scheduler, extenderName, byComponent, err)
	}
	say("zone-pvc Pending, zone-pod Pending")
	say("  FailedScheduling (%s): %s", scheduler, byComponent[scheduler])
	say("  FailedScheduling (%s): %s", extenderName, byComponent[extenderName])
	if want := "class topo-zone allows zone cn-hangzhou-d; node is in zone cn-hangzhou-b"; !strings.Contains(byComponent[extenderName], want) {
		return fmt.Errorf("the extender's FailedScheduling event does not say %q", want)
	}
	if err := d.cluster.Client.StorageV1().StorageClasses().Delete(d.ctx, "topo-zone", metav1.DeleteOptions{}); err != nil {
		return err
	}
	// allowedTopologies is immutable: the class is deleted and created again.
	if err := cluster.Poll(d.ctx, 100*time.Millisecond, time.Minute, func() (bool, error) {
		_, err := d.cluster.Client.StorageV1().StorageClasses().Get(d.ctx, "topo-zone", metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		return err
	}
	if _, err := d.createClass(zoneClass("cn-hangzhou-b")); err != nil {
		return err
	}
	pv, nodeName, err := d.waitPlaced("zone-pvc", "zone-pod")
	if err != nil {
		return err
	}
	where := "runs there"
	if nodeName != d.node.Name {
		where = "bound there (a Node object without a kubelet: it never starts)"
	}
	say("zone-pod scheduled on %s and %s; PV %s nodeAffinity %s", nodeName, where, pv.Name, affinity(pv))
	if !strings.Contains(affinity(pv), "cn-hangzhou-b") {
		return fmt.Errorf("PV %s is not in zone cn-hangzhou-b", pv.Name)
	}
	return nil
}

func (d *demo) badClaims() error {
	if err := d.cutSnapshot("disk-snapshot-2", "disk-pvc"); err != nil {
		return err
	}
	// topo-zone now allows zone b; case 4 needs a class for zone d.
	classD := zoneClass("cn-hangzhou-d")
	classD.Name = "topo-zone-d"
	if _, err := d.createClass(classD); err != nil {
		return err
	}
	snapshot := func(group, name string) *corev1.TypedLocalObjectReference {
		return &corev1.TypedLocalObjectReference{APIGroup: ptr.To(group), Kind: "VolumeSnapshot", Name: name}
	}
	cases := []struct {
		what, name, class, size string
		source                  *corev1.TypedLocalObjectReference
	}{
		{"wrong apiGroup", "bad-group", "topo-disk", "1Gi", snapshot("example.com", "disk-snapshot-2")},
		{"missing snapshot", "bad-missing", "topo-disk", "1Gi", snapshot(snapGroup, "no-such-snapshot")},
		{"size below the snapshot's restoreSize", "bad-small", "topo-disk", "100Mi", snapshot(snapGroup, "disk-snapshot-2")},
		{"class cannot reach where the snapshot lives", "bad-topology", "topo-zone-d", "1Gi", snapshot(snapGroup, "disk-snapshot-2")},
		{"clone of a missing PVC", "bad-clone", "topo-disk", "1Gi", &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: "no-such-pvc"}},
	}
	for _, c := range cases {
		err := d.createClaim(c.name, c.class, c.size, c.source)
		if err == nil {
			return fmt.Errorf("PVC with %s was admitted", c.what)
		}
		say("%s: rejected: %v", c.what, err)
	}
	return nil
}
