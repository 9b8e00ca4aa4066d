package extender

import (
	"strings"
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/topology"
)

const driver = "csi.toposnap.io"

func node(name, zone string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		topology.HostnameKey: name, topology.NodeKey: name, topology.ZoneKey: zone, topology.RegionKey: "cn-hangzhou"}}}
}

func class(name, provisioner, scope string, zones ...string) *storagev1.StorageClass {
	c := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: provisioner,
		Parameters: map[string]string{"scope": scope}, VolumeBindingMode: ptr.To(storagev1.VolumeBindingWaitForFirstConsumer)}
	if len(zones) > 0 {
		c.AllowedTopologies = []corev1.TopologySelectorTerm{{MatchLabelExpressions: []corev1.TopologySelectorLabelRequirement{{Key: topology.ZoneKey, Values: zones}}}}
	}
	return c
}

func claim(name, className, size string) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PersistentVolumeClaimSpec{StorageClassName: ptr.To(className),
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}}}}
}

func podWith(claims ...string) *corev1.Pod {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "default"}}
	for _, c := range claims {
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: c, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: c}}})
	}
	return pod
}

func localPV(name, className, size, nodeName string) *corev1.PersistentVolume {
	return &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PersistentVolumeSpec{
		StorageClassName: className, Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)},
		AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		PersistentVolumeSource: corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: "/mnt"}},
		NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: topology.HostnameKey, Operator: corev1.NodeSelectorOpIn, Values: []string{nodeName}}}}}}},
	}, Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeAvailable}}
}

func capacity(className string, selector map[string]string, size string) *storagev1.CSIStorageCapacity {
	q := resource.MustParse(size)
	return &storagev1.CSIStorageCapacity{ObjectMeta: metav1.ObjectMeta{Name: className + "-" + selector[topology.NodeKey]},
		StorageClassName: className, NodeTopology: &metav1.LabelSelector{MatchLabels: selector}, Capacity: &q}
}

func withMaximum(c *storagev1.CSIStorageCapacity, size string) *storagev1.CSIStorageCapacity {
	c.MaximumVolumeSize = ptr.To(resource.MustParse(size))
	return c
}

// seed builds the seed's two workers in zone b and the given objects.
func seed(objects ...any) *MemState {
	s := &MemState{
		Nodes:   map[string]*corev1.Node{"node1": node("node1", "cn-hangzhou-b"), "node2": node("node2", "cn-hangzhou-b")},
		Claims:  map[string]*corev1.PersistentVolumeClaim{},
		Volumes: map[string]*corev1.PersistentVolume{}, Classes: map[string]*storagev1.StorageClass{},
		Snapshots: map[string]*snapv1.VolumeSnapshot{}, Contents: map[string]*snapv1.VolumeSnapshotContent{},
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
		case *snapv1.VolumeSnapshot:
			s.Snapshots[o.Namespace+"/"+o.Name] = o
		case *snapv1.VolumeSnapshotContent:
			s.Contents[o.Name] = o
		}
	}
	s.Index()
	return s
}

