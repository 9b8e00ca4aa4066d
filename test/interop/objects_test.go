package interop

import (
	"context"
	"fmt"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/test/harness"
)

// Names of the cluster-wide objects the tests and benchmarks share.
const (
	nodeClass     = "interop-node"
	zoneClass     = "interop-zone"
	snapshotClass = "interop-snapshots"
	// annProvisionerIdentity is the volume attribute external-provisioner
	// stamps on every PV it creates (toposnap's provisioner does not): it
	// tells which provisioner made a PV.
	annProvisionerIdentity = "storage.kubernetes.io/csiProvisionerIdentity"
	// labelManagedBy is the label distributed snapshotting puts on a
	// content: the node whose csi-snapshotter cuts it.
	labelManagedBy = "snapshot.storage.kubernetes.io/managed-by"
	// annSelectedNode is where the scheduler put a late-binding claim's
	// first consumer.
	annSelectedNode = "volume.kubernetes.io/selected-node"
)

// ensureClasses creates the storage classes of both scopes (late binding,
// as the chart's) and the snapshot class, if missing.
func ensureClasses(ctx context.Context) error {
	for name, scope := range map[string]string{nodeClass: "node", zoneClass: "zone"} {
		class := &storagev1.StorageClass{
			ObjectMeta:        metav1.ObjectMeta{Name: name},
			Provisioner:       harness.DriverName,
			Parameters:        map[string]string{"scope": scope},
			VolumeBindingMode: ptr.To(storagev1.VolumeBindingWaitForFirstConsumer),
			ReclaimPolicy:     ptr.To(corev1.PersistentVolumeReclaimDelete),
		}
		if _, err := env.Cluster.Client.StorageV1().StorageClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create StorageClass %s: %w", name, err)
		}
	}
	class := &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: snapshotClass},
		Driver: harness.DriverName, DeletionPolicy: snapv1.VolumeSnapshotContentDelete}
	if _, err := env.Snaps.SnapshotV1().VolumeSnapshotClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create VolumeSnapshotClass %s: %w", snapshotClass, err)
	}
	return nil
}

func createNamespace(ctx context.Context, prefix string) (string, error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}
	created, err := env.Cluster.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("create namespace: %w", err)
	}
	return created.Name, nil
}

// newClaim is a 16Mi claim of class, restored from the VolumeSnapshot
// fromSnapshot when that is not empty.
func newClaim(ns, name, class, fromSnapshot string) *corev1.PersistentVolumeClaim {
	claim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To(class),
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceStorage: resource.MustParse("16Mi")}},
		},
	}
	if fromSnapshot != "" {
		claim.Spec.DataSource = &corev1.TypedLocalObjectReference{
			APIGroup: ptr.To(snapv1.GroupName), Kind: "VolumeSnapshot", Name: fromSnapshot}
	}
	return claim
}

// newPod is a pod using claim, on node when node is not empty (else where
// the scheduler puts it).
func newPod(ns, name, claim, node string) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10",
				VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}},
		},
	}
	if node != "" {
		pod.Spec.NodeSelector = map[string]string{topology.HostnameKey: node}
	}
	return pod
}

// createClaimAndPod creates a claim and a pod using it.
func createClaimAndPod(ctx context.Context, claim *corev1.PersistentVolumeClaim, pod *corev1.Pod) error {
	if _, err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(claim.Namespace).Create(ctx, claim, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create claim %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	if _, err := env.Cluster.Client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// waitBound waits for the claim to be bound and its pod scheduled, and
// returns the PV and the pod's node.
func waitBound(ctx context.Context, ns, claimName, podName string, timeout time.Duration) (*corev1.PersistentVolume, string, error) {
	return harness.WaitBound(ctx, env.Cluster.Client, ns, claimName, podName, timeout)
}

// namespaceEvents lists a namespace's events, for failure messages.
func namespaceEvents(ns string) string { return harness.NamespaceEvents(env.Cluster.Client, ns) }

// affinity returns the value the PV's node affinity requires for key
// ("" when it does not constrain key).
func affinity(pv *corev1.PersistentVolume, key string) string {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return ""
	}
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, expr := range term.MatchExpressions {
			if expr.Key == key && expr.Operator == corev1.NodeSelectorOpIn && len(expr.Values) == 1 {
				return expr.Values[0]
			}
		}
	}
	return ""
}

// newSnapshot is a VolumeSnapshot of claim in the tests' snapshot class.
func newSnapshot(ns, name, claim string) *snapv1.VolumeSnapshot {
	return &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: snapv1.VolumeSnapshotSpec{
			Source:                  snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To(claim)},
			VolumeSnapshotClassName: ptr.To(snapshotClass),
		}}
}

// waitSnapshotReady waits until the VolumeSnapshot is ready to use and
// returns its bound content.
func waitSnapshotReady(ctx context.Context, ns, name string, timeout time.Duration) (*snapv1.VolumeSnapshotContent, error) {
	var contentName, last string
	err := poll(ctx, 200*time.Millisecond, timeout, func() (bool, error) {
		snap, err := env.Snaps.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		if snap.Status == nil || !ptr.Deref(snap.Status.ReadyToUse, false) {
			last = fmt.Sprintf("status %+v", snap.Status)
			if snap.Status != nil && snap.Status.Error != nil {
				last = "error: " + ptr.Deref(snap.Status.Error.Message, "")
			}
			return false, nil
		}
		contentName = ptr.Deref(snap.Status.BoundVolumeSnapshotContentName, "")
		return contentName != "", nil
	})
	if err != nil {
		return nil, fmt.Errorf("VolumeSnapshot %s/%s not ready (last seen: %s): %w\nevents:\n%s", ns, name, last, err, namespaceEvents(ns))
	}
	content, err := env.Snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, contentName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("content %s of VolumeSnapshot %s/%s: %w", contentName, ns, name, err)
	}
	return content, nil
}

// waitGone waits until get reports NotFound.
func waitGone(ctx context.Context, what string, timeout time.Duration, get func(context.Context) error) error {
	var last error
	err := poll(ctx, 200*time.Millisecond, timeout, func() (bool, error) {
		last = get(ctx)
		return apierrors.IsNotFound(last), nil
	})
	if err != nil {
		if last == nil {
			return fmt.Errorf("%s still there: %w", what, err)
		}
		return fmt.Errorf("%s not confirmed gone (last read: %w): %w", what, last, err)
	}
	return nil
}

// deleteAndWait deletes the namespace's pods, then its claims, and waits
// until the PVs of those claims are gone: the provisioner that runs now
// reclaimed them (Delete policy).
func deleteClaimsAndWait(ctx context.Context, ns string, timeout time.Duration) error {
	pods := env.Cluster.Client.CoreV1().Pods(ns)
	if err := pods.DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}, metav1.ListOptions{}); err != nil {
		return fmt.Errorf("delete pods of %s: %w", ns, err)
	}
	claims := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns)
	list, err := claims.List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list claims of %s: %w", ns, err)
	}
	if err := claims.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		return fmt.Errorf("delete claims of %s: %w", ns, err)
	}
	for _, claim := range list.Items {
		if claim.Spec.VolumeName == "" {
			continue
		}
		if err := waitGone(ctx, "PV "+claim.Spec.VolumeName, timeout, func(ctx context.Context) error {
			_, err := env.Cluster.Client.CoreV1().PersistentVolumes().Get(ctx, claim.Spec.VolumeName, metav1.GetOptions{})
			return err
		}); err != nil {
			return err
		}
	}
	return nil
}
