package chaos

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/harness"
)

// opDeadline bounds how long one API call of an operation is retried: calls
// fail while the API server restarts or etcd is paused, as a user's would,
// and a user would try again.
const opDeadline = 3 * time.Minute

// callTimeout bounds one attempt, so a call stuck on a paused etcd is
// abandoned and retried.
const callTimeout = 15 * time.Second

// claimSize is what every claim asks for; sources hold sourceBytes.
const (
	claimSize   = "16Mi"
	sourceBytes = 64 << 10
)

// source is a claim written before the faults.
type source struct {
	claim, pod, node string
	pv, volume       string
}

// workload runs operations in one namespace and judges their final state.
type workload struct {
	env     *harness.Env
	ns      string
	sources []source

	mu     sync.Mutex
	uids   map[string]types.UID // claims and snapshots created, by name
	issued map[OpKind]int
	failed []string // operations that could not be issued
}

func newWorkload(env *harness.Env, ns string) *workload {
	return &workload{env: env, ns: ns, uids: map[string]types.UID{}, issued: map[OpKind]int{}}
}

// retry calls f until it succeeds or opDeadline passes.
func retry(ctx context.Context, what string, f func(context.Context) error) error {
	var last error
	err := cluster.Poll(ctx, 250*time.Millisecond, opDeadline, func() (bool, error) {
		callCtx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		last = f(callCtx)
		return last == nil, nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w (last error: %w)", what, err, last)
	}
	return nil
}

// createClaim creates a claim (AlreadyExists: an earlier attempt whose
// answer was lost) and remembers its UID.
func (w *workload) createClaim(ctx context.Context, name, class string, dataSource *corev1.TypedLocalObjectReference) error {
	claim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: w.ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To(class),
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(claimSize)}},
			DataSource:       dataSource,
		},
	}
	api := w.env.Cluster.Client.CoreV1().PersistentVolumeClaims(w.ns)
	return retry(ctx, "create claim "+name, func(ctx context.Context) error {
		created, err := api.Create(ctx, claim, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			created, err = api.Get(ctx, name, metav1.GetOptions{})
		}
		if err != nil {
			return err
		}
		w.remember(name, created.UID)
		return nil
	})
}

func (w *workload) createPod(ctx context.Context, name, claim string) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: w.ns},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10",
				VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}},
		},
	}
	return retry(ctx, "create pod "+name, func(ctx context.Context) error {
		_, err := w.env.Cluster.Client.CoreV1().Pods(w.ns).Create(ctx, pod, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	})
}

func (w *workload) createSnapshot(ctx context.Context, name, claim string) error {
	snap := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: w.ns},
		Spec: snapv1.VolumeSnapshotSpec{VolumeSnapshotClassName: ptr.To(SnapshotClass),
			Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To(claim)}}}
	api := w.env.Snaps.SnapshotV1().VolumeSnapshots(w.ns)
	return retry(ctx, "create snapshot "+name, func(ctx context.Context) error {
		created, err := api.Create(ctx, snap, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			created, err = api.Get(ctx, name, metav1.GetOptions{})
		}
		if err != nil {
			return err
		}
		w.remember(name, created.UID)
		return nil
	})
}

func (w *workload) deletePodAndClaim(ctx context.Context, pod, claim string) error {
	err := retry(ctx, "delete pod "+pod, func(ctx context.Context) error {
		err := w.env.Cluster.Client.CoreV1().Pods(w.ns).Delete(ctx, pod, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))})
		return ignoreNotFound(err)
	})
	if err != nil {
		return err
	}
	return retry(ctx, "delete claim "+claim, func(ctx context.Context) error {
		return ignoreNotFound(w.env.Cluster.Client.CoreV1().PersistentVolumeClaims(w.ns).Delete(ctx, claim, metav1.DeleteOptions{}))
	})
}

func ignoreNotFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func (w *workload) remember(name string, uid types.UID) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.uids[name] = uid
}

func (w *workload) uid(name string) types.UID {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.uids[name]
}

