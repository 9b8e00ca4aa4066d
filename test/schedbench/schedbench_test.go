package schedbench

import (
	"context"
	"flag"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/webhook"
)

var (
	benchNodes  = flag.Int("schedbench.nodes", 500, "kwok nodes in BenchmarkScheduling")
	benchPlain  = flag.Int("schedbench.plain-pods", 4000, "plain pods per run of BenchmarkScheduling")
	benchClaims = flag.Int("schedbench.claim-pods", 300, "pods with a zone claim each per run of BenchmarkScheduling")
)

// start starts setup or fails the test.
func start(tb testing.TB, setup Setup) *Bench {
	tb.Helper()
	if testing.Short() {
		tb.Skip("needs the local control plane")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	b, err := Start(ctx, setup)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(b.Stop)
	return b
}

// claimWorkload is n pods with one zone claim each, the claims' classes
// taking Zones in turn.
func claimWorkload(b *Bench, ctx context.Context, namespace string, n int) ([]*corev1.PersistentVolumeClaim, []*corev1.Pod, error) {
	for _, zone := range Zones {
		class := ZoneClass(zone)
		if _, err := b.Client.StorageV1().StorageClasses().Get(ctx, class.Name, metav1.GetOptions{}); err == nil {
			continue // made earlier (perhaps while the webhook was up)
		}
		if _, err := b.Client.StorageV1().StorageClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, nil, err
		}
	}
	claims := make([]*corev1.PersistentVolumeClaim, n)
	pods := make([]*corev1.Pod, n)
	for i := range n {
		claims[i] = Claim(namespace, fmt.Sprintf("data-%d", i), ZoneClass(Zones[i%len(Zones)]).Name)
		pods[i] = Pod(namespace, fmt.Sprintf("app-%d", i), claims[i].Name)
	}
	return claims, pods, nil
}

// checkPlacement fails unless every claim of namespace is bound to a PV
// whose zone is that of the node its pod runs on.
func checkPlacement(tb testing.TB, ctx context.Context, b *Bench, namespace string) {
	tb.Helper()
	pods, err := b.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	for _, pod := range pods.Items {
		if len(pod.Spec.Volumes) == 0 {
			continue
		}
		claim, err := b.Client.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, pod.Spec.Volumes[0].PersistentVolumeClaim.ClaimName, metav1.GetOptions{})
		if err != nil {
			tb.Fatal(err)
		}
		if claim.Spec.VolumeName == "" {
			tb.Fatalf("pod %s runs on %s with claim %s unbound", pod.Name, pod.Spec.NodeName, claim.Name)
		}
		pv, err := b.Client.CoreV1().PersistentVolumes().Get(ctx, claim.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			tb.Fatal(err)
		}
		node, err := b.Client.CoreV1().Nodes().Get(ctx, pod.Spec.NodeName, metav1.GetOptions{})
		if err != nil {
			tb.Fatal(err)
		}
		if !pvReachableFrom(pv, node) {
			tb.Fatalf("pod %s on %s (zone %s) mounts PV %s reachable only from %v", pod.Name, node.Name,
				node.Labels[corev1.LabelTopologyZone], pv.Name, pv.Spec.NodeAffinity)
		}
	}
}

func pvReachableFrom(pv *corev1.PersistentVolume, node *corev1.Node) bool {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return false // toposnap's PVs always say where they are
	}
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		ok := true
		for _, expr := range term.MatchExpressions {
			value, has := node.Labels[expr.Key]
			in := false
			for _, v := range expr.Values {
				in = in || (has && v == value)
			}
			ok = ok && expr.Operator == corev1.NodeSelectorOpIn && in
		}
		if ok {
			return true
		}
	}
	return false
}

