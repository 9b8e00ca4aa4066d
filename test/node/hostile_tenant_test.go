package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/driver/store/btrfs"
	"github.com/toposnap/toposnap/internal/testpool"
	"github.com/toposnap/toposnap/test/cluster"
)

// The hostile tenant's volumes.
const (
	tenantSize    = 32 << 20
	neighbourSize = 64 << 20
	// tenantSlack is what the neighbour leaves unwritten of its size
	// (metadata).
	tenantSlack = 8 << 20
	// escapeSize is what each fill tries to write: three times its limit.
	escapeSize = 96 << 20
	// qgroupLevel1 places a btrfs qgroup at level 1 (a volume's limit
	// group is 1/<its subvolume id>).
	qgroupLevel1 = 1 << 48
)

// tenantStep and tenantOutcome are test/node/tenant's input and output.
type tenantStep struct {
	Action  string   `json:"action"`
	Path    string   `json:"path"`
	Inherit []uint64 `json:"inherit,omitempty"`
	Size    int64    `json:"size,omitempty"`
}

type tenantOutcome struct {
	tenantStep
	Subvolume uint64 `json:"subvolume"`
	Written   int64  `json:"written"`
	Errno     string `json:"errno"`
	Error     string `json:"error"`
}

// A hostile tenant on the real node: unprivileged pods (uid 1000, no
// capabilities, the runtime's default seccomp profile) run our static
// program test/node/tenant against a btrfs node pool installed by helm,
// in claims of the chart's default class (sealed volumes). Every btrfs
// ioctl the tenant tries in its volume answers ENOTTY: reading its
// subvolume id (the probe a neighbour's group is found with), nesting a
// plain subvolume, nesting one whose qgroup inheritance list names
// nothing, or the neighbour's limit group. Its writes end in EDQUOT within
// its size, the neighbour writes its own size, and a VolumeSnapshot of the
// tenant's claim becomes ready: there is no nested subvolume for it to
// leave out.
func TestHostileTenant(t *testing.T) {
	needNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	program := buildTenantProgram(t)
	pool := btrfsNodePool(t)
	installToposnapOn(ctx, t, pool)

	client := testCluster.Client
	namespace := "hostile-tenant"
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	snaps, err := snapclient.NewForConfig(testCluster.RestConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeTenantNamespace(t, snaps, namespace) })
	for name, size := range map[string]int64{"tenant": tenantSize, "neighbour": neighbourSize} {
		if _, err := client.CoreV1().PersistentVolumeClaims(namespace).Create(ctx, tenantClaim(name, size), metav1.CreateOptions{}); err != nil {
			t.Fatalf("create claim %s: %v", name, err)
		}
	}
	// The neighbour's first pod binds its claim; its limit group is then
	// read by root on the node (the tenant cannot: its probe is among the
	// attacks), so that the attack naming it names a group that exists.
	first := runTenantPod(ctx, t, namespace, "neighbour-first", "neighbour", program, []tenantStep{
		{Action: "fill", Path: "/data/first.bin", Size: 1 << 20},
	})[0]
	if first.Error != "" {
		t.Fatalf("the neighbour's first write: %s", first.Error)
	}
	neighbourPV := boundVolume(ctx, t, namespace, "neighbour")
	neighbourSubvolume, err := btrfs.SubvolumeID(filepath.Join(pool, "volumes", neighbourPV))
	if err != nil {
		t.Fatalf("the neighbour's subvolume: %v", err)
	}

	attacks := runTenantPod(ctx, t, namespace, "tenant", "tenant", program, []tenantStep{
		{Action: "subvolume-id", Path: "/data"},
		{Action: "nest", Path: "/data/nested"},
		{Action: "escape", Path: "/data/outside", Inherit: []uint64{}, Size: escapeSize},
		{Action: "escape", Path: "/data/into-neighbour", Inherit: []uint64{qgroupLevel1 | neighbourSubvolume}, Size: escapeSize},
		{Action: "fill", Path: "/data/fill.bin", Size: escapeSize},
	})
	for _, attack := range attacks[:4] {
		if attack.Errno != "ENOTTY" {
			t.Errorf("tenant %s %s (inheriting %v): %q (written %d), want ENOTTY: no btrfs ioctl may reach the pool",
				attack.Action, attack.Path, attack.Inherit, attack.Error, attack.Written)
		}
	}
	fill := attacks[4]
	if fill.Errno != "EDQUOT" || fill.Written > tenantSize {
		t.Errorf("the tenant wrote %.1f MiB into its %d MiB volume and ended with %q, want EDQUOT within its size",
			float64(fill.Written)/(1<<20), tenantSize>>20, fill.Error)
	}
	t.Logf("the tenant wrote %.1f MiB into its %d MiB volume: %s", float64(fill.Written)/(1<<20), tenantSize>>20, fill.Error)

	mine := runTenantPod(ctx, t, namespace, "neighbour-write", "neighbour", program, []tenantStep{
		{Action: "fill", Path: "/data/mine.bin", Size: neighbourSize - tenantSlack - 1<<20},
	})[0]
	if mine.Error != "" {
		t.Errorf("the neighbour wrote only %.1f MiB of %d MiB into its own volume: %s", float64(mine.Written)/(1<<20), (neighbourSize-tenantSlack-1<<20)>>20, mine.Error)
	}

	snapshot := &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: "tenant", Namespace: namespace},
		Spec: snapv1.VolumeSnapshotSpec{
			Source:                  snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To("tenant")},
			VolumeSnapshotClassName: ptr.To("toposnap"),
		},
	}
	if _, err := snaps.SnapshotV1().VolumeSnapshots(namespace).Create(ctx, snapshot, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create the tenant's VolumeSnapshot: %v", err)
	}
	var status *snapv1.VolumeSnapshotStatus
	err = cluster.Poll(ctx, time.Second, 3*time.Minute, func() (bool, error) {
		current, err := snaps.SnapshotV1().VolumeSnapshots(namespace).Get(ctx, snapshot.Name, metav1.GetOptions{})
		if err != nil || current.Status == nil {
			return false, nil
		}
		status = current.Status
		return ptr.Deref(status.ReadyToUse, false) || status.Error != nil, nil
	})
	if err != nil || !ptr.Deref(status.ReadyToUse, false) {
		described, _ := testCluster.Kubectl(ctx, "describe", "volumesnapshot,volumesnapshotcontent", "-n", namespace)
		t.Fatalf("the tenant's snapshot is not ready (status %+v): %v\n%s", status, err, described)
	}
}

