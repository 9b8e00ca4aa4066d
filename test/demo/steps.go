package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
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
	"github.com/toposnap/toposnap/test/harness"
)

const (
	ns        = "default"
	driver    = "csi.toposnap.io"
	snapGroup = "snapshot.storage.k8s.io"
)

type demo struct {
	env      *harness.Env
	ctx      context.Context
	checksum string
	node     string // where disk-pvc's pod runs
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

// createClass creates a StorageClass and prints what the webhook said.
func (d *demo) createClass(class *storagev1.StorageClass) (*storagev1.StorageClass, error) {
	collected := &warnings{}
	config := rest.CopyConfig(d.env.Cluster.RestConfig)
	config.WarningHandler = collected
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return nil, err
	}
	created, err := client.StorageV1().StorageClasses().Create(d.ctx, class, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	say("StorageClass %s created; volumeBindingMode %s", created.Name, ptr.Deref(created.VolumeBindingMode, ""))
	for _, w := range collected.list {
		say("  webhook warning: %s", w)
	}
	return created, nil
}

func (d *demo) createClaim(name, class, size string, source *corev1.TypedLocalObjectReference) error {
	claim := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To(class), DataSource: source,
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}}}}
	_, err := d.env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Create(d.ctx, claim, metav1.CreateOptions{})
	return err
}

func (d *demo) createPod(name, claim string) error {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10",
			VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}}},
		Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}}}}
	_, err := d.env.Cluster.Client.CoreV1().Pods(ns).Create(d.ctx, pod, metav1.CreateOptions{})
	return err
}

// waitRunning waits for the claim to bind and the pod to run, printing
// progress, and returns the PV and the node.
func (d *demo) waitRunning(claimName, podName string) (*corev1.PersistentVolume, string, error) {
	var pv *corev1.PersistentVolume
	var node string
	last := ""
	err := cluster.Poll(d.ctx, 250*time.Millisecond, 2*time.Minute, func() (bool, error) {
		claim, err := d.env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(d.ctx, claimName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pod, err := d.env.Cluster.Client.CoreV1().Pods(ns).Get(d.ctx, podName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		now := fmt.Sprintf("pvc %s %s, pod %s %s", claimName, claim.Status.Phase, podName, pod.Status.Phase)
		if now != last {
			say("  %s", now)
			last = now
		}
		if claim.Status.Phase != corev1.ClaimBound || pod.Status.Phase != corev1.PodRunning {
			return false, nil
		}
		node = pod.Spec.NodeName
		pv, err = d.env.Cluster.Client.CoreV1().PersistentVolumes().Get(d.ctx, claim.Spec.VolumeName, metav1.GetOptions{})
		return err == nil, err
	})
	return pv, node, err
}

// onVolume plays the kubelet: it publishes the volume on node, runs use
// on the published path, and unpublishes.
func (d *demo) onVolume(node, volumeID string, use func(path string) error) error {
	dir, err := os.MkdirTemp(d.env.Dir, "publish-")
	if err != nil {
		return err
	}
	target, cleanup, err := d.env.Nodes[node].Publish(d.ctx, volumeID, dir)
	if err != nil {
		return err
	}
	defer cleanup(d.ctx)
	return use(filepath.Join(target, "data.bin"))
}

// writeData writes 1 MiB of random bytes into the volume through node and
// returns their checksum.
func (d *demo) writeData(node, volumeID string) (string, error) {
	data := make([]byte, 1<<20)
	if _, err := rand.Read(data); err != nil {
		return "", err
	}
	err := d.onVolume(node, volumeID, func(path string) error { return os.WriteFile(path, data, 0o644) })
	return checksum(data), err
}

// readData returns the checksum of what the volume holds, read through node.
func (d *demo) readData(node, volumeID string) (string, error) {
	var data []byte
	err := d.onVolume(node, volumeID, func(path string) error {
		var err error
		data, err = os.ReadFile(path)
		return err
	})
	return checksum(data), err
}

func checksum(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
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

func (d *demo) snapshot() error {
	// No volumeBindingMode: the webhook makes it WaitForFirstConsumer.
	if _, err := d.createClass(&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "topo-disk"}, Provisioner: driver,
		Parameters: map[string]string{"scope": "node"}}); err != nil {
		return err
	}
	if err := d.createClaim("disk-pvc", "topo-disk", "1Gi", nil); err != nil {
		return err
	}
	if err := d.createPod("disk-pod", "disk-pvc"); err != nil {
		return err
	}
	pv, node, err := d.waitRunning("disk-pvc", "disk-pod")
	if err != nil {
		return err
	}
	d.node = node
	say("disk-pvc bound to %s on %s (nodeAffinity %s)", pv.Name, node, affinity(pv))
	if d.checksum, err = d.writeData(node, pv.Spec.CSI.VolumeHandle); err != nil {
		return err
	}
	say("wrote 1 MiB through the volume on %s: sha256 %s", node, d.checksum)
	class := &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: "topo-snapclass",
		Annotations: map[string]string{"snapshot.storage.kubernetes.io/is-default-class": "true"}},
		Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete}
	if _, err := d.env.Snaps.SnapshotV1().VolumeSnapshotClasses().Create(d.ctx, class, metav1.CreateOptions{}); err != nil {
		return err
	}
	if err := d.cutSnapshot("disk-snapshot", "disk-pvc"); err != nil {
		return err
	}
	return nil
}

