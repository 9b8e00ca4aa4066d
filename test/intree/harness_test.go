package intree

import (
	"context"
	"fmt"
	"sort"
	"strings"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	fwk "k8s.io/kube-scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/apis/config"
	"k8s.io/kubernetes/pkg/scheduler/framework"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins/feature"
	"k8s.io/kubernetes/pkg/scheduler/framework/plugins/volumebinding"
	frameworkruntime "k8s.io/kubernetes/pkg/scheduler/framework/runtime"
	"sigs.k8s.io/yaml"

	"github.com/toposnap/toposnap/extender"
)

// inTree is the in-tree VolumeBinding plugin over a fake API server holding
// one cluster state, with its informers started and synced.
type inTree struct {
	plugin    *volumebinding.VolumeBinding
	nodeInfos []fwk.NodeInfo
}

// newInTree builds the plugin the way kube-scheduler does: New with a
// framework handle whose informer factory is fed by the state's objects.
// Cancel ctx to stop its informers.
func newInTree(ctx context.Context, nodes []*corev1.Node, objects []runtime.Object) (*inTree, error) {
	all := make([]runtime.Object, 0, len(nodes)+len(objects))
	for _, n := range nodes {
		all = append(all, n)
	}
	all = append(all, objects...)
	client := fake.NewClientset(all...)
	factory := informers.NewSharedInformerFactory(client, 0)
	handle, err := frameworkruntime.NewFramework(ctx, nil, nil,
		frameworkruntime.WithClientSet(client), frameworkruntime.WithInformerFactory(factory))
	if err != nil {
		return nil, fmt.Errorf("framework handle: %w", err)
	}
	features := feature.NewSchedulerFeaturesFromGates(utilfeature.DefaultFeatureGate)
	// kube-scheduler's defaults (SetDefaults_VolumeBindingArgs); the shape
	// only matters for scoring.
	args := &config.VolumeBindingArgs{BindTimeoutSeconds: 600}
	if features.EnableStorageCapacityScoring {
		args.Shape = []config.UtilizationShapePoint{{Utilization: 0, Score: int32(config.MaxCustomPriorityScore)}, {Utilization: 100, Score: 0}}
	}
	plugin, err := volumebinding.New(ctx, args, handle, features)
	if err != nil {
		return nil, fmt.Errorf("volumebinding.New: %w", err)
	}
	factory.Start(ctx.Done())
	for informer, synced := range factory.WaitForCacheSync(ctx.Done()) {
		if !synced {
			return nil, fmt.Errorf("informer %v did not sync", informer)
		}
	}
	infos := make([]fwk.NodeInfo, 0, len(nodes))
	for _, n := range nodes {
		info := framework.NewNodeInfo()
		info.SetNode(n)
		infos = append(infos, info)
	}
	return &inTree{plugin: plugin.(*volumebinding.VolumeBinding), nodeInfos: infos}, nil
}

// verdict is one filter's answer for one node.
type verdict struct {
	feasible bool
	reason   string
}

// filter runs one scheduling cycle's PreFilter, then Filter on every node,
// as the scheduler does: a PreFilter rejection rejects every node, a Skip
// means the plugin has no say.
func (it *inTree) filter(ctx context.Context, pod *corev1.Pod) map[string]verdict {
	verdicts := make(map[string]verdict, len(it.nodeInfos))
	state := framework.NewCycleState()
	_, status := it.plugin.PreFilter(ctx, state, pod, it.nodeInfos)
	switch {
	case status.IsSkip():
		for _, info := range it.nodeInfos {
			verdicts[info.Node().Name] = verdict{feasible: true, reason: "PreFilter: Skip"}
		}
		return verdicts
	case !status.IsSuccess():
		for _, info := range it.nodeInfos {
			verdicts[info.Node().Name] = verdict{reason: fmt.Sprintf("PreFilter: %s: %s", status.Code(), status.Message())}
		}
		return verdicts
	}
	for _, info := range it.nodeInfos {
		status := it.plugin.Filter(ctx, state, pod, info)
		if status.IsSuccess() {
			verdicts[info.Node().Name] = verdict{feasible: true}
		} else {
			verdicts[info.Node().Name] = verdict{reason: fmt.Sprintf("Filter: %s: %s", status.Code(), status.Message())}
		}
	}
	return verdicts
}

// memState is the extender's view of the same objects.
func memState(nodes []*corev1.Node, objects []runtime.Object) *extender.MemState {
	s := &extender.MemState{Nodes: map[string]*corev1.Node{}, Claims: map[string]*corev1.PersistentVolumeClaim{},
		Volumes: map[string]*corev1.PersistentVolume{}, Classes: map[string]*storagev1.StorageClass{},
		Snapshots: map[string]*snapv1.VolumeSnapshot{}, Contents: map[string]*snapv1.VolumeSnapshotContent{}}
	for _, n := range nodes {
		s.Nodes[n.Name] = n
	}
	for _, obj := range objects {
		switch o := obj.(type) {
		case *corev1.PersistentVolumeClaim:
			s.Claims[o.Namespace+"/"+o.Name] = o
		case *corev1.PersistentVolume:
			s.Volumes[o.Name] = o
		case *storagev1.StorageClass:
			s.Classes[o.Name] = o
		case *storagev1.CSIStorageCapacity:
			s.Capacity = append(s.Capacity, o)
		}
	}
	s.Index()
	return s
}

