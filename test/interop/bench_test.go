package interop

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/topology"
)

// Workload sizes of the benchmarks (issue 13).
const (
	benchClaims    = 200
	benchSnapshots = 50
	// creators is how many goroutines create the workload's objects, so
	// that creating them is not what the benchmark measures.
	creators = 16
)

// loadClient is an admin client that is not throttled client-side: the
// workload generator must not be the bottleneck of either contender.
func loadClient() (kubernetes.Interface, error) {
	config := rest.CopyConfig(env.Cluster.RestConfig)
	config.QPS, config.Burst = 2000, 4000
	return kubernetes.NewForConfig(config)
}

// inParallel runs do(i) for i in [0, n) on creators goroutines and returns
// the first error.
func inParallel(n int, do func(i int) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  = make(chan int)
	)
	for range creators {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := do(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}

// contenders are the controllers each round runs, in the order round i
// runs them: the order rotates, so that none always inherits another's
// leftovers (API server caches, etcd compaction). A candidate build joins
// when one is named ($TOPOSNAP_INTEROP_CANDIDATE).
func contenders(i int) []controllerKind {
	kinds := []controllerKind{upstreamControllers, toposnapControllers}
	if controllers.candidateBin != "" {
		kinds = append(kinds, candidateControllers)
	}
	shift := i % len(kinds)
	return append(kinds[shift:], kinds[:shift]...)
}

// throughput is what one contender achieved over all rounds.
type throughput struct {
	items   int
	elapsed time.Duration
}

func (t throughput) perSecond() float64 { return float64(t.items) / t.elapsed.Seconds() }

// report prints and records each contender's rate and its ratio to
// upstream's in the same run (above 1: faster than the upstream sidecars).
func report(b *testing.B, what string, results map[controllerKind]*throughput) {
	upstream := results[upstreamControllers]
	limits := "their defaults (5 QPS, burst 10)"
	if len(controllers.upstreamLimits) > 0 {
		limits = strings.Join(controllers.upstreamLimits, " ")
	}
	b.Logf("%s: upstream client limits: %s; toposnap's: its defaults", what, limits)
	b.ReportMetric(upstream.perSecond(), "upstream-"+what+"/s")
	b.Logf("%s: upstream %d in %v (%.2f/s)", what, upstream.items, upstream.elapsed.Round(time.Millisecond), upstream.perSecond())
	for _, kind := range []controllerKind{toposnapControllers, candidateControllers} {
		result, ok := results[kind]
		if !ok || result.items == 0 {
			continue
		}
		ratio := result.perSecond() / upstream.perSecond()
		b.ReportMetric(result.perSecond(), string(kind)+"-"+what+"/s")
		b.ReportMetric(ratio, string(kind)+"/upstream")
		b.Logf("%s: %s %d in %v (%.2f/s): %s/upstream = %.2fx", what, kind, result.items,
			result.elapsed.Round(time.Millisecond), result.perSecond(), kind, ratio)
	}
}

// newResults holds a zero throughput per contender.
func newResults() map[controllerKind]*throughput {
	results := map[controllerKind]*throughput{}
	for _, kind := range contenders(0) {
		results[kind] = &throughput{}
	}
	return results
}

// BenchmarkProvisionZoneClaims: 200 zone-scope late-binding claims, each
// with a pod, provisioned end to end (from the first create until every
// claim is Bound) by toposnap's provisioners and by external-provisioner,
// on the same drivers in the same run. Each round first binds one claim
// untimed, so a contender that just started is not charged its start-up.
func BenchmarkProvisionZoneClaims(b *testing.B) {
	needEnv(b)
	client, err := loadClient()
	if err != nil {
		b.Fatal(err)
	}
	results, pvResults := newResults(), newResults()
	for i := range b.N {
		for _, kind := range contenders(i) {
			elapsed, pvsCreated, err := provisionRound(ctxFor(b, 15*time.Minute), client, kind, benchClaims)
			if err != nil {
				b.Fatalf("%s provisioners: %v", kind, err)
			}
			results[kind].items += benchClaims
			results[kind].elapsed += elapsed
			pvResults[kind].items += benchClaims
			pvResults[kind].elapsed += pvsCreated
			b.Logf("round %d, %s: %d PVs created in %v, claims bound in %v", i, kind, benchClaims,
				pvsCreated.Round(time.Millisecond), elapsed.Round(time.Millisecond))
		}
	}
	report(b, "claims", results)
	report(b, "PVs", pvResults)
}

// provisionRound runs kind's provisioners, provisions n zone claims and
// returns how long until they were all bound, and until all their PVs
// existed; then it deletes them and waits until kind's provisioners have
// deleted their PVs.
func provisionRound(ctx context.Context, client kubernetes.Interface, kind controllerKind, n int) (bound, pvsCreated time.Duration, err error) {
	if err := controllers.useProvisioners(ctx, kind); err != nil {
		return 0, 0, err
	}
	if err := ensureClasses(ctx); err != nil {
		return 0, 0, err
	}
	ns, err := createNamespace(ctx, "bench-"+string(kind))
	if err != nil {
		return 0, 0, err
	}
	defer func() {
		_ = client.CoreV1().Namespaces().Delete(context.WithoutCancel(ctx), ns, metav1.DeleteOptions{})
	}()
	if err := createClaimAndPod(ctx, newClaim(ns, "warm-up", zoneClass, ""), newPod(ns, "warm-up", "warm-up", "")); err != nil {
		return 0, 0, err
	}
	if _, _, err := waitBound(ctx, ns, "warm-up", "warm-up", 3*time.Minute); err != nil {
		return 0, 0, fmt.Errorf("warm-up: %w", err)
	}

	begin := time.Now()
	if err := inParallel(n, func(i int) error {
		name := fmt.Sprintf("claim-%03d", i)
		claim := newClaim(ns, name, zoneClass, "")
		if _, err := client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, claim, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create claim %s: %w", name, err)
		}
		if _, err := client.CoreV1().Pods(ns).Create(ctx, newPod(ns, name, name, ""), metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create pod %s: %w", name, err)
		}
		return nil
	}); err != nil {
		return 0, 0, err
	}
	// Two moments: every PV created (the provisioner's own work) and every
	// claim Bound (what a user waits for: kube-controller-manager's
	// PV controller binds each claim to its PV after that).
	boundCount, created := 0, 0
	if err := poll(ctx, 100*time.Millisecond, 10*time.Minute, func() (bool, error) {
		if pvsCreated == 0 {
			pvs, err := client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
			if err != nil {
				return false, nil
			}
			created = 0
			for _, pv := range pvs.Items {
				if ref := pv.Spec.ClaimRef; ref != nil && ref.Namespace == ns {
					created++
				}
			}
			if created == n+1 { // and the warm-up claim's
				pvsCreated = time.Since(begin)
			}
		}
		claims, err := client.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
		if err != nil {
			return false, nil
		}
		boundCount = 0
		for _, claim := range claims.Items {
			if claim.Status.Phase == corev1.ClaimBound {
				boundCount++
			}
		}
		return boundCount == n+1 && pvsCreated > 0, nil
	}); err != nil {
		return 0, 0, fmt.Errorf("%d of %d PVs created, %d claims bound: %w\nevents:\n%s", created, n+1, boundCount, err, namespaceEvents(ns))
	}
	bound = time.Since(begin)
	if err := checkZonePVs(ctx, client, ns, kind); err != nil {
		return 0, 0, err
	}
	if err := deleteClaimsAndWait(ctx, ns, 5*time.Minute); err != nil {
		return 0, 0, fmt.Errorf("clean up: %w", err)
	}
	return bound, pvsCreated, nil
}

