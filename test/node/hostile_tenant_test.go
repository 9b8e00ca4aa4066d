package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/testpool"
	"github.com/toposnap/toposnap/test/cluster"
)

// The hostile tenant's volumes and what it may get past its own: the
// nested-subvolume watcher puts an escaped subvolume back under its
// volume's limit within milliseconds, and what a pod writes meanwhile is
// bounded (driver/store/btrfs TestWatchBoundsInheritanceEscape's
// maxOvershoot).
const (
	tenantSize    = 32 << 20
	neighbourSize = 64 << 20
	tenantSlack   = 8 << 20
	// escapeSize is what each escape tries to write: three times its limit.
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
// program test/node/tenant against a btrfs node pool installed by helm.
// The tenant nests a plain subvolume in one of its volumes, and in each of
// its two volumes creates a subvolume whose qgroup inheritance list names
// nothing, or its neighbour's limit group, and writes three times the
// volume's size into it: each write ends in EDQUOT with no more than the
// size and a little slack written, the neighbour can still write all of
// its size but that slack afterwards, and a VolumeSnapshot of the tenant's
// claim is refused with a reason naming the nested subvolume, never cut
// with a hole where it is.
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
	for name, size := range map[string]int64{"tenant": tenantSize, "tenant-b": tenantSize, "neighbour": neighbourSize} {
		if _, err := client.CoreV1().PersistentVolumeClaims(namespace).Create(ctx, tenantClaim(name, size), metav1.CreateOptions{}); err != nil {
			t.Fatalf("create claim %s: %v", name, err)
		}
	}

	// Whose limit group to name: the neighbour's pod reads its volume's
	// subvolume id, which any user may (INO_LOOKUP).
	probe := runTenantPod(ctx, t, namespace, "neighbour-id", "neighbour", program, []tenantStep{{Action: "subvolume-id", Path: "/data"}})
	if probe[0].Error != "" || probe[0].Subvolume == 0 {
		t.Fatalf("the neighbour's pod could not read its subvolume id: %+v", probe[0])
	}
	neighbourGroup := qgroupLevel1 | probe[0].Subvolume

	// Each escape on a volume of its own, with room to write: one that
	// found its volume already full would prove nothing.
	attacks := runTenantPod(ctx, t, namespace, "tenant", "tenant", program, []tenantStep{
		{Action: "nest", Path: "/data/nested"},
		{Action: "escape", Path: "/data/outside", Inherit: []uint64{}, Size: escapeSize},
	})
	nest, outside := attacks[0], attacks[1]
	// The plain nested subvolume proves the pod may create subvolumes in
	// its volume at all: the escapes are stopped by the limit, not by a
	// permission.
	if nest.Error != "" {
		t.Fatalf("the tenant could not nest a plain subvolume in its volume: %s", nest.Error)
	}
	intoNeighbour := runTenantPod(ctx, t, namespace, "tenant-b", "tenant-b", program, []tenantStep{
		{Action: "escape", Path: "/data/into-neighbour", Inherit: []uint64{neighbourGroup}, Size: escapeSize},
	})[0]
	for _, escape := range []tenantOutcome{outside, intoNeighbour} {
		refusedAtCreate := escape.Written == 0 && strings.HasPrefix(escape.Error, "create subvolume")
		if !refusedAtCreate && escape.Errno != "EDQUOT" {
			t.Errorf("escape %s (inheriting %v) wrote %.1f MiB and ended with %q, want EDQUOT", escape.Path, escape.Inherit, float64(escape.Written)/(1<<20), escape.Error)
		}
		if escape.Written > tenantSize+tenantSlack {
			t.Errorf("escape %s (inheriting %v) wrote %.1f MiB into a %d MiB volume, want at most %d MiB",
				escape.Path, escape.Inherit, float64(escape.Written)/(1<<20), tenantSize>>20, (tenantSize+tenantSlack)>>20)
		}
		t.Logf("escape %s (inheriting %v) wrote %.1f MiB into a %d MiB volume: %s", escape.Path, escape.Inherit, float64(escape.Written)/(1<<20), tenantSize>>20, escape.Error)
	}

	// The neighbour is untouched: what the tenant charged to its group
	// went back with the nested subvolume, and its whole size is its own.
	mine := runTenantPod(ctx, t, namespace, "neighbour-write", "neighbour", program, []tenantStep{
		{Action: "fill", Path: "/data/mine.bin", Size: neighbourSize - tenantSlack},
	})[0]
	if mine.Error != "" {
		t.Errorf("the neighbour wrote only %.1f MiB of %d MiB into its own volume: %s", float64(mine.Written)/(1<<20), (neighbourSize-tenantSlack)>>20, mine.Error)
	}

	// A snapshot of the tenant's volume would show an empty directory
	// where the nested subvolume is: it is refused, and says why.
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
		if err != nil {
			return false, nil
		}
		status = current.Status
		if status == nil {
			return false, nil
		}
		if ptr.Deref(status.ReadyToUse, false) {
			return true, nil
		}
		return status.Error != nil && strings.Contains(ptr.Deref(status.Error.Message, ""), `"nested"`), nil
	})
	if err != nil {
		described, _ := testCluster.Kubectl(ctx, "describe", "volumesnapshot,volumesnapshotcontent", "-n", namespace)
		t.Fatalf("the tenant's snapshot was never refused naming \"nested\" (status %+v): %v\n%s", status, err, described)
	}
	if ptr.Deref(status.ReadyToUse, false) {
		t.Fatalf("the tenant's snapshot is ready though its volume holds the nested subvolume \"nested\", which a btrfs snapshot leaves out")
	}
	t.Logf("snapshot refused: %s", ptr.Deref(status.Error.Message, ""))
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