// oursVerdicts runs the extender's Filter and reads its answer per node.
func oursVerdicts(state extender.State, pod *corev1.Pod, nodeNames []string) map[string]verdict {
	result := extender.Filter(state, driver, pod, nodeNames)
	verdicts := make(map[string]verdict, len(nodeNames))
	if result.Error != "" {
		for _, name := range nodeNames {
			verdicts[name] = verdict{reason: "error: " + result.Error}
		}
		return verdicts
	}
	for name, reason := range result.FailedAndUnresolvableNodes {
		verdicts[name] = verdict{reason: "unresolvable: " + reason}
	}
	for name, reason := range result.FailedNodes {
		verdicts[name] = verdict{reason: "failed: " + reason}
	}
	if result.NodeNames != nil {
		for _, name := range *result.NodeNames {
			verdicts[name] = verdict{feasible: true}
		}
	}
	return verdicts
}

// mismatch is a node on which the two filters disagree.
type mismatch struct {
	node         string
	inTree, ours verdict
}

func (m mismatch) String() string {
	return fmt.Sprintf("node %s: in-tree feasible=%t %s | toposnap feasible=%t %s",
		m.node, m.inTree.feasible, m.inTree.reason, m.ours.feasible, m.ours.reason)
}

// compare lists the nodes whose feasibility differs (a node missing from
// either answer counts as a difference), in node order.
func compare(nodeNames []string, inTree, ours map[string]verdict) []mismatch {
	var out []mismatch
	for _, name := range nodeNames {
		a, inA := inTree[name]
		b, inB := ours[name]
		if !inA {
			a.reason = "no verdict"
		}
		if !inB {
			b.reason = "no verdict"
		}
		if !inA || !inB || a.feasible != b.feasible {
			out = append(out, mismatch{node: name, inTree: a, ours: b})
		}
	}
	return out
}

// objects lists the state's API objects other than nodes.
func (c *cluster) objects() []runtime.Object {
	var out []runtime.Object
	for _, o := range c.Classes {
		out = append(out, o)
	}
	for _, o := range c.Volumes {
		out = append(out, o)
	}
	for _, o := range c.Claims {
		out = append(out, o)
	}
	return out
}

// dump renders what decides a node's verdict, YAML-ish: the node, the pod's
// claims, their classes, the PVs of those classes and the PVs they name.
func (c *cluster) dump(node string) string {
	var b strings.Builder
	write := func(kind string, obj any) {
		data, err := yaml.Marshal(obj)
		if err != nil {
			data = []byte(err.Error())
		}
		fmt.Fprintf(&b, "--- # %s\n%s", kind, stripNoise(string(data)))
	}
	for _, n := range c.Nodes {
		if n.Name == node {
			write("Node", map[string]any{"name": n.Name, "labels": n.Labels})
		}
	}
	claims := map[string]*corev1.PersistentVolumeClaim{}
	for _, claim := range c.Claims {
		claims[claim.Name] = claim
	}
	classes, named := map[string]bool{}, map[string]bool{}
	var volumes []string
	for _, v := range c.Pod.Spec.Volumes {
		claim, ok := claims[v.PersistentVolumeClaim.ClaimName]
		if !ok {
			fmt.Fprintf(&b, "--- # pod volume %s: claim %s does not exist\n", v.Name, v.PersistentVolumeClaim.ClaimName)
			continue
		}
		volumes = append(volumes, v.Name+"->"+claim.Name)
		write("PersistentVolumeClaim", claim)
		if claim.Spec.StorageClassName != nil {
			classes[*claim.Spec.StorageClassName] = true
		}
		if claim.Spec.VolumeName != "" {
			named[claim.Spec.VolumeName] = true
		}
	}
	for _, class := range c.Classes {
		if classes[class.Name] {
			write("StorageClass", class)
		}
	}
	for _, pv := range c.Volumes {
		if classes[pv.Spec.StorageClassName] || named[pv.Name] {
			write("PersistentVolume", pv)
		}
	}
	fmt.Fprintf(&b, "--- # Pod default/app volumes: %s\n", strings.Join(volumes, ", "))
	return b.String()
}

// stripNoise drops the empty fields every object marshals with.
func stripNoise(s string) string {
	var keep []string
	for _, line := range strings.Split(s, "\n") {
		t := strings.TrimSpace(line)
		if t == "creationTimestamp: null" || t == "status: {}" || t == "resources: {}" || t == "metadata: {}" {
			continue
		}
		keep = append(keep, line)
	}
	return strings.Join(keep, "\n")
}

func (c *cluster) traits() string {
	out := make([]string, 0, len(c.Traits))
	for t := range c.Traits {
		out = append(out, t)
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}
