package kube

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapshotfake "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned/fake"
	snapshotinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	snapshotlisters "github.com/kubernetes-csi/external-snapshotter/client/v8/listers/volumesnapshot/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/discovery"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

func TestMain(m *testing.M) {
	// The fake clientsets do not play streaming lists (no initial-events
	// bookmark), which client-go's reflectors use by default: list instead.
	// Production informers stream; gatedWatch's streaming branch has its
	// own test.
	if err := os.Setenv("KUBE_FEATURE_WatchListClient", "false"); err != nil {
		panic(err)
	}
	os.Exit(m.Run())
}

// fakeSnapshots is the snapshot client's fake clientset over objects.
func fakeSnapshots(objects ...runtime.Object) *snapshotfake.Clientset {
	// The snapshot client generates no apply configurations, so it has no
	// NewClientset to use instead.
	return snapshotfake.NewSimpleClientset(objects...) //nolint:staticcheck // see above
}

// fakeDiscovery answers ServerResourcesForGroupVersion as set, and nothing
// else.
type fakeDiscovery struct {
	discovery.DiscoveryInterface
	mu        sync.Mutex
	resources []string // served resources; nil: the group version is not served
	err       error    // when set, every question fails with it
	asked     int
}

func (f *fakeDiscovery) set(resources []string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resources, f.err = resources, err
}

func (f *fakeDiscovery) ServerResourcesForGroupVersion(groupVersion string) (*metav1.APIResourceList, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked++
	switch {
	case f.err != nil:
		return nil, f.err
	case f.resources == nil:
		return nil, apierrors.NewNotFound(schema.GroupResource{}, groupVersion)
	}
	list := &metav1.APIResourceList{GroupVersion: groupVersion}
	for _, name := range f.resources {
		list.APIResources = append(list.APIResources, metav1.APIResource{Name: name})
	}
	return list, nil
}

var errRefused = errors.New("dial tcp 127.0.0.1:6443: connect: connection refused")

// fastWatch is an APIWatch over disc with intervals short enough for tests,
// running until the test ends.
func fastWatch(t *testing.T, disc discovery.DiscoveryInterface) *APIWatch {
	t.Helper()
	w := NewSnapshotAPIWatch(disc)
	w.retryFirst, w.retryMax, w.absentFirst, w.absentMax = time.Millisecond, 5*time.Millisecond, time.Millisecond, 5*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

// eventually polls check every few milliseconds for up to 10 s.
func eventually(t *testing.T, what string, check func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !check() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func presenceOf(w *APIWatch) Presence {
	presence, _, _ := w.State()
	return presence
}

func TestAPIWatchOnlyADefiniteAnswerDecides(t *testing.T) {
	all := SnapshotResources
	tests := []struct {
		name string
		// answers are what discovery says, in turn; the watch must reach
		// each want before the next answer is given.
		answers []func(*fakeDiscovery)
		want    []Presence
	}{
		{"errors leave it unknown until the API server answers NotFound",
			[]func(*fakeDiscovery){
				func(d *fakeDiscovery) { d.set(nil, errRefused) },
				func(d *fakeDiscovery) { d.set(nil, nil) },
			},
			[]Presence{PresenceUnknown, PresenceAbsent}},
		{"a served API stays served through errors",
			[]func(*fakeDiscovery){
				func(d *fakeDiscovery) { d.set(all, nil) },
				func(d *fakeDiscovery) { d.set(nil, errRefused) },
			},
			[]Presence{PresenceServed, PresenceServed}},
		{"a group served without one of the resources is absent",
			[]func(*fakeDiscovery){func(d *fakeDiscovery) { d.set(all[1:], nil) }},
			[]Presence{PresenceAbsent}},
		{"an absent API appearing later is seen without being asked",
			[]func(*fakeDiscovery){
				func(d *fakeDiscovery) { d.set(nil, nil) },
				func(d *fakeDiscovery) { d.set(all, nil) },
			},
			[]Presence{PresenceAbsent, PresenceServed}},
		{"a server error is not an answer",
			[]func(*fakeDiscovery){func(d *fakeDiscovery) { d.set(nil, apierrors.NewServiceUnavailable("aggregator down")) }},
			[]Presence{PresenceUnknown}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			disc := &fakeDiscovery{}
			tt.answers[0](disc)
			w := fastWatch(t, disc)
			for i, want := range tt.want {
				if i > 0 {
					tt.answers[i](disc)
				}
				// Let it ask a few times with this answer (asking it to, as
				// a served API is checked only on Recheck), so that a wrong
				// turn would show.
				disc.mu.Lock()
				asked := disc.asked
				disc.mu.Unlock()
				eventually(t, fmt.Sprintf("discovery is asked thrice after answer %d", i), func() bool {
					w.Recheck()
					disc.mu.Lock()
					defer disc.mu.Unlock()
					return disc.asked > asked+3
				})
				if got := presenceOf(w); got != want {
					t.Fatalf("presence %s after answer %d, want %s", got, i, want)
				}
			}
		})
	}
}

func TestAPIWatchServedIsCheckedAgainOnlyOnRecheck(t *testing.T) {
	disc := &fakeDiscovery{}
	disc.set(SnapshotResources, nil)
	w := fastWatch(t, disc)
	eventually(t, "served", func() bool { return presenceOf(w) == PresenceServed })
	_, _, changed := w.State()
	disc.set(nil, nil)
	select {
	case <-changed:
		t.Fatal("a served API was checked again without a Recheck")
	case <-time.After(50 * time.Millisecond): // many absent-check intervals
	}
	w.Recheck()
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("no change after a Recheck found the API gone")
	}
	if got := presenceOf(w); got != PresenceAbsent {
		t.Fatalf("presence %s after the API went away, want absent", got)
	}
}