func restoreOf(snapshotName string) *corev1.PersistentVolumeClaim {
	c := claim("restore", "topo-node", "1Gi")
	c.Spec.DataSource = &corev1.TypedLocalObjectReference{APIGroup: ptr.To("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: snapshotName}
	return c
}

func snapshotOn(nodeName string) (*snapv1.VolumeSnapshot, *snapv1.VolumeSnapshotContent) {
	snap := &snapv1.VolumeSnapshot{ObjectMeta: metav1.ObjectMeta{Name: "disk-snapshot", Namespace: "default"},
		Status: &snapv1.VolumeSnapshotStatus{BoundVolumeSnapshotContentName: ptr.To("content"), ReadyToUse: ptr.To(true)}}
	content := &snapv1.VolumeSnapshotContent{ObjectMeta: metav1.ObjectMeta{Name: "content",
		Annotations: map[string]string{topology.AnnAccessibleTopology: `[{"topology.toposnap.io/node":"` + nodeName + `"}]`}}}
	return snap, content
}

func TestFilter(t *testing.T) {
	snap, content := snapshotOn("node2")
	pending := claim("other", "topo-node", "6Gi")
	pending.Annotations = map[string]string{annSelectedNode: "node1"}
	bound := claim("bound", "", "1Gi")
	bound.Spec.VolumeName = "pv-node2"
	bound.Annotations = map[string]string{annBindCompleted: "yes"}
	deleting := claim("deleting", "topo-node", "1Gi")
	deleting.DeletionTimestamp = &metav1.Time{}
	unfinished := claim("unfinished", "", "1Gi")
	unfinished.Spec.VolumeName = "pv-node2"
	zonePending := claim("zone-other", "topo-zone", "6Gi")
	zonePending.Annotations = map[string]string{annSelectedNode: "node1"}
	promised := claim("promised", "topo-node", "1Gi")
	promised.Annotations = map[string]string{annSelectedNode: "node2"}
	tests := []struct {
		name             string
		state            *MemState
		pod              *corev1.Pod
		wantFit          []string
		wantUnresolvable map[string]string // node -> substring of the reason
		wantShort        map[string]string
	}{
		{"the seed's mistake: class allows zone d, nodes in zone b",
			seed(class("topo-disk", driver, "zone", "cn-hangzhou-d"), claim("disk-pvc", "topo-disk", "20Gi")), podWith("disk-pvc"),
			nil, map[string]string{"node1": "pvc default/disk-pvc: class topo-disk allows zone cn-hangzhou-d; node is in zone cn-hangzhou-b", "node2": "allows zone cn-hangzhou-d"}, nil},
		{"class allowing zone b fits both",
			seed(class("topo-disk", driver, "zone", "cn-hangzhou-b"), claim("disk-pvc", "topo-disk", "20Gi")), podWith("disk-pvc"),
			[]string{"node1", "node2"}, nil, nil},
		{"bound PV on node2 keeps the pod off node1",
			seed(localPV("pv-node2", "", "1Gi", "node2"), bound), podWith("bound"),
			[]string{"node2"}, map[string]string{"node1": "bound PV pv-node2 is reachable only from node node2"}, nil},
		{"static PV: only the node holding a fitting one",
			seed(class("local", noProvisioner, "node"), claim("local-pvc", "local", "5Gi"), localPV("small", "local", "1Gi", "node1"), localPV("big", "local", "10Gi", "node2")),
			podWith("local-pvc"), []string{"node2"}, map[string]string{"node1": "no available PV of class local with at least 5Gi"}, nil},
		{"restore only where the snapshot lives",
			seed(class("topo-node", driver, "node"), restoreOf("disk-snapshot"), snap, content), podWith("restore"),
			[]string{"node2"}, map[string]string{"node1": "can be restored only at node node2"}, nil},
		{"restore of a missing snapshot fits nowhere",
			seed(class("topo-node", driver, "node"), restoreOf("nope")), podWith("restore"),
			nil, map[string]string{"node1": "VolumeSnapshot default/nope, which does not exist", "node2": "does not exist"}, nil},
		{"claims summed per pool against free capacity",
			seed(class("topo-node", driver, "node"), claim("a", "topo-node", "6Gi"), claim("b", "topo-node", "6Gi"),
				capacity("topo-node", map[string]string{topology.NodeKey: "node1"}, "10Gi"),
				capacity("topo-node", map[string]string{topology.NodeKey: "node2"}, "20Gi")),
			podWith("a", "b"), []string{"node2"}, nil, map[string]string{"node1": "together the 2 claims needs 12Gi in the node pool of node1, which has 10Gi free"}},
		{"the most generous of several capacities for a pool counts",
			seed(class("topo-node", driver, "node"), claim("a", "topo-node", "6Gi"),
				capacity("topo-node", map[string]string{topology.NodeKey: "node1"}, "1Gi"),
				capacity("topo-node", map[string]string{topology.NodeKey: "node1"}, "10Gi"),
				capacity("topo-node", map[string]string{topology.NodeKey: "node2"}, "1Gi")),
			podWith("a"), []string{"node1"}, nil, map[string]string{"node2": "which has 1Gi free"}},
		{"a claim larger than the pool's maximumVolumeSize does not fit",
			seed(class("topo-node", driver, "node"), claim("a", "topo-node", "6Gi"),
				withMaximum(capacity("topo-node", map[string]string{topology.NodeKey: "node1"}, "20Gi"), "4Gi"),
				withMaximum(capacity("topo-node", map[string]string{topology.NodeKey: "node2"}, "20Gi"), "8Gi")),
			podWith("a"), []string{"node2"}, nil, map[string]string{"node1": "pvc default/a: needs a volume of 6Gi; the largest the node pool of node1 can make is 4Gi"}},
		{"pending claims promised to a node count against it",
			seed(class("topo-node", driver, "node"), claim("a", "topo-node", "6Gi"), pending,
				capacity("topo-node", map[string]string{topology.NodeKey: "node1"}, "10Gi"),
				capacity("topo-node", map[string]string{topology.NodeKey: "node2"}, "10Gi")),
			podWith("a"), []string{"node2"}, nil, map[string]string{"node1": "6Gi promised to pending claims"}},
		{"a zone pool's pending claims count on every node of the zone",
			seed(class("topo-zone", driver, "zone"), claim("a", "topo-zone", "6Gi"), zonePending,
				capacity("topo-zone", map[string]string{topology.ZoneKey: "cn-hangzhou-b"}, "10Gi")),
			podWith("a"), nil, nil, map[string]string{
				"node1": "in the zone pool of cn-hangzhou-b, which has 10Gi free with 6Gi promised",
				"node2": "in the zone pool of cn-hangzhou-b, which has 10Gi free with 6Gi promised"}},
		{"a claim being deleted fits nowhere",
			seed(class("topo-node", driver, "node"), deleting), podWith("deleting"),
			nil, map[string]string{"node1": "pvc default/deleting is being deleted"}, nil},
		{"a claim naming a PV not bound yet waits for the PV controller",
			seed(localPV("pv-node2", "", "1Gi", "node2"), unfinished), podWith("unfinished"),
			nil, map[string]string{"node2": "has not bound them yet"}, nil},
		{"a claim promised to node2 is provisioned only there",
			seed(class("topo-node", driver, "node"), promised), podWith("promised"),
			[]string{"node2"}, map[string]string{"node1": "already being provisioned for node node2"}, nil},
		{"missing claim fits nowhere", seed(), podWith("ghost"), nil, map[string]string{"node1": "pvc default/ghost not found"}, nil},
		{"pod without claims fits everywhere", seed(), podWith(), []string{"node1", "node2"}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Filter(tt.state, driver, tt.pod, []string{"node1", "node2"})
			if strings.Join(*got.NodeNames, ",") != strings.Join(tt.wantFit, ",") {
				t.Fatalf("fit = %v, want %v (unresolvable %v, short %v)", *got.NodeNames, tt.wantFit, got.FailedAndUnresolvableNodes, got.FailedNodes)
			}
			for nodeName, want := range tt.wantUnresolvable {
				if !strings.Contains(got.FailedAndUnresolvableNodes[nodeName], want) {
					t.Errorf("unresolvable[%s] = %q, want it to say %q", nodeName, got.FailedAndUnresolvableNodes[nodeName], want)
				}
			}
			for nodeName, want := range tt.wantShort {
				if !strings.Contains(got.FailedNodes[nodeName], want) {
					t.Errorf("short[%s] = %q, want it to say %q", nodeName, got.FailedNodes[nodeName], want)
				}
			}
		})
	}
}

func TestFilterNilPodAndUnknownNode(t *testing.T) {
	got := Filter(seed(), driver, nil, []string{"node1"})
	if got.Error == "" || got.NodeNames == nil {
		t.Fatalf("nil pod: %+v", got)
	}
	got = Filter(seed(), driver, podWith(), []string{"node9"})
	// Not known yet is temporary (the cache will see it): FailedNodes.
	if len(*got.NodeNames) != 0 || got.FailedNodes["node9"] == "" {
		t.Fatalf("unknown node: %+v", got)
	}
}

func TestPrioritize(t *testing.T) {
	state := seed(class("local", noProvisioner, "node"), claim("local-pvc", "local", "5Gi"),
		localPV("exact", "local", "5Gi", "node1"), localPV("wasteful", "local", "50Gi", "node2"))
	scores := Prioritize(state, driver, podWith("local-pvc"), []string{"node1", "node2"})
	if scores[0].Score != MaxScore || scores[1].Score >= scores[0].Score {
		t.Fatalf("scores = %+v, want the exact fit on node1 to win", scores)
	}
	spread := seed(class("topo-node", driver, "node"), claim("a", "topo-node", "1Gi"),
		capacity("topo-node", map[string]string{topology.NodeKey: "node1"}, "10Gi"),
		capacity("topo-node", map[string]string{topology.NodeKey: "node2"}, "40Gi"))
	scores = Prioritize(spread, driver, podWith("a"), []string{"node1", "node2"})
	if scores[1].Score != MaxScore || scores[0].Score >= scores[1].Score {
		t.Fatalf("spread scores = %+v, want the emptier node2 first", scores)
	}
	for _, s := range scores {
		if s.Score < 0 || s.Score > MaxScore {
			t.Fatalf("score %d out of 0..10", s.Score)
		}
	}
}

func TestExplain(t *testing.T) {
	tests := []struct {
		name   string
		result extenderv1.ExtenderFilterResult
		want   string
	}{
		{"some node fits: nothing to explain",
			extenderv1.ExtenderFilterResult{NodeNames: &[]string{"node1"}, FailedAndUnresolvableNodes: extenderv1.FailedNodesMap{"node2": "x"}}, ""},
		{"same reasons grouped, most common first",
			extenderv1.ExtenderFilterResult{NodeNames: &[]string{}, FailedAndUnresolvableNodes: extenderv1.FailedNodesMap{"node1": "zone d", "node2": "zone d"},
				FailedNodes: extenderv1.FailedNodesMap{"node3": "pool full"}},
			"toposnap: 0/3 nodes can hold the pod's volumes: 2 node(s): zone d; 1 node(s): pool full."},
		{"no reasons at all (no nodes)", extenderv1.ExtenderFilterResult{NodeNames: &[]string{}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Explain(tt.result, 3); got != tt.want {
				t.Fatalf("Explain = %q, want %q", got, tt.want)
			}
		})
	}
}