func (d *demo) cutSnapshot(name, claim string) error {
	snap := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: snapv1.VolumeSnapshotSpec{VolumeSnapshotClassName: ptr.To("topo-snapclass"),
			Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To(claim)}}}
	if _, err := d.env.Snaps.SnapshotV1().VolumeSnapshots(ns).Create(d.ctx, snap, metav1.CreateOptions{}); err != nil {
		return err
	}
	created := time.Now()
	var content string
	err := cluster.Poll(d.ctx, 20*time.Millisecond, 2*time.Minute, func() (bool, error) {
		got, err := d.env.Snaps.SnapshotV1().VolumeSnapshots(ns).Get(d.ctx, name, metav1.GetOptions{})
		if err != nil || got.Status == nil || !ptr.Deref(got.Status.ReadyToUse, false) {
			return false, nil
		}
		content = ptr.Deref(got.Status.BoundVolumeSnapshotContentName, "")
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("VolumeSnapshot %s never became ready: %w", name, err)
	}
	c, err := d.env.Snaps.SnapshotV1().VolumeSnapshotContents().Get(d.ctx, content, metav1.GetOptions{})
	if err != nil {
		return err
	}
	ready := time.Since(created)
	handle := ptr.Deref(c.Status.SnapshotHandle, "")
	say("VolumeSnapshot %s readyToUse; content %s holds snapshotHandle %s, restorable at %s",
		name, content, handle, c.Annotations[topology.AnnAccessibleTopology])
	if backend, took, ok := d.driverCut(handle); ok {
		say("the driver cut it in %s (%s backend); readyToUse %s after the VolumeSnapshot was created",
			took, backend, ready.Round(time.Millisecond))
	} else {
		say("readyToUse %s after the VolumeSnapshot was created", ready.Round(time.Millisecond))
	}
	return nil
}