// snapshot is a VolumeSnapshot named name in default.
func snapshot(name string) *snapv1.VolumeSnapshot {
	return &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name}}
}

// crdServer plays the API server's side of the snapshot CRDs for a fake
// clientset: while not installed, lists and watches of VolumeSnapshots
// answer NotFound and discovery does not serve the group; uninstalling
// ends the watches, as the API server does.
type crdServer struct {
	disc      *fakeDiscovery
	mu        sync.Mutex
	installed bool
	watches   []*watch.FakeWatcher
}

func newCRDServer(client *snapshotfake.Clientset, disc *fakeDiscovery) *crdServer {
	s := &crdServer{disc: disc}
	disc.set(nil, nil)
	client.PrependReactor("list", "volumesnapshots", func(clienttesting.Action) (bool, runtime.Object, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.installed {
			return true, nil, apierrors.NewNotFound(schema.GroupResource{Group: "snapshot.storage.k8s.io", Resource: "volumesnapshots"}, "")
		}
		return false, nil, nil
	})
	client.PrependWatchReactor("volumesnapshots", func(clienttesting.Action) (bool, watch.Interface, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.installed {
			return true, nil, apierrors.NewNotFound(schema.GroupResource{Group: "snapshot.storage.k8s.io", Resource: "volumesnapshots"}, "")
		}
		w := watch.NewFake()
		s.watches = append(s.watches, w)
		return true, w, nil
	})
	return s
}

func (s *crdServer) install() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.installed = true
	s.disc.set(SnapshotResources, nil)
}

func (s *crdServer) uninstall() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.installed = false
	s.disc.set(nil, nil)
	for _, w := range s.watches {
		w.Stop()
	}
	s.watches = nil
}

func TestGatedSnapshotInformersFollowTheCRDs(t *testing.T) {
	client := fakeSnapshots(snapshot("kept"))
	disc := &fakeDiscovery{}
	crds := newCRDServer(client, disc)
	w := fastWatch(t, disc)
	factory := snapshotinformers.NewSharedInformerFactory(GatedSnapshots(client, w), 0)
	informer := factory.Snapshot().V1().VolumeSnapshots().Informer()
	lister := snapshotlisters.NewVolumeSnapshotLister(informer.GetIndexer())
	ctx, cancel := context.WithCancel(context.Background())
	defer factory.Shutdown()
	defer cancel()
	factory.Start(ctx.Done())
	count := func() int {
		list, _ := lister.List(labels.Everything())
		return len(list)
	}

	syncCtx, cancelSync := context.WithTimeout(ctx, 20*time.Second)
	defer cancelSync()
	if !cache.WaitForCacheSync(syncCtx.Done(), informer.HasSynced) {
		t.Fatal("the informer did not sync without the CRDs: a controller waiting for it would never start")
	}
	if n := count(); n != 0 {
		t.Fatalf("%d snapshots cached without the CRDs, want 0", n)
	}
	crds.install()
	eventually(t, "the informer lists the snapshots once the CRDs appear", func() bool { return count() == 1 })
	crds.uninstall()
	eventually(t, "the informer empties once the CRDs are gone", func() bool { return count() == 0 })
	if got := presenceOf(w); got != PresenceAbsent {
		t.Fatalf("presence %s after the CRDs went away, want absent", got)
	}
}