// run performs one operation at its time and counts it once issued.
func (w *workload) run(ctx context.Context, start time.Time, op Op) {
	if !waitUntil(ctx, start.Add(op.At)) {
		return
	}
	err := w.do(ctx, op)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.failed = append(w.failed, fmt.Sprintf("%s %s/%s could not be issued: %v", op.Kind, w.ns, op.Name, err))
		return
	}
	w.issued[op.Kind]++
}

func (w *workload) do(ctx context.Context, op Op) error {
	switch op.Kind {
	case OpClaim:
		if err := w.createClaim(ctx, op.Name, op.Class, nil); err != nil {
			return err
		}
		if op.Class == ClassZoneImmediate {
			return nil // binds without a consumer
		}
		return w.createPod(ctx, op.Name+"-pod", op.Name)
	case OpDeletedClaim:
		if err := w.createClaim(ctx, op.Name, op.Class, nil); err != nil {
			return err
		}
		if op.Class != ClassZoneImmediate {
			if err := w.createPod(ctx, op.Name+"-pod", op.Name); err != nil {
				return err
			}
		}
		waitUntil(ctx, time.Now().Add(op.Delay)) // the moment of deletion, drawn from the seed
		return w.deletePodAndClaim(ctx, op.Name+"-pod", op.Name)
	case OpSnapshot:
		// Sources are written only before the window, so the cut holds
		// what the ledger recorded.
		w.env.Data.Cut(w.ns, op.Name, w.sources[op.Source].volume)
		return w.createSnapshot(ctx, op.Name, w.sources[op.Source].claim)
	case OpDeletedSnapshot:
		if err := w.createSnapshot(ctx, op.Name, w.sources[op.Source].claim); err != nil {
			return err
		}
		waitUntil(ctx, time.Now().Add(op.Delay))
		return retry(ctx, "delete snapshot "+op.Name, func(ctx context.Context) error {
			return ignoreNotFound(w.env.Snaps.SnapshotV1().VolumeSnapshots(w.ns).Delete(ctx, op.Name, metav1.DeleteOptions{}))
		})
	case OpRestore:
		dataSource := &corev1.TypedLocalObjectReference{APIGroup: ptr.To(snapv1.GroupName), Kind: "VolumeSnapshot", Name: op.Snapshot}
		if err := w.createClaim(ctx, op.Name, op.Class, dataSource); err != nil {
			return err
		}
		return w.createPod(ctx, op.Name+"-pod", op.Name)
	case OpDeletedSource:
		// Delete the source after its snapshot, as a user who waited for it.
		if err := w.waitSnapshotReady(ctx, KeptSnapshot(op.Source)); err != nil {
			return err
		}
		return w.deletePodAndClaim(ctx, w.sources[op.Source].pod, w.sources[op.Source].claim)
	case OpDeletedPV:
		return retry(ctx, "delete PV "+w.sources[op.Source].pv, func(ctx context.Context) error {
			return ignoreNotFound(w.env.Cluster.Client.CoreV1().PersistentVolumes().Delete(ctx, w.sources[op.Source].pv, metav1.DeleteOptions{}))
		})
	}
	return fmt.Errorf("unknown operation kind %q", op.Kind)
}