// TestOnlyMarkedPodsReachTheExtender: with the extender registered for the
// volume resource, pods without toposnap volumes are scheduled without a
// single extender call; pods with toposnap claims (one created after its
// pod) get the resource, are asked about, and land where their volume is.
func TestOnlyMarkedPodsReachTheExtender(t *testing.T) {
	b := start(t, Setup{Nodes: 6, Extender: true, Toposnap: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	before, err := b.ExtenderCalls(ctx)
	if err != nil {
		t.Fatal(err)
	}
	plain := make([]*corev1.Pod, 20)
	for i := range plain {
		plain[i] = Pod("plain", fmt.Sprintf("plain-%d", i), "")
	}
	if _, err := b.Run(ctx, "plain", nil, plain, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	if after, err := b.ExtenderCalls(ctx); err != nil || after != before {
		t.Fatalf("20 plain pods cost %d extender calls (%v), want none", after-before, err)
	}

	claims, pods, err := claimWorkload(b, ctx, "claims", 6)
	if err != nil {
		t.Fatal(err)
	}
	// The last pod's claim comes after the pod: the webhook cannot know it
	// is toposnap's, and marks it all the same.
	late := claims[len(claims)-1]
	go func() {
		_ = cluster.Poll(ctx, 200*time.Millisecond, time.Minute, func() (bool, error) {
			_, err := b.Client.CoreV1().Pods("claims").Get(ctx, pods[len(pods)-1].Name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			_, err = b.Client.CoreV1().PersistentVolumeClaims("claims").Create(ctx, late, metav1.CreateOptions{})
			return err == nil || apierrors.IsAlreadyExists(err), nil
		})
	}()
	if _, err := b.Run(ctx, "claims", claims[:len(claims)-1], pods, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	calls, err := b.ExtenderCalls(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if calls-before < len(pods) {
		t.Fatalf("%d pods with toposnap claims cost %d extender calls, want at least one each", len(pods), calls-before)
	}
	for _, pod := range pods {
		got, err := b.Client.CoreV1().Pods("claims").Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if units := got.Spec.Containers[0].Resources.Limits[webhook.VolumeResource]; units.Value() != 1 {
			t.Errorf("pod %s has %s: %s, want 1", pod.Name, webhook.VolumeResource, units.String())
		}
	}
	checkPlacement(t, ctx, b, "claims")

	// Pods the webhook never sees still run, placed without the extender
	// (docs/operations.md says what they miss): those of a namespace that
	// opted out, and those created while the webhook is down.
	optedOut := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "opted-out", Labels: map[string]string{webhook.LabelWebhook: "disabled"}}}
	if _, err := b.Client.CoreV1().Namespaces().Create(ctx, optedOut, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	controlPlane := b.Env.AllNodes()[len(b.Env.AllNodes())-1]
	for _, namespace := range []string{"opted-out", "webhook-down"} {
		if namespace == "webhook-down" {
			controlPlane.Kill("webhook")
		}
		claims, pods, err := claimWorkload(b, ctx, namespace, 3)
		if err != nil {
			t.Fatal(err)
		}
		before, err := b.ExtenderCalls(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Run(ctx, namespace, claims, pods, 3*time.Minute); err != nil {
			t.Fatalf("%s: %v", namespace, err)
		}
		after, err := b.ExtenderCalls(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, pod := range pods {
			got, err := b.Client.CoreV1().Pods(namespace).Get(ctx, pod.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, marked := got.Spec.Containers[0].Resources.Limits[webhook.VolumeResource]; marked || after != before {
				t.Fatalf("%s: pod %s marked %v, %d extender calls; want neither", namespace, pod.Name, marked, after-before)
			}
		}
		checkPlacement(t, ctx, b, namespace)
	}
	if err := controlPlane.Restart("webhook"); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkScheduling prints scheduling throughput, in one run, for:
// plain pods with the extender registered (managedResources) against a
// bare scheduler (goal: at least 0.95x), and pods with one zone-scope
// WaitForFirstConsumer claim each with the extender against without
// (goal: at least 0.7x), claims bound end to end in the pod's zone.
// Run it with -benchtime 1x (make bench-sched).
func BenchmarkScheduling(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	plainPods := func(namespace string) []*corev1.Pod {
		pods := make([]*corev1.Pod, *benchPlain)
		for i := range pods {
			pods[i] = Pod(namespace, fmt.Sprintf("p-%d", i), "")
		}
		return pods
	}
	rates := map[string]float64{}
	measure := func(name string, setup Setup, claims bool) {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				bench := start(b, setup)
				var rate float64
				var err error
				if claims {
					var cs []*corev1.PersistentVolumeClaim
					var pods []*corev1.Pod
					if cs, pods, err = claimWorkload(bench, ctx, "work", *benchClaims); err == nil {
						rate, err = bench.Run(ctx, "work", cs, pods, 20*time.Minute)
					}
					if err == nil {
						checkPlacement(b, ctx, bench, "work")
					}
				} else {
					rate, err = bench.Run(ctx, "work", nil, plainPods("work"), 20*time.Minute)
				}
				if err != nil {
					b.Fatal(err)
				}
				rates[name] = rate
				b.ReportMetric(rate, "pods/s")
			}
		})
	}
	// Every run has toposnap's processes running, registered or not, so
	// the ratios compare the scheduler's configuration alone.
	measure("plain/bare", Setup{Nodes: *benchNodes, Toposnap: true}, false)
	measure("plain/extender", Setup{Nodes: *benchNodes, Extender: true, Toposnap: true}, false)
	measure("claims/no-extender", Setup{Nodes: *benchNodes, Toposnap: true}, true)
	measure("claims/extender", Setup{Nodes: *benchNodes, Extender: true, Toposnap: true}, true)
	// Printed, not logged: the ratios are what make bench-sched is for.
	fmt.Printf("plain pods: bare %.1f pods/s, extender registered %.1f pods/s: %.2fx (goal >= 0.95x)\n",
		rates["plain/bare"], rates["plain/extender"], rates["plain/extender"]/rates["plain/bare"])
	fmt.Printf("zone-claim pods: without extender %.1f pods/s, with %.1f pods/s: %.2fx (goal >= 0.7x)\n",
		rates["claims/no-extender"], rates["claims/extender"], rates["claims/extender"]/rates["claims/no-extender"])
}