// checkZonePVs: every claim of ns is bound to a PV reachable from the zone
// of the node the scheduler selected for it, made by kind's provisioner
// (only external-provisioner stamps its identity on the PV), so the
// benchmark measured what it says. (The selected node, not the pod's: a
// claim binds before the scheduler binds its pod.)
func checkZonePVs(ctx context.Context, client kubernetes.Interface, ns string, kind controllerKind) error {
	claims, err := client.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	zoneOf := map[string]string{}
	for _, node := range nodes.Items {
		zoneOf[node.Name] = node.Labels[topology.ZoneKey]
	}
	for _, claim := range claims.Items {
		pv, err := client.CoreV1().PersistentVolumes().Get(ctx, claim.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("PV of claim %s/%s: %w", ns, claim.Name, err)
		}
		selected := claim.Annotations[annSelectedNode]
		if got, want := affinity(pv, topology.ZoneKey), zoneOf[selected]; got == "" || got != want {
			return fmt.Errorf("PV %s of claim %s/%s is in zone %q, its selected node %q in %q", pv.Name, ns, claim.Name, got, selected, want)
		}
		upstreamMade := pv.Spec.CSI != nil && pv.Spec.CSI.VolumeAttributes[annProvisionerIdentity] != ""
		if upstreamMade != (kind == upstreamControllers) {
			return fmt.Errorf("PV %s was made by the wrong provisioner (external-provisioner's identity present: %v; running: %s)", pv.Name, upstreamMade, kind)
		}
	}
	return nil
}

