package startup

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/clientcmd"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/certs/certstest"
	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/harness"
)

const (
	driverName = "csi.toposnap.io"
	namespace  = "default"
	className  = "startup-node"
	// worker runs the node processes; other is a node they do not run on.
	worker, other = "node1", "node2"
	// settle bounds each wait for a process to notice a change: the API
	// checks back off to a minute at most, informers to 30 s.
	settle = 2 * time.Minute
)

// TestComponentsStartedBeforeTheAPIServerAndTheSnapshotCRDs starts every
// toposnap process while the API server cannot be reached and the snapshot
// CRDs do not exist, then makes the API server reachable, then installs the
// CRDs, and checks at each step what each process does.
func TestComponentsStartedBeforeTheAPIServerAndTheSnapshotCRDs(t *testing.T) {
	if testCluster == nil {
		t.Skip("needs the local control plane (not started with -short)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	c := testCluster
	snaps, err := snapshotclient.NewForConfig(c.RestConfig)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	proxy, err := newAPIProxy(strings.TrimPrefix(c.RestConfig.Host, "https://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Down)
	viaProxy := proxyKubeconfig(t, c.Kubeconfig, proxy.address, dir)

	// The kubelet labels a node with the driver's node key on plugin
	// registration; no kubelet runs here.
	for _, name := range []string{worker, other} {
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, topology.NodeKey, name)
		if _, err := c.Client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// Step 1: the API server is unreachable and the CRDs are missing.
	processes := &processes{t: t, dir: dir}
	extender := "http://" + freeAddress(t)
	processes.start("extender", "--kubeconfig", viaProxy, "--listen", strings.TrimPrefix(extender, "http://"),
		"--explain-pending=false", "--v", "2")
	pair := certstest.NewPair(t, "127.0.0.1")
	files := certstest.NewFiles(t)
	files.WriteInPlace(t, pair)
	webhook := "https://" + freeAddress(t)
	processes.start("webhook", "--kubeconfig", viaProxy, "--listen", strings.TrimPrefix(webhook, "https://"),
		"--tls-cert-file", files.Cert, "--tls-key-file", files.Key, "--v", "2")
	socket := filepath.Join(dir, "csi.sock")
	// The driver reads its node's labels straight from the API server: its
	// own start-up is not under test here.
	processes.start("driver", "--endpoint", "unix://"+socket, "--node-id", worker,
		"--data-dir", filepath.Join(dir, "pool"), "--zone-data-dir", filepath.Join(dir, "zone-pool"), "--capacity", "10Gi",
		"--kubeconfig", c.Kubeconfig, "--v", "2")
	provisionerMetrics, snapshotterMetrics := "http://"+freeAddress(t), "http://"+freeAddress(t)
	processes.start("provisioner", "--csi-address", socket, "--node-name", worker, "--kubeconfig", viaProxy,
		"--capacity-namespace", namespace, "--capacity-interval", "2s",
		"--metrics-address", strings.TrimPrefix(provisionerMetrics, "http://"), "--v", "2")
	processes.start("snapshotter", "--csi-address", socket, "--node-name", worker, "--kubeconfig", viaProxy,
		"--common-controller", "--metrics-address", strings.TrimPrefix(snapshotterMetrics, "http://"), "--v", "2")

	web := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // a test webhook's self-signed pair
	for _, probe := range []struct{ url, waitingFor string }{
		{extender + "/readyz", "waiting for the caches"},
		{webhook + "/readyz", "is the API server reachable"},
		{provisionerMetrics + "/readyz", "waiting for the informer caches"},
		{snapshotterMetrics + "/readyz", "waiting for the informer caches"},
	} {
		healthz := strings.TrimSuffix(probe.url, "/readyz") + "/healthz"
		waitFor(t, ctx, healthz+" answers 200 while the API server is unreachable", time.Minute, func() (bool, string) {
			code, body := get(web, healthz)
			return code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
		})
		if code, body := get(web, probe.url); code != http.StatusServiceUnavailable || !strings.Contains(body, probe.waitingFor) {
			t.Fatalf("%s = %d %q while the API server is unreachable, want 503 saying %q", probe.url, code, body, probe.waitingFor)
		}
	}
	restorePod := podWith("restore")
	if result := filter(t, extender, restorePod); !strings.Contains(result.Error, "toposnap extender is starting") {
		t.Fatalf("filter while the API server is unreachable = %+v, want an error the scheduler retries", result)
	}

	// Step 2: the API server answers; still no CRDs.
	if err := proxy.Up(); err != nil {
		t.Fatal(err)
	}
	for _, url := range []string{extender + "/readyz", webhook + "/readyz", provisionerMetrics + "/readyz", snapshotterMetrics + "/readyz"} {
		waitFor(t, ctx, url+" answers 200 once the API server answers, without the snapshot CRDs", settle, func() (bool, string) {
			code, body := get(web, url)
			return code == http.StatusOK, fmt.Sprintf("%d %s", code, body)
		})
	}
	class := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: className}, Provisioner: driverName,
		Parameters: map[string]string{"scope": "node"}, VolumeBindingMode: ptr.To(storagev1.VolumeBindingWaitForFirstConsumer)}
	if _, err := c.Client.StorageV1().StorageClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	source := &corev1.TypedLocalObjectReference{APIGroup: ptr.To(snapv1.GroupName), Kind: "VolumeSnapshot", Name: "snap"}
	createClaim(t, ctx, "plain", worker, nil)
	createClaim(t, ctx, "restore", "", source)
	waitBound(t, ctx, "plain", "the provisioner provisions a plain claim without the snapshot CRDs")
	waitFor(t, ctx, "the extender places a restore anywhere without a snapshot API (nothing says where snapshots live)", settle, func() (bool, string) {
		// Polled: the claim, just created, may not be in its cache yet.
		result := filter(t, extender, restorePod)
		return result.Error == "" && len(*result.NodeNames) == 2, fmt.Sprintf("%+v", result)
	})

	// Step 3: the snapshot CRDs appear.
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if err := harness.InstallSnapshotCRDs(ctx, c, root); err != nil {
		t.Fatal(err)
	}
	snapshotClass := &snapv1.VolumeSnapshotClass{ObjectMeta: metav1.ObjectMeta{Name: "startup",
		Annotations: map[string]string{"snapshot.storage.kubernetes.io/is-default-class": "true"}},
		Driver: driverName, DeletionPolicy: snapv1.VolumeSnapshotContentDelete}
	if _, err := snaps.SnapshotV1().VolumeSnapshotClasses().Create(ctx, snapshotClass, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	snapshot := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "snap", Namespace: namespace},
		Spec: snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: ptr.To("plain")},
			VolumeSnapshotClassName: ptr.To(snapshotClass.Name)}}
	if _, err := snaps.SnapshotV1().VolumeSnapshots(namespace).Create(ctx, snapshot, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the snapshotter, started before the CRDs, cuts the snapshot", settle, func() (bool, string) {
		got, err := snaps.SnapshotV1().VolumeSnapshots(namespace).Get(ctx, "snap", metav1.GetOptions{})
		if err != nil || got.Status == nil {
			return false, fmt.Sprint(err)
		}
		return ptr.Deref(got.Status.ReadyToUse, false), fmt.Sprintf("status %+v", *got.Status)
	})
	waitFor(t, ctx, "the extender places the restore only where its snapshot lives", settle, func() (bool, string) {
		result := filter(t, extender, restorePod)
		return result.Error == "" && strings.Join(*result.NodeNames, ",") == worker &&
			strings.Contains(result.FailedAndUnresolvableNodes[other], "can be restored only"), fmt.Sprintf("%+v", result)
	})
	if code, body := get(web, extender+"/readyz"); code != http.StatusOK {
		t.Fatalf("extender /readyz = %d %q with the API and the CRDs there", code, body)
	}
	if response := review(t, web, webhook, "restore-2", source); !response.Allowed {
		t.Fatalf("the webhook refuses a restore of a ready snapshot: %+v", response.Result)
	}
	if response := review(t, web, webhook, "restore-3", &corev1.TypedLocalObjectReference{
		APIGroup: ptr.To(snapv1.GroupName), Kind: "VolumeSnapshot", Name: "missing"}); response.Allowed {
		t.Fatal("the webhook admits a restore of a snapshot that does not exist")
	}
	selectNode(t, ctx, "restore", worker)
	waitBound(t, ctx, "restore", "the provisioner, started before the CRDs, restores the snapshot")
}