func TestGatedWatchOfAnAbsentAPI(t *testing.T) {
	disc := &fakeDiscovery{}
	disc.set(nil, nil)
	w := fastWatch(t, disc)
	eventually(t, "absent", func() bool { return presenceOf(w) == PresenceAbsent })
	client := GatedSnapshots(fakeSnapshots(snapshot("hidden")), w)
	ctx := context.Background()

	list, err := client.SnapshotV1().VolumeSnapshots("").List(ctx, metav1.ListOptions{})
	if err != nil || len(list.Items) != 0 {
		t.Fatalf("list of an absent API = %v, %v; want empty", list, err)
	}
	if _, err := client.SnapshotV1().VolumeSnapshots("").Watch(ctx, metav1.ListOptions{SendInitialEvents: ptr.To(true)}); err == nil {
		t.Fatal("a streaming list of an absent API succeeded; the reflector would wait for a bookmark that never comes")
	}
	watcher, err := client.SnapshotV1().VolumeSnapshotContents().Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Stop()
	select {
	case event := <-watcher.ResultChan():
		t.Fatalf("event %v before the API changed", event)
	case <-time.After(20 * time.Millisecond):
	}
	disc.set(SnapshotResources, nil)
	select {
	case event := <-watcher.ResultChan():
		status, ok := event.Object.(*metav1.Status)
		if !ok || !apierrors.IsResourceExpired(apierrors.FromObject(status)) || status.Code != http.StatusGone {
			t.Fatalf("event %+v when the API appeared, want an expired error (the reflector lists again)", event)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the watch of an absent API did not end when it appeared")
	}
	if _, err := client.SnapshotV1().VolumeSnapshots("default").Get(ctx, "hidden", metav1.GetOptions{}); err != nil {
		t.Fatalf("gets are not gated: %v", err)
	}
}

func TestSnapshotCachesAreOfferedOnlyWhileTheAPIIsServed(t *testing.T) {
	client := fakeSnapshots(snapshot("kept"))
	disc := &fakeDiscovery{}
	disc.set(nil, errRefused)
	w := fastWatch(t, disc)
	caches := NewSnapshotCaches(w, client, 0, func(factory snapshotinformers.SharedInformerFactory) (snapshotlisters.VolumeSnapshotLister, []cache.SharedIndexInformer) {
		informer := factory.Snapshot().V1().VolumeSnapshots()
		return informer.Lister(), []cache.SharedIndexInformer{informer.Informer()}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); caches.Run(ctx) }()
	defer func() { cancel(); <-done }()
	offered := func() bool {
		lister, ok := caches.Current()
		if !ok {
			return false
		}
		list, _ := lister.List(labels.Everything())
		return len(list) == 1
	}

	eventually(t, "the API server is asked", func() bool { return caches.Waiting() != "not asked yet" })
	if offered() || !strings.Contains(caches.Waiting(), "connection refused") {
		t.Fatalf("unknown API: offered %v, waiting %q; want nothing offered and the error as the reason", offered(), caches.Waiting())
	}
	disc.set(nil, nil)
	eventually(t, "an absent API is known", func() bool { return presenceOf(w) == PresenceAbsent })
	if offered() || caches.Waiting() != "" {
		t.Fatalf("absent API: offered %v, waiting %q; want nothing offered and nothing waited for", offered(), caches.Waiting())
	}
	disc.set(SnapshotResources, nil)
	eventually(t, "the caches are offered once the API appears", offered)
	if caches.Waiting() != "" {
		t.Fatalf("served API with filled caches still waits for %q", caches.Waiting())
	}
	disc.set(nil, nil)
	w.Recheck() // as a list answering NotFound would
	eventually(t, "the caches are dropped once the API goes", func() bool { return !offered() && caches.Waiting() == "" })
}