// driverCut reads how long the driver took to cut a snapshot, and with
// which backend, from its "Snapshot ready" log line.
func (d *demo) driverCut(handle string) (backend, took string, ok bool) {
	for _, node := range d.env.Nodes {
		data, err := os.ReadFile(d.env.LogPath(node.Name, "driver"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if !strings.Contains(line, `"Snapshot ready"`) || !strings.Contains(line, `snapshot="`+handle+`"`) {
				continue
			}
			return logValue(line, "backend"), logValue(line, "duration"), true
		}
	}
	return "", "", false
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
	if err := d.createPod("restore-pod", "restore-pvc"); err != nil {
		return err
	}
	pv, node, err := d.waitRunning("restore-pvc", "restore-pod")
	if err != nil {
		return err
	}
	say("restore-pvc bound to %s on %s (where the snapshot lives: the extender placed the pod)", pv.Name, node)
	sum, err := d.readData(node, pv.Spec.CSI.VolumeHandle)
	if err != nil {
		return err
	}
	say("original sha256 %s\n   restored sha256 %s", d.checksum, sum)
	if sum != d.checksum {
		return fmt.Errorf("restored data differs")
	}
	snap, err := d.env.Snaps.SnapshotV1().VolumeSnapshots(ns).Get(d.ctx, "disk-snapshot", metav1.GetOptions{})
	if err != nil {
		return err
	}
	content := ptr.Deref(snap.Status.BoundVolumeSnapshotContentName, "")
	if err := d.env.Snaps.SnapshotV1().VolumeSnapshots(ns).Delete(d.ctx, "disk-snapshot", metav1.DeleteOptions{}); err != nil {
		return err
	}
	err = cluster.Poll(d.ctx, 250*time.Millisecond, 2*time.Minute, func() (bool, error) {
		_, err := d.env.Snaps.SnapshotV1().VolumeSnapshotContents().Get(d.ctx, content, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		return fmt.Errorf("content %s survived its VolumeSnapshot: %w", content, err)
	}
	say("deleted VolumeSnapshot disk-snapshot; its content %s and backend snapshot are gone (deletionPolicy Delete)", content)
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
		PersistentVolumeSource: corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: "/mnt/disks/ssd1"}},
		NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: topology.HostnameKey, Operator: corev1.NodeSelectorOpIn, Values: []string{"node1"}}}}}}},
	}}
	if _, err := d.env.Cluster.Client.CoreV1().PersistentVolumes().Create(d.ctx, pv, metav1.CreateOptions{}); err != nil {
		return err
	}
	say("PersistentVolume local-pv created with nodeAffinity kubernetes.io/hostname in [node1]")
	if err := d.createClaim("local-pvc", "local-storage", "5Gi", nil); err != nil {
		return err
	}
	// Nothing binds it yet: it waits for its first consumer.
	if err := cluster.Poll(d.ctx, 250*time.Millisecond, 2*time.Second, func() (bool, error) {
		claim, err := d.env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(d.ctx, "local-pvc", metav1.GetOptions{})
		return err == nil && claim.Status.Phase != corev1.ClaimPending, err
	}); err == nil {
		return fmt.Errorf("local-pvc bound before any pod used it")
	}
	say("local-pvc is Pending (WaitForFirstConsumer) with no pod using it")
	if err := d.createPod("local-pod", "local-pvc"); err != nil {
		return err
	}
	bound, node, err := d.waitRunning("local-pvc", "local-pod")
	if err != nil {
		return err
	}
	if bound.Name != "local-pv" || node != "node1" {
		return fmt.Errorf("local-pvc bound to %s with the pod on %s; want local-pv on node1", bound.Name, node)
	}
	say("local-pod scheduled on node1 and local-pvc bound to local-pv")
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
	if err := d.createPod("zone-pod", "zone-pvc"); err != nil {
		return err
	}
	// Two FailedScheduling events: the scheduler's (its VolumeBinding filter
	// rejects every node before the extender is asked) and the extender's
	// explanation of the same decision, with the per-node reasons.
	byComponent := map[string]string{}
	err := cluster.Poll(d.ctx, 250*time.Millisecond, time.Minute, func() (bool, error) {
		events, err := d.env.Cluster.Client.CoreV1().Events(ns).List(d.ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=zone-pod,reason=FailedScheduling"})
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
		return byComponent["default-scheduler"] != "" && byComponent["toposnap-extender"] != "", nil
	})
	if err != nil {
		return fmt.Errorf("FailedScheduling events for zone-pod: got %q: %w", byComponent, err)
	}
	say("zone-pvc Pending, zone-pod Pending")
	say("  FailedScheduling (default-scheduler): %s", byComponent["default-scheduler"])
	say("  FailedScheduling (toposnap-extender): %s", byComponent["toposnap-extender"])
	if want := "class topo-zone allows zone cn-hangzhou-d; node is in zone cn-hangzhou-b"; !strings.Contains(byComponent["toposnap-extender"], want) {
		return fmt.Errorf("the extender's FailedScheduling event does not say %q", want)
	}
	if err := d.env.Cluster.Client.StorageV1().StorageClasses().Delete(d.ctx, "topo-zone", metav1.DeleteOptions{}); err != nil {
		return err
	}
	// allowedTopologies is immutable: the class is deleted and created again.
	if err := cluster.Poll(d.ctx, 100*time.Millisecond, time.Minute, func() (bool, error) {
		_, err := d.env.Cluster.Client.StorageV1().StorageClasses().Get(d.ctx, "topo-zone", metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		return err
	}
	if _, err := d.createClass(zoneClass("cn-hangzhou-b")); err != nil {
		return err
	}
	pv, node, err := d.waitRunning("zone-pvc", "zone-pod")
	if err != nil {
		return err
	}
	say("zone-pod scheduled on %s; PV %s nodeAffinity %s", node, pv.Name, affinity(pv))
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