// processes runs the toposnap binaries, each logging to dir/<name>.log,
// until the test ends; a failed test prints their logs' tails.
type processes struct {
	t   *testing.T
	dir string
}

func (p *processes) start(name string, args ...string) {
	p.t.Helper()
	logPath := filepath.Join(p.dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		p.t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "toposnap-"+name), args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", name, err)
	}
	p.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		logFile.Close()
		if p.t.Failed() {
			p.t.Logf("last lines of %s:\n%s", logPath, tail(logPath, 40))
		}
	})
}

// tail is the last n lines of a file.
func tail(path string, n int) string {
	file, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer file.Close()
	var lines []string
	scanner := bufio.NewScanner(file)
	scanner.Buffer(make([]byte, 1<<20), 1<<20)
	for scanner.Scan() {
		lines = append(lines, scanner.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// proxyKubeconfig writes a copy of the admin kubeconfig that reaches the
// API server through the proxy.
func proxyKubeconfig(t *testing.T, kubeconfig, address, dir string) string {
	t.Helper()
	config, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, cluster := range config.Clusters {
		cluster.Server = "https://" + address
	}
	path := filepath.Join(dir, "kubeconfig-via-proxy")
	if err := clientcmd.WriteToFile(*config, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func freeAddress(t *testing.T) string {
	t.Helper()
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// waitFor polls check until it holds or timeout passes; last says what was
// seen, for the failure message.
func waitFor(t *testing.T, ctx context.Context, what string, timeout time.Duration, check func() (ok bool, last string)) {
	t.Helper()
	var last string
	err := cluster.Poll(ctx, 250*time.Millisecond, timeout, func() (bool, error) {
		var ok bool
		ok, last = check()
		return ok, nil
	})
	if err != nil {
		t.Fatalf("%s: not within %s (%v); last seen: %s", what, timeout, err, last)
	}
}

// get answers a GET's status and body; 0 when it could not connect.
func get(client *http.Client, url string) (int, string) {
	response, err := client.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer response.Body.Close()
	body, _ := io.ReadAll(response.Body)
	return response.StatusCode, strings.TrimSpace(string(body))
}

// podWith is a pod using claim, as the scheduler would send it.
func podWith(claim string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "app-" + claim, Namespace: namespace},
		Spec: corev1.PodSpec{Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}}}}
}

// filter asks the extender where pod fits among the two workers, as
// kube-scheduler would (nodeCacheCapable: names only).
func filter(t *testing.T, extender string, pod *corev1.Pod) extenderv1.ExtenderFilterResult {
	t.Helper()
	names := []string{worker, other}
	body, err := json.Marshal(extenderv1.ExtenderArgs{Pod: pod, NodeNames: &names})
	if err != nil {
		t.Fatal(err)
	}
	response, err := http.Post(extender+"/filter", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("filter: %v", err)
	}
	defer response.Body.Close()
	var result extenderv1.ExtenderFilterResult
	if err := json.NewDecoder(response.Body).Decode(&result); err != nil || response.StatusCode != http.StatusOK {
		t.Fatalf("filter answered %s: %v", response.Status, err)
	}
	if result.NodeNames == nil {
		t.Fatalf("filter answered without NodeNames: %+v", result)
	}
	return result
}

// review asks the webhook about creating a claim restoring source, as the
// API server would.
func review(t *testing.T, client *http.Client, webhook, name string, source *corev1.TypedLocalObjectReference) *admissionv1.AdmissionResponse {
	t.Helper()
	claim := claimSpec(name, source)
	raw, err := json.Marshal(claim)
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: "startup", Operation: admissionv1.Create, Namespace: namespace, Name: name,
			Kind:     metav1.GroupVersionKind{Version: "v1", Kind: "PersistentVolumeClaim"},
			Resource: metav1.GroupVersionResource{Version: "v1", Resource: "persistentvolumeclaims"},
			Object:   runtime.RawExtension{Raw: raw}},
	})
	if err != nil {
		t.Fatal(err)
	}
	response, err := client.Post(webhook+"/validate/pvc", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("webhook: %v", err)
	}
	defer response.Body.Close()
	var answer admissionv1.AdmissionReview
	if err := json.NewDecoder(response.Body).Decode(&answer); err != nil || answer.Response == nil {
		t.Fatalf("webhook answered %s: %v", response.Status, err)
	}
	return answer.Response
}

