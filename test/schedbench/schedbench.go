package schedbench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/harness"
)

// Zones are the bench cluster's zones, in SeedRegion.
var Zones = []string{"bench-a", "bench-b", "bench-c"}

// Setup says what one measured cluster runs.
type Setup struct {
	// Nodes is how many kwok nodes, spread round-robin over Zones.
	Nodes int
	// Extender registers toposnap's extender with the scheduler, asked only
	// about pods carrying the volume resource, and has the webhook give it.
	Extender bool
	// Toposnap runs toposnap's processes: the extender and webhook, and a
	// driver, provisioner and snapshotter on the first node of each zone
	// (a zone's volumes are reached from all its nodes).
	Toposnap bool
}

// Bench is one running cluster of a Setup.
type Bench struct {
	Cluster      *cluster.Cluster
	Env          *harness.Env
	Client       kubernetes.Interface
	ExtenderPort int
}

// nodeName is the name of node i.
func nodeName(i int) string { return fmt.Sprintf("n%04d", i) }

// schedulerConfig is the scheduler's configuration: client limits high
// enough that the API client never paces scheduling, and the extender when
// asked for.
func schedulerConfig(extenderPort int, extender bool) string {
	config := cluster.DefaultSchedulerConfig("")
	config += "clientConnection:\n  qps: 5000\n  burst: 5000\n"
	if extender {
		config += "extenders:\n"
		for line := range strings.SplitSeq(harness.ExtenderEntry(extenderPort, true), "\n") {
			config += "  " + line + "\n"
		}
	}
	return config
}

// Start starts a cluster as setup says; Stop ends it.
func Start(ctx context.Context, setup Setup) (_ *Bench, err error) {
	port, err := harness.FreePort()
	if err != nil {
		return nil, err
	}
	nodes := make([]corev1.Node, setup.Nodes)
	for i := range nodes {
		nodes[i] = cluster.NodeInZone(nodeName(i), Zones[i%len(Zones)])
	}
	c, err := cluster.Start(ctx, cluster.Options{Nodes: nodes, SchedulerConfig: schedulerConfig(port, setup.Extender)})
	if err != nil {
		return nil, err
	}
	b := &Bench{Cluster: c, ExtenderPort: port}
	defer func() {
		if err != nil {
			b.Stop()
		}
	}()
	config := *c.RestConfig
	config.QPS, config.Burst = 5000, 5000
	if b.Client, err = kubernetes.NewForConfig(&config); err != nil {
		return nil, err
	}
	if setup.Toposnap {
		workers := make([]string, 0, len(Zones))
		for i := range min(len(Zones), setup.Nodes) {
			workers = append(workers, nodeName(i))
		}
		if b.Env, err = harness.Start(ctx, c, harness.Options{ExtenderPort: port, Workers: workers, MarkPods: setup.Extender}); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// Stop ends the cluster and toposnap's processes.
func (b *Bench) Stop() {
	if b.Env != nil {
		b.Env.Stop()
	}
	b.Cluster.Stop()
}

// ZoneClass is a zone-scope WaitForFirstConsumer class of toposnap allowed
// in zone only.
func ZoneClass(zone string) *storagev1.StorageClass {
	return &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: "zone-" + zone},
		Provisioner:       "csi.toposnap.io",
		Parameters:        map[string]string{"scope": string(topology.ScopeZone)},
		VolumeBindingMode: ptr.To(storagev1.VolumeBindingWaitForFirstConsumer),
		ReclaimPolicy:     ptr.To(corev1.PersistentVolumeReclaimDelete),
		AllowedTopologies: []corev1.TopologySelectorTerm{{MatchLabelExpressions: []corev1.TopologySelectorLabelRequirement{
			{Key: corev1.LabelTopologyZone, Values: []string{zone}}}}},
	}
}

// Claim is a 1 MiB claim of class.
func Claim(namespace, name, class string) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: ptr.To(class),
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Mi")}},
		},
	}
}

// Pod is a pod mounting claim ("": none).
func Pod(namespace, name, claim string) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: map[string]string{"app": "schedbench"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}}},
	}
	if claim != "" {
		pod.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}}
	}
	return pod
}

// Run creates objects (each a claim or a pod) from 16 goroutines and waits,
// until deadline, for the pods of namespace to be bound to nodes. It
// returns how many pods were bound per second, from the first create to the
// last binding.
func (b *Bench) Run(ctx context.Context, namespace string, claims []*corev1.PersistentVolumeClaim, pods []*corev1.Pod, deadline time.Duration) (float64, error) {
	if _, err := b.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return 0, err
	}
	for _, claim := range claims {
		if _, err := b.Client.CoreV1().PersistentVolumeClaims(namespace).Create(ctx, claim, metav1.CreateOptions{}); err != nil {
			return 0, fmt.Errorf("create claim %s: %w", claim.Name, err)
		}
	}
	var mu sync.Mutex
	bound := map[string]bool{}
	var last time.Time
	done := make(chan struct{})
	record := func(obj any) {
		pod, ok := obj.(*corev1.Pod)
		if !ok || pod.Spec.NodeName == "" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if !bound[pod.Name] {
			bound[pod.Name], last = true, time.Now()
			if len(bound) == len(pods) {
				close(done)
			}
		}
	}
	watchCtx, stop := context.WithCancel(ctx)
	defer stop()
	list := cache.NewListWatchFromClient(b.Client.CoreV1().RESTClient(), "pods", namespace, fields.Everything())
	_, informer := cache.NewInformerWithOptions(cache.InformerOptions{ListerWatcher: list, ObjectType: &corev1.Pod{},
		Handler: cache.ResourceEventHandlerFuncs{AddFunc: record, UpdateFunc: func(_, obj any) { record(obj) }}})
	go informer.RunWithContext(watchCtx)
	if !cache.WaitForCacheSync(ctx.Done(), informer.HasSynced) {
		return 0, ctx.Err()
	}
	start := time.Now()
	work := make(chan *corev1.Pod)
	errs := make(chan error, len(pods))
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for pod := range work {
				if _, err := b.Client.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
					errs <- fmt.Errorf("create pod %s: %w", pod.Name, err)
				}
			}
		})
	}
	for _, pod := range pods {
		work <- pod
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		return 0, err
	}
	select {
	case <-done:
	case <-time.After(deadline):
		mu.Lock()
		defer mu.Unlock()
		return 0, fmt.Errorf("%d of %d pods bound after %s", len(bound), len(pods), deadline)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	mu.Lock()
	defer mu.Unlock()
	return float64(len(pods)) / last.Sub(start).Seconds(), nil
}

// ExtenderCalls is how many filter requests the extender has answered.
func (b *Bench) ExtenderCalls(ctx context.Context) (int, error) {
	request, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/metrics", b.ExtenderPort), nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(request)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	scanner := bufio.NewScanner(resp.Body)
	for scanner.Scan() {
		line := scanner.Text()
		if strings.HasPrefix(line, "toposnap_extender_request_duration_seconds_count{") && strings.Contains(line, `verb="filter"`) {
			fields := strings.Fields(line)
			count, err := strconv.ParseFloat(fields[len(fields)-1], 64)
			return int(count), err
		}
	}
	return 0, scanner.Err() // no filter request yet
}
