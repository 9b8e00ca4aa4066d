package webhooke2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/toposnap/toposnap/internal/topology"

	"github.com/toposnap/toposnap/test/cluster"
)

// Zones: the seed's nodes are all in cluster.SeedZone (cn-hangzhou-b).
const (
	zoneD    = "cn-hangzhou-d"
	otherCSI = "other.csi.example.com"
)

// warnings collects the warnings the API server returns to a client.
type warnings struct {
	mu   sync.Mutex
	list []string
}

// HandleWarningHeader is rest.WarningHandler.
func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

// take returns the warnings so far and forgets them.
func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	list := w.list
	w.list = nil
	return list
}

// clients are API clients whose warnings are collected.
type clients struct {
	kube      kubernetes.Interface
	snapshots snapshotclient.Interface
	warnings  *warnings
}

func newClients(t *testing.T) clients {
	t.Helper()
	collected := &warnings{}
	config := rest.CopyConfig(env.cluster.RestConfig)
	config.WarningHandler = collected
	kube, err := kubernetes.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	snapshots, err := snapshotclient.NewForConfig(config)
	if err != nil {
		t.Fatal(err)
	}
	return clients{kube: kube, snapshots: snapshots, warnings: collected}
}

// createNamespace creates a namespace for one test, with labels, and
// deletes it after.
func createNamespace(t *testing.T, labels map[string]string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "webhook-e2e-", Labels: labels}}
	created, err := env.cluster.Client.CoreV1().Namespaces().Create(ctxFor(t, time.Minute), ns, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		_ = env.cluster.Client.CoreV1().Namespaces().Delete(context.Background(), created.Name, metav1.DeleteOptions{})
	})
	return created.Name
}

// createStorageClass creates class and deletes it after the test.
func createStorageClass(t *testing.T, class *storagev1.StorageClass) {
	t.Helper()
	if _, err := env.cluster.Client.StorageV1().StorageClasses().Create(ctxFor(t, time.Minute), class, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create StorageClass %s: %v", class.Name, err)
	}
	deleteAfter(t, class.Name)
}

// deleteAfter deletes the StorageClass name when the test ends.
func deleteAfter(t *testing.T, name string) {
	t.Cleanup(func() {
		_ = env.cluster.Client.StorageV1().StorageClasses().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
}

// storageClass is a class of provisioner, allowed only in zones if any.
func storageClass(name, provisioner string, zones ...string) *storagev1.StorageClass {
	class := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: provisioner}
	if len(zones) > 0 {
		class.AllowedTopologies = []corev1.TopologySelectorTerm{{MatchLabelExpressions: []corev1.TopologySelectorLabelRequirement{
			{Key: topology.ZoneKey, Values: zones},
		}}}
	}
	return class
}

// newClaim is a ReadWriteOnce claim of class requesting size.
func newClaim(namespace, name, class, size string) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "PersistentVolumeClaim"},
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: ptr.To(class),
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceStorage: resource.MustParse(size),
			}},
		},
	}
}

// cloneClaim is a claim of class requesting size cloned from the claim source.
func cloneClaim(namespace, name, class, size, source string) *corev1.PersistentVolumeClaim {
	claim := newClaim(namespace, name, class, size)
	claim.Spec.DataSource = &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: source}
	return claim
}

// kubectlApply writes object as YAML to a file and runs kubectl apply -f
// on it (the cluster's Kubectl takes no stdin), with extra flags.
func kubectlApply(t *testing.T, ctx context.Context, object any, flags ...string) error {
	t.Helper()
	data, err := yaml.Marshal(object)
	if err != nil {
		t.Fatal(err)
	}
	file, err := os.CreateTemp(t.TempDir(), "object-*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := file.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := file.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = env.cluster.Kubectl(ctx, append([]string{"apply", "-f", filepath.Clean(file.Name())}, flags...)...)
	return err
}

// containsAll reports whether text contains every one of wants.
func containsAll(text string, wants ...string) bool {
	for _, want := range wants {
		if !strings.Contains(text, want) {
			return false
		}
	}
	return true
}

// poll waits with a deadline; see cluster.Poll.
var poll = cluster.Poll

// needEnv skips a test when no cluster runs (-short).
func needEnv(t *testing.T) {
	t.Helper()
	if env == nil {
		t.Skip("needs the local control plane (not started with -short)")
	}
}

// ctxFor is a context for one test, ended after d or when the test ends.
func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