// boundVolume waits for claim to be bound and returns its volume handle.
func boundVolume(ctx context.Context, t *testing.T, namespace, claim string) string {
	t.Helper()
	var handle string
	err := cluster.Poll(ctx, time.Second, 3*time.Minute, func() (bool, error) {
		pvc, err := testCluster.Client.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, claim, metav1.GetOptions{})
		if err != nil || pvc.Spec.VolumeName == "" {
			return false, nil
		}
		pv, err := testCluster.Client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
		if err != nil || pv.Spec.CSI == nil {
			return false, nil
		}
		handle = pv.Spec.CSI.VolumeHandle
		return true, nil
	})
	if err != nil {
		t.Fatalf("claim %s never bound: %v", claim, err)
	}
	return handle
}

// buildTenantProgram builds test/node/tenant as a static binary in a
// directory the pods mount read-only from the host (no image carries it).
func buildTenantProgram(t *testing.T) string {
	t.Helper()
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := testNode.path("hostile-tenant", "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(dir, "tenant"), "./test/node/tenant")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build test/node/tenant: %v\n%s", err, out)
	}
	return dir
}

// btrfsNodePool mounts a loop-backed btrfs filesystem for the node pool
// until the test ends.
func btrfsNodePool(t *testing.T) string {
	t.Helper()
	dir := testNode.path("hostile-tenant", "pool")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	pool, err := testpool.NewBtrfs(dir, 2<<30)
	if err != nil {
		t.Fatalf("btrfs node pool: %v", err)
	}
	t.Cleanup(func() {
		if err := pool.Close(); err != nil {
			t.Errorf("remove the btrfs node pool: %v", err)
		}
	})
	return pool.Dir
}

// installToposnapOn installs the chart with its node pool on the btrfs
// filesystem at pool, and uninstalls it when the test ends, so the
// package's other tests install their own. A release already there (an
// earlier test's, on the node's plain directory pool) is uninstalled first.
func installToposnapOn(ctx context.Context, t *testing.T, pool string) {
	t.Helper()
	if _, err := testNode.Helm(ctx, "status", ReleaseName, "--namespace", ReleaseNamespace); err == nil {
		t.Logf("uninstalling the release already installed, to install it on a btrfs pool")
		uninstallToposnap(t)
	}
	t.Cleanup(func() { uninstallToposnap(t) })
	values := map[string]any{"node": map[string]any{"pool": map[string]any{"hostPath": pool, "backend": "btrfs", "capacity": "1Gi"}}}
	if err := testNode.InstallToposnap(ctx, InstallOptions{Values: values}); err != nil {
		t.Fatalf("install toposnap on a btrfs pool: %v\n%s", err, testNode.describeRelease(ctx))
	}
}

