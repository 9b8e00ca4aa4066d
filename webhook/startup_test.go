package webhook

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapshotfake "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned/fake"
	admissionv1 "k8s.io/api/admission/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/toposnap/toposnap/internal/certs/certstest"
	"github.com/toposnap/toposnap/internal/topology"
)

// stateWithoutSnapshotCaches is the claim tests' cluster with its core
// caches filled and no snapshot caches (the snapshot API absent or not
// known yet): snapshots are read through client.
func stateWithoutSnapshotCaches(t *testing.T, client *snapshotfake.Clientset) State {
	t.Helper()
	indexer := func(objects ...runtime.Object) cache.Indexer {
		i := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
		for _, o := range objects {
			if err := i.Add(o); err != nil {
				t.Fatal(err)
			}
		}
		return i
	}
	nodes := make([]runtime.Object, 0, 3)
	for _, n := range seedNodes() {
		nodes = append(nodes, n)
	}
	return NewState(Listers{
		StorageClasses: storagelisters.NewStorageClassLister(indexer(withMode(storageClass("toposnap", DriverName, zoneB), storagev1.VolumeBindingWaitForFirstConsumer))),
		Nodes:          corelisters.NewNodeLister(indexer(nodes...)),
		Claims:         corelisters.NewPersistentVolumeClaimLister(indexer()),
		Snapshots:      func() (SnapshotListers, bool) { return SnapshotListers{}, false },
	}, nil, client)
}

// fakeSnapshots is the snapshot client's fake clientset over objects.
func fakeSnapshots(objects ...runtime.Object) *snapshotfake.Clientset {
	// The snapshot client generates no apply configurations, so it has no
	// NewClientset to use instead.
	return snapshotfake.NewSimpleClientset(objects...) //nolint:staticcheck // see above
}

// absentSnapshotAPI makes client answer as an API server without the
// snapshot CRDs: NotFound for every snapshot resource.
func absentSnapshotAPI(client *snapshotfake.Clientset) {
	client.PrependReactor("*", "*", func(action clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewNotFound(schema.GroupResource{Group: snapv1.GroupName, Resource: action.GetResource().Resource}, "")
	})
}

func TestClaimsAreDecidedWithoutSnapshotCaches(t *testing.T) {
	zoneBSegment := topology.Segment{topology.ZoneKey: zoneB}
	tests := []struct {
		name        string
		client      func() *snapshotfake.Clientset
		snapshot    string
		wantAllowed bool
		wantReason  string
	}{
		{"restore of a ready snapshot is read from the API server and admitted",
			func() *snapshotfake.Clientset {
				return fakeSnapshots(readySnapshot("ready", "content-ready", "2Gi"), snapshotContent("content-ready", DriverName, zoneBSegment))
			},
			"ready", true, ""},
		{"restore of a snapshot that is not there is refused",
			func() *snapshotfake.Clientset { return fakeSnapshots() },
			"missing", false, "VolumeSnapshot app/missing not found"},
		{"restore where the API server serves no snapshot API is refused: no snapshot can exist",
			func() *snapshotfake.Clientset {
				client := fakeSnapshots()
				absentSnapshotAPI(client)
				return client
			},
			"ready", false, "VolumeSnapshot app/ready not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state := stateWithoutSnapshotCaches(t, tt.client())
			decision, err := ValidateClaim(context.Background(), restoring(claim("new", "toposnap", "2Gi"), snapv1.GroupName, tt.snapshot), true, state)
			if err != nil {
				t.Fatal(err)
			}
			if decision.Allowed != tt.wantAllowed || !strings.Contains(decision.Message(), tt.wantReason) {
				t.Fatalf("allowed %v %q, want %v saying %q", decision.Allowed, decision.Message(), tt.wantAllowed, tt.wantReason)
			}
		})
	}
}

func TestSnapshotClassesAreListedWithoutSnapshotCaches(t *testing.T) {
	existing := snapshotClass("existing", DriverName, true)
	served := fakeSnapshots(existing)
	classes, err := stateWithoutSnapshotCaches(t, served).VolumeSnapshotClasses()
	if err != nil || len(classes) != 1 || classes[0].Name != "existing" {
		t.Fatalf("classes from the API server = %v, %v; want [existing]", classes, err)
	}
	absent := fakeSnapshots()
	absentSnapshotAPI(absent)
	classes, err = stateWithoutSnapshotCaches(t, absent).VolumeSnapshotClasses()
	if err != nil || len(classes) != 0 {
		t.Fatalf("classes without a snapshot API = %v, %v; want none", classes, err)
	}
}

func TestRequestsWhileTheCachesFillAreRefusedSayingSo(t *testing.T) {
	starting := errors.New("the webhook is starting: its caches are filling")
	state := NewState(Listers{Loaded: func() error { return starting }}, nil, nil)
	server := newTestServer(state)
	recorder := post(server, PathValidateClaim, strings.NewReader(string(reviewOf(t, claimsResource, admissionv1.Create,
		restoring(claim("new", "toposnap", "2Gi"), snapv1.GroupName, "ready"), nil))))
	response := answer(t, recorder)
	if response.Allowed || !strings.Contains(response.Result.Message, "the webhook is starting") {
		t.Fatalf("answer %+v, want a refusal saying the webhook is starting", response.Result)
	}
	for path, want := range map[string]int{PathReadyz: http.StatusServiceUnavailable, PathHealthz: http.StatusOK} {
		recorder := httptest.NewRecorder()
		server.ServeHTTP(recorder, httptest.NewRequest(http.MethodGet, path, nil))
		if recorder.Code != want {
			t.Errorf("%s = %d %q while the caches fill, want %d", path, recorder.Code, recorder.Body, want)
		}
	}
}

func TestRunServesBeforeTheAPIServerAnswers(t *testing.T) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	apiAddress := listener.Addr().String()
	listener.Close() // nothing listens there: the API server is down
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://%s", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`, apiAddress)), 0o600); err != nil {
		t.Fatal(err)
	}
	listener, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	address := listener.Addr().String()
	listener.Close()
	files := certstest.NewFiles(t)
	files.WriteInPlace(t, certstest.NewPair(t, "webhook"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{Listen: address, TLSCertFile: files.Cert, TLSKeyFile: files.Key, Kubeconfig: kubeconfig})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	client := clientTrusting()
	client.Transport.(*http.Transport).TLSClientConfig.InsecureSkipVerify = true //nolint:gosec // status codes only
	deadline := time.Now().Add(20 * time.Second)
	for {
		response, err := client.Get("https://" + address + PathReadyz)
		if err == nil {
			body, _ := io.ReadAll(response.Body)
			response.Body.Close()
			if response.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "is the API server reachable") {
				t.Fatalf("/readyz = %d %q with the API server down, want 503 saying why", response.StatusCode, body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the webhook does not serve while the API server is down: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	response, err := client.Get("https://" + address + PathHealthz)
	if err != nil || response.StatusCode != http.StatusOK {
		t.Fatalf("/healthz = %v, %v with the API server down, want 200", response, err)
	}
	response.Body.Close()
}