// claimSpec is a 1Gi claim of the test class, restoring source if not nil.
func claimSpec(name string, source *corev1.TypedLocalObjectReference) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To(className),
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			DataSource:       source,
		},
	}
}

// createClaim creates a claim, promised to selectedNode as the scheduler
// would (empty: not yet).
func createClaim(t *testing.T, ctx context.Context, name, selectedNode string, source *corev1.TypedLocalObjectReference) {
	t.Helper()
	claim := claimSpec(name, source)
	if selectedNode != "" {
		claim.Annotations = map[string]string{"volume.kubernetes.io/selected-node": selectedNode}
	}
	if _, err := testCluster.Client.CoreV1().PersistentVolumeClaims(namespace).Create(ctx, claim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// selectNode promises a claim to node, as the scheduler does once it
// placed the claim's pod.
func selectNode(t *testing.T, ctx context.Context, claim, node string) {
	t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"annotations":{"volume.kubernetes.io/selected-node":%q}}}`, node)
	if _, err := testCluster.Client.CoreV1().PersistentVolumeClaims(namespace).Patch(ctx, claim, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitBound waits until the claim is bound to a PV on the worker.
func waitBound(t *testing.T, ctx context.Context, claim, what string) {
	t.Helper()
	waitFor(t, ctx, what, settle, func() (bool, string) {
		got, err := testCluster.Client.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, claim, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		return got.Status.Phase == corev1.ClaimBound, fmt.Sprintf("phase %s, annotations %v", got.Status.Phase, got.Annotations)
	})
}