func (w *workload) waitSnapshotReady(ctx context.Context, name string) error {
	return retry(ctx, "wait for snapshot "+name, func(ctx context.Context) error {
		snap, err := w.env.Snaps.SnapshotV1().VolumeSnapshots(w.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if snap.Status == nil || !ptr.Deref(snap.Status.ReadyToUse, false) {
			return errors.New("not ready")
		}
		return nil
	})
}

// observation is the namespace's objects at one moment.
type observation struct {
	claims    map[string]*corev1.PersistentVolumeClaim
	pods      map[string]*corev1.Pod
	pvs       map[string]*corev1.PersistentVolume
	snapshots map[string]*snapv1.VolumeSnapshot
	contents  []snapv1.VolumeSnapshotContent
}

func (w *workload) observe(ctx context.Context) (*observation, error) {
	o := &observation{claims: map[string]*corev1.PersistentVolumeClaim{}, pods: map[string]*corev1.Pod{},
		pvs: map[string]*corev1.PersistentVolume{}, snapshots: map[string]*snapv1.VolumeSnapshot{}}
	client := w.env.Cluster.Client
	claims, err := client.CoreV1().PersistentVolumeClaims(w.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range claims.Items {
		o.claims[claims.Items[i].Name] = &claims.Items[i]
	}
	pods, err := client.CoreV1().Pods(w.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range pods.Items {
		o.pods[pods.Items[i].Name] = &pods.Items[i]
	}
	pvs, err := client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range pvs.Items {
		o.pvs[pvs.Items[i].Name] = &pvs.Items[i]
	}
	snapshots, err := w.env.Snaps.SnapshotV1().VolumeSnapshots(w.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range snapshots.Items {
		o.snapshots[snapshots.Items[i].Name] = &snapshots.Items[i]
	}
	contents, err := w.env.Snaps.SnapshotV1().VolumeSnapshotContents().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	o.contents = contents.Items
	return o, nil
}

// notFinal says why op has not reached its final state in o, or "".
func (w *workload) notFinal(o *observation, op Op) string {
	name := w.ns + "/" + op.Name
	switch op.Kind {
	case OpClaim, OpRestore:
		if problem := boundProblem(o, op.Name); problem != "" {
			return fmt.Sprintf("%s %s: %s", op.Kind, name, problem)
		}
		if op.Class != ClassZoneImmediate {
			if pod := o.pods[op.Name+"-pod"]; pod == nil || pod.Spec.NodeName == "" {
				return fmt.Sprintf("%s %s: pod %s-pod not scheduled", op.Kind, name, op.Name)
			}
		}
	case OpDeletedClaim, OpDeletedSource:
		if claim := o.claims[op.Name]; claim != nil {
			return fmt.Sprintf("%s %s: claim still exists (phase %s, finalizers %v)", op.Kind, name, claim.Status.Phase, claim.Finalizers)
		}
		pvName := "pvc-" + string(w.uid(op.Name))
		if op.Kind == OpDeletedSource {
			pvName = w.sources[op.Source].pv
		}
		if pv := o.pvs[pvName]; pv != nil {
			return fmt.Sprintf("%s %s: PV %s still exists (phase %s, finalizers %v)", op.Kind, name, pvName, pv.Status.Phase, pv.Finalizers)
		}
	case OpSnapshot:
		snap := o.snapshots[op.Name]
		if snap == nil {
			return fmt.Sprintf("snapshot %s: gone", name)
		}
		if snap.Status == nil || !ptr.Deref(snap.Status.ReadyToUse, false) {
			return fmt.Sprintf("snapshot %s: not ready (%s)", name, describeSnapshot(snap))
		}
	case OpDeletedSnapshot:
		if snap := o.snapshots[op.Name]; snap != nil {
			return fmt.Sprintf("deleted-snapshot %s: still exists (%s, finalizers %v)", name, describeSnapshot(snap), snap.Finalizers)
		}
		uid := w.uid(op.Name)
		for _, content := range o.contents {
			if uid != "" && content.Spec.VolumeSnapshotRef.UID == uid {
				return fmt.Sprintf("deleted-snapshot %s: content %s still exists (finalizers %v)", name, content.Name, content.Finalizers)
			}
		}
	case OpDeletedPV:
		src := w.sources[op.Source]
		pv := o.pvs[src.pv]
		if pv == nil {
			return fmt.Sprintf("deleted-pv %s: PV %s is gone while its claim is bound", name, src.pv)
		}
		if problem := boundProblem(o, src.claim); problem != "" {
			return fmt.Sprintf("deleted-pv %s: %s", name, problem)
		}
	}
	return ""
}

func boundProblem(o *observation, claimName string) string {
	claim := o.claims[claimName]
	if claim == nil {
		return "claim gone"
	}
	if claim.Status.Phase != corev1.ClaimBound {
		return fmt.Sprintf("claim %s, not Bound", claim.Status.Phase)
	}
	return ""
}

func describeSnapshot(snap *snapv1.VolumeSnapshot) string {
	if snap.Status == nil {
		return "no status"
	}
	message := ""
	if snap.Status.Error != nil {
		message = ptr.Deref(snap.Status.Error.Message, "")
	}
	return fmt.Sprintf("content %q, ready %v, error %q", ptr.Deref(snap.Status.BoundVolumeSnapshotContentName, ""),
		ptr.Deref(snap.Status.ReadyToUse, false), message)
}