func uninstallToposnap(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := testNode.Helm(ctx, "uninstall", ReleaseName, "--namespace", ReleaseNamespace, "--wait", "--timeout", "4m"); err != nil {
		t.Errorf("helm uninstall: %v\n%s", err, out)
	}
}

// removeTenantNamespace deletes the test's namespace and waits for its
// volumes and snapshot contents to be gone, which needs the driver: it
// runs before the release is uninstalled.
func removeTenantNamespace(t *testing.T, snaps snapclient.Interface, namespace string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	client := testCluster.Client
	if err := client.CoreV1().Namespaces().Delete(ctx, namespace, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete namespace %s: %v", namespace, err)
		return
	}
	err := cluster.Poll(ctx, time.Second, 4*time.Minute, func() (bool, error) {
		if _, err := client.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			return false, nil
		}
		volumes, err := client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, pv := range volumes.Items {
			if ref := pv.Spec.ClaimRef; ref != nil && ref.Namespace == namespace {
				return false, nil
			}
		}
		contents, err := snaps.SnapshotV1().VolumeSnapshotContents().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, content := range contents.Items {
			if content.Spec.VolumeSnapshotRef.Namespace == namespace {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		described, _ := testCluster.Kubectl(ctx, "get", "pv,volumesnapshotcontent,namespace", "-o", "wide")
		t.Errorf("namespace %s's volumes and snapshots were never removed: %v\n%s", namespace, err, described)
	}
}

// tenantClaim is a claim of the chart's node-scope class.
func tenantClaim(name string, size int64) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To("toposnap-node"),
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(size, resource.BinarySI)}},
		},
	}
}

// runTenantPod runs the program with steps in an unprivileged pod that
// mounts claim at /data, waits for it to finish and returns one outcome per
// step from its log.
func runTenantPod(ctx context.Context, t *testing.T, namespace, name, claim, program string, steps []tenantStep) []tenantOutcome {
	t.Helper()
	arg, err := json.Marshal(steps)
	if err != nil {
		t.Fatal(err)
	}
	client := testCluster.Client
	pod := tenantPod(name, claim, program, string(arg))
	if _, err := client.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	var phase corev1.PodPhase
	err = cluster.Poll(ctx, time.Second, 5*time.Minute, func() (bool, error) {
		current, err := client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		phase = current.Status.Phase
		return phase == corev1.PodSucceeded || phase == corev1.PodFailed, nil
	})
	logs, logErr := client.CoreV1().Pods(namespace).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil || phase != corev1.PodSucceeded {
		described, _ := testCluster.Kubectl(ctx, "describe", "pod,pvc", "-n", namespace)
		t.Fatalf("pod %s did not succeed (phase %q, %v; logs %q, %v)\n%s", name, phase, err, logs, logErr, described)
	}
	var outcomes []tenantOutcome
	lines := bufio.NewScanner(bytes.NewReader(logs))
	for lines.Scan() {
		var outcome tenantOutcome
		if err := json.Unmarshal(lines.Bytes(), &outcome); err != nil {
			t.Fatalf("pod %s logged %q, not a JSON outcome: %v", name, lines.Text(), err)
		}
		t.Logf("%s: %s", name, lines.Text())
		outcomes = append(outcomes, outcome)
	}
	if len(outcomes) != len(steps) {
		t.Fatalf("pod %s logged %d outcomes for %d steps: %q", name, len(outcomes), len(steps), logs)
	}
	return outcomes
}

// tenantPod runs test/node/tenant (mounted read-only from the host
// directory program) as uid 1000 with no capabilities, no privilege
// escalation and the runtime's default seccomp profile: any pod's rights.
func tenantPod(name, claim, program, steps string) *corev1.Pod {
	user := ptr.To[int64](1000)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			SecurityContext: &corev1.PodSecurityContext{
				RunAsUser: user, RunAsGroup: user, FSGroup: user, RunAsNonRoot: ptr.To(true),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name:    "tenant",
				Image:   busyboxImage,
				Command: []string{"/tenant/tenant", steps},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr.To(false),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
					ReadOnlyRootFilesystem:   ptr.To(true),
				},
				VolumeMounts: []corev1.VolumeMount{
					{Name: "data", MountPath: "/data"},
					{Name: "program", MountPath: "/tenant", ReadOnly: true},
				},
			}},
			Volumes: []corev1.Volume{
				{Name: "data", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}},
				{Name: "program", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: program, Type: ptr.To(corev1.HostPathDirectory)}}},
			},
			TerminationGracePeriodSeconds: new(int64),
		},
	}
}