// BenchmarkSnapshots: 50 VolumeSnapshots of 50 zone-scope volumes, from the
// first create until every one is ready to use, cut by toposnap's
// snapshotters (which also bind, as the common controller) and by
// csi-snapshotter plus the snapshot-controller, on the same drivers and
// the same volumes in the same run. Each round first readies one snapshot
// untimed.
func BenchmarkSnapshots(b *testing.B) {
	needEnv(b)
	ctx := ctxFor(b, 30*time.Minute)
	client, err := loadClient()
	if err != nil {
		b.Fatal(err)
	}
	if err := ensureClasses(ctx); err != nil {
		b.Fatal(err)
	}
	ns, err := createNamespace(ctx, "bench-snapshots")
	if err != nil {
		b.Fatal(err)
	}
	sources := make([]string, benchSnapshots)
	if err := inParallel(benchSnapshots, func(i int) error {
		sources[i] = fmt.Sprintf("source-%02d", i)
		return createClaimAndPod(ctx, newClaim(ns, sources[i], zoneClass, ""), newPod(ns, sources[i], sources[i], ""))
	}); err != nil {
		b.Fatal(err)
	}
	for _, name := range sources {
		if _, _, err := waitBound(ctx, ns, name, name, 5*time.Minute); err != nil {
			b.Fatal(err)
		}
	}
	results := newResults()
	for i := range b.N {
		for _, kind := range contenders(i) {
			elapsed, err := snapshotRound(ctx, ns, fmt.Sprintf("%s-%d", kind, i), kind, sources)
			if err != nil {
				b.Fatalf("%s snapshotters: %v", kind, err)
			}
			results[kind].items += len(sources)
			results[kind].elapsed += elapsed
			b.Logf("round %d, %s: %d snapshots ready in %v", i, kind, len(sources), elapsed.Round(time.Millisecond))
		}
	}
	report(b, "snapshots", results)
	if err := deleteClaimsAndWait(ctx, ns, 5*time.Minute); err != nil {
		b.Fatal(err)
	}
	_ = client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
}

// snapshotRound runs kind's snapshotters, cuts one snapshot of each source
// and returns how long until all were ready; then it deletes them and waits
// until their contents are gone.
func snapshotRound(ctx context.Context, ns, round string, kind controllerKind, sources []string) (time.Duration, error) {
	// The provisioners follow: each side's provisioner and snapshotter
	// share the finalizers that protect a snapshot read by a restore
	// (docs/interop.md), and a deployment runs one side's pair.
	if err := controllers.useProvisioners(ctx, kind); err != nil {
		return 0, err
	}
	if err := controllers.useSnapshotters(ctx, kind); err != nil {
		return 0, err
	}
	snapshots := env.Snaps.SnapshotV1().VolumeSnapshots(ns)
	warmUp := "warm-up-" + round
	if _, err := snapshots.Create(ctx, newSnapshot(ns, warmUp, sources[0]), metav1.CreateOptions{}); err != nil {
		return 0, err
	}
	if _, err := waitSnapshotReady(ctx, ns, warmUp, 3*time.Minute); err != nil {
		return 0, fmt.Errorf("warm-up: %w", err)
	}

	begin := time.Now()
	if err := inParallel(len(sources), func(i int) error {
		name := fmt.Sprintf("%s-%02d", round, i)
		if _, err := snapshots.Create(ctx, newSnapshot(ns, name, sources[i]), metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create VolumeSnapshot %s: %w", name, err)
		}
		return nil
	}); err != nil {
		return 0, err
	}
	ready := 0
	if err := poll(ctx, 100*time.Millisecond, 10*time.Minute, func() (bool, error) {
		list, err := snapshots.List(ctx, metav1.ListOptions{ResourceVersion: "0"})
		if err != nil {
			return false, nil
		}
		ready = 0
		for _, snap := range list.Items {
			if strings.HasPrefix(snap.Name, round+"-") && snap.Status != nil && ptr.Deref(snap.Status.ReadyToUse, false) {
				ready++
			}
		}
		return ready == len(sources), nil
	}); err != nil {
		return 0, fmt.Errorf("%d of %d snapshots ready: %w\nevents:\n%s", ready, len(sources), err, namespaceEvents(ns))
	}
	elapsed := time.Since(begin)

	// Every snapshot and content must be gone before the other side's
	// controllers take over: a half-deleted snapshot would be theirs.
	list, err := snapshots.List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, err
	}
	if err := snapshots.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		return 0, err
	}
	for _, snap := range list.Items {
		content := ""
		if snap.Status != nil {
			content = ptr.Deref(snap.Status.BoundVolumeSnapshotContentName, "")
		}
		if err := waitGone(ctx, "VolumeSnapshot "+ns+"/"+snap.Name, 5*time.Minute, func(ctx context.Context) error {
			_, err := snapshots.Get(ctx, snap.Name, metav1.GetOptions{})
			return err
		}); err != nil {
			return 0, fmt.Errorf("clean up: %w", err)
		}
		if content == "" {
			continue
		}
		if err := waitGone(ctx, "content "+content, 5*time.Minute, func(ctx context.Context) error {
			_, err := env.Snaps.SnapshotV1().VolumeSnapshotContents().Get(ctx, content, metav1.GetOptions{})
			return err
		}); err != nil {
			return 0, fmt.Errorf("clean up: %w", err)
		}
	}
	return elapsed, nil
}
