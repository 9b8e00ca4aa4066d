package intree

import (
	"context"
	"flag"
	"fmt"
	"sort"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/extender"
	"github.com/toposnap/toposnap/internal/topology"
)

// benchWorkload is extender/bench_test.go's bigState, object for object:
// nodes in 10 zones, pvs static local PVs spread over them, a no-provisioner
// class, a zone class limited to zone-3 and a node class, per-node capacity
// of the node class, and a pod with one claim of each class.
func benchWorkload(nodes, pvs int) ([]*corev1.Node, []runtime.Object, *corev1.Pod) {
	var nodeList []*corev1.Node
	for i := range nodes {
		name := fmt.Sprintf("node%05d", i)
		nodeList = append(nodeList, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			topology.HostnameKey: name, topology.NodeKey: name, topology.ZoneKey: fmt.Sprintf("zone-%d", i%10), topology.RegionKey: "cn-hangzhou"}}})
	}
	var objects []runtime.Object
	for i := range pvs {
		name, node := fmt.Sprintf("pv%05d", i), fmt.Sprintf("node%05d", i%nodes)
		objects = append(objects, &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PersistentVolumeSpec{
			StorageClassName: "local", Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(fmt.Sprintf("%dGi", 1+i%20))},
			AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeSource: corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: "/mnt"}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: topology.HostnameKey, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}}}}}},
		}, Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeAvailable}})
	}
	class := func(name, provisioner, scope string, zones ...string) *storagev1.StorageClass {
		c := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: provisioner,
			Parameters: map[string]string{"scope": scope}, VolumeBindingMode: ptr.To(storagev1.VolumeBindingWaitForFirstConsumer)}
		if len(zones) > 0 {
			c.AllowedTopologies = []corev1.TopologySelectorTerm{{MatchLabelExpressions: []corev1.TopologySelectorLabelRequirement{{Key: topology.ZoneKey, Values: zones}}}}
		}
		return c
	}
	objects = append(objects, class("local", noProvisioner, "node"), class("topo-zone", driver, "zone", "zone-3"), class("topo-node", driver, "node"))
	claim := func(name, className, size string) *corev1.PersistentVolumeClaim {
		return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: corev1.PersistentVolumeClaimSpec{StorageClassName: ptr.To(className),
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}}}}
	}
	objects = append(objects, claim("local-pvc", "local", "10Gi"), claim("zone-pvc", "topo-zone", "5Gi"), claim("node-pvc", "topo-node", "5Gi"))
	// The in-tree plugin reads CSIStorageCapacity only for a CSIDriver with
	// storageCapacity: true; toposnap's CSIDriver does not set it, and
	// neither does this workload, so only the extender checks capacity.
	for _, n := range nodeList {
		q := resource.MustParse("100Gi")
		objects = append(objects, &storagev1.CSIStorageCapacity{ObjectMeta: metav1.ObjectMeta{Name: "topo-node-" + n.Name, Namespace: "default"},
			StorageClassName: "topo-node", NodeTopology: &metav1.LabelSelector{MatchLabels: map[string]string{topology.NodeKey: n.Name}}, Capacity: &q})
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "default"}}
	for _, c := range []string{"local-pvc", "zone-pvc", "node-pvc"} {
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: c, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: c}}})
	}
	return nodeList, objects, pod
}

var slowSamples = flag.Int("intree.slow-samples", 3,
	"samples to take of a call slower than 10s, whatever -benchtime asks (the in-tree plugin at 5000 nodes takes minutes per cycle)")

// BenchmarkInTreeVolumeBinding times one scheduling cycle of the in-tree
// VolumeBinding plugin (PreFilter once, then Filter on every node, with a
// fresh CycleState, on one goroutine: CPU time, which kube-scheduler spreads
// over up to 16 goroutines) and one extender.Filter call over the same
// nodes, on the extender benchmark's workload. It reports p50 and p99 per
// cycle or call and, on the toposnap run, ratio-p50 and ratio-p99:
// toposnap's latency over the in-tree plugin's. Both must find the same
// number of feasible nodes, or they timed different work.
func BenchmarkInTreeVolumeBinding(b *testing.B) {
	for _, size := range []struct{ nodes, pvs int }{{500, 1000}, {5000, 10000}} {
		nodes, objects, pod := benchWorkload(size.nodes, size.pvs)
		names := make([]string, 0, len(nodes))
		for _, n := range nodes {
			names = append(names, n.Name)
		}
		ctx, cancel := context.WithCancel(quiet(context.Background()))
		it, err := newInTree(ctx, nodes, objects)
		if err != nil {
			b.Fatal(err)
		}
		state := memState(nodes, objects)
		var inTreeP50, inTreeP99 float64
		inTreeFeasible := -1
		prefix := fmt.Sprintf("%dnodes-%dpvs", size.nodes, size.pvs)
		b.Run(prefix+"/intree", func(b *testing.B) {
			inTreeP50, inTreeP99 = measure(b, func() { inTreeFeasible = it.cycle(ctx, pod) })
		})
		b.Run(prefix+"/toposnap", func(b *testing.B) {
			feasible := 0
			p50, p99 := measure(b, func() { feasible = len(*extender.Filter(state, driver, pod, names).NodeNames) })
			if inTreeFeasible >= 0 && feasible != inTreeFeasible {
				b.Errorf("toposnap finds %d nodes feasible, the in-tree plugin %d", feasible, inTreeFeasible)
			}
			if inTreeP50 > 0 {
				b.ReportMetric(p50/inTreeP50, "ratio-p50")
				b.ReportMetric(p99/inTreeP99, "ratio-p99")
			}
		})
		cancel()
	}
}

// measure calls fn b.N times, or only -intree.slow-samples times if a call
// takes longer than 10s, and reports p50-ms and p99-ms (and ns/op as the
// mean of the calls made, so a capped run does not under-report it).
func measure(b *testing.B, fn func()) (p50, p99 float64) {
	var samples []time.Duration
	var total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		fn()
		took := time.Since(start)
		samples = append(samples, took)
		total += took
		if took > 10*time.Second && len(samples) >= *slowSamples {
			break
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(total.Nanoseconds())/float64(len(samples)), "ns/op")
	b.ReportMetric(float64(len(samples)), "samples")
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	p50 = float64(samples[len(samples)/2].Microseconds()) / 1000
	p99 = float64(samples[len(samples)*99/100].Microseconds()) / 1000
	b.ReportMetric(p50, "p50-ms")
	b.ReportMetric(p99, "p99-ms")
	return p50, p99
}

// cycle is filter without collecting verdicts: what the scheduler spends in
// the plugin per cycle, run on one goroutine.
func (it *inTree) cycle(ctx context.Context, pod *corev1.Pod) (feasible int) {
	state := framework.NewCycleState()
	if _, status := it.plugin.PreFilter(ctx, state, pod, it.nodeInfos); !status.IsSuccess() {
		return 0
	}
	for _, info := range it.nodeInfos {
		if it.plugin.Filter(ctx, state, pod, info).IsSuccess() {
			feasible++
		}
	}
	return feasible
}
