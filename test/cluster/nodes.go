package cluster

import (
	"context"
	"fmt"
	"runtime"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// Where the seed's nodes are, as in its demo.
const (
	SeedRegion = "cn-hangzhou"
	SeedZone   = "cn-hangzhou-b"
	// SecondZone is the zone of TwoZoneNodes' extra worker, in SeedRegion.
	SecondZone = "cn-hangzhou-c"
)

// SecondZoneWorker is the worker TwoZoneNodes adds in SecondZone.
const SecondZoneWorker = "node3"

// LabelControlPlane marks the master; the same key is its NoSchedule taint.
const LabelControlPlane = "node-role.kubernetes.io/control-plane"

// defaultAllocatable is what a node offers when its Options entry sets no
// status: roomy enough that resource fit never decides a test by accident.
var defaultAllocatable = corev1.ResourceList{
	corev1.ResourceCPU:              resource.MustParse("8"),
	corev1.ResourceMemory:           resource.MustParse("32Gi"),
	corev1.ResourcePods:             resource.MustParse("110"),
	corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
}

// SeedNodes returns the seed demo's nodes: "master", tainted
// node-role.kubernetes.io/control-plane:NoSchedule, and the workers "node1"
// and "node2", all in region SeedRegion, zone SeedZone (under both the
// topology.kubernetes.io and the legacy failure-domain.beta.kubernetes.io
// keys). kwok --manage-all-nodes needs no label or annotation on them.
func SeedNodes() []corev1.Node {
	master := newNode("master")
	master.Labels[LabelControlPlane] = ""
	master.Spec.Taints = []corev1.Taint{{Key: LabelControlPlane, Effect: corev1.TaintEffectNoSchedule}}
	return []corev1.Node{master, newNode("node1"), newNode("node2")}
}

// TwoZoneNodes returns SeedNodes plus SecondZoneWorker in SecondZone, for
// tests whose claims must choose between two zones (each with its own zone
// pool). Callers that keep single-zone tests in the same cluster can taint
// the extra worker so that only pods tolerating it land there.
func TwoZoneNodes(extraTaints ...corev1.Taint) []corev1.Node {
	extra := NodeInZone(SecondZoneWorker, SecondZone)
	extra.Spec.Taints = append(extra.Spec.Taints, extraTaints...)
	return append(SeedNodes(), extra)
}

// newNode is a node named name in the seed's zone.
func newNode(name string) corev1.Node { return NodeInZone(name, SeedZone) }

// NodeInZone is a node named name in zone of SeedRegion, labelled as a
// kubelet on this machine's architecture would label itself.
func NodeInZone(name, zone string) corev1.Node {
	return corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: name,
			Labels: map[string]string{
				corev1.LabelHostname:                name,
				corev1.LabelOSStable:                "linux",
				corev1.LabelArchStable:              runtime.GOARCH,
				corev1.LabelTopologyRegion:          SeedRegion,
				corev1.LabelTopologyZone:            zone,
				corev1.LabelFailureDomainBetaRegion: SeedRegion,
				corev1.LabelFailureDomainBetaZone:   zone,
			},
		},
	}
}

// registerNode creates node and does what a kubelet and the node lifecycle
// controller would: reports it Ready with its capacity, then lifts the
// not-ready taint that admission puts on every new node.
func registerNode(ctx context.Context, client kubernetes.Interface, node corev1.Node) error {
	spec := corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: node.Name, Labels: node.Labels, Annotations: node.Annotations,
	}, Spec: node.Spec}
	if _, err := client.CoreV1().Nodes().Create(ctx, &spec, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create node %s: %w", node.Name, err)
	}
	if err := reportReady(ctx, client, node.Name, node.Status); err != nil {
		return err
	}
	return removeTaints(ctx, client, node.Name, corev1.TaintNodeNotReady, corev1.TaintNodeUnreachable)
}

// reportReady sets the node's status to Ready, with the capacity of status
// (or defaultAllocatable when it names none).
func reportReady(ctx context.Context, client kubernetes.Interface, name string, status corev1.NodeStatus) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		node.Status = readyStatus(status, metav1.Now())
		_, err = client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("report node %s ready: %w", name, err)
	}
	return nil
}

// readyStatus is the status a healthy kubelet would report.
func readyStatus(want corev1.NodeStatus, now metav1.Time) corev1.NodeStatus {
	status := *want.DeepCopy()
	if status.Allocatable == nil {
		status.Allocatable = defaultAllocatable.DeepCopy()
	}
	if status.Capacity == nil {
		status.Capacity = status.Allocatable.DeepCopy()
	}
	condition := func(kind corev1.NodeConditionType, value corev1.ConditionStatus, reason string) corev1.NodeCondition {
		return corev1.NodeCondition{
			Type: kind, Status: value, Reason: reason,
			LastHeartbeatTime: now, LastTransitionTime: now,
		}
	}
	status.Conditions = []corev1.NodeCondition{
		condition(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady"),
		condition(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory"),
		condition(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure"),
		condition(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID"),
	}
	status.Phase = corev1.NodeRunning
	if status.NodeInfo.OperatingSystem == "" {
		status.NodeInfo.OperatingSystem = "linux"
		status.NodeInfo.Architecture = runtime.GOARCH
	}
	return status
}

// removeTaints drops the taints with the given keys from the node.
func removeTaints(ctx context.Context, client kubernetes.Interface, name string, keys ...string) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		kept := slices.DeleteFunc(slices.Clone(node.Spec.Taints), func(t corev1.Taint) bool {
			return slices.Contains(keys, t.Key)
		})
		if len(kept) == len(node.Spec.Taints) {
			return nil
		}
		node.Spec.Taints = kept
		_, err = client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("remove taints %v from node %s: %w", keys, name, err)
	}
	return nil
}

// nodeProblem says why the node named want is not yet usable by the
// scheduler: missing, not Ready, or still tainted not-ready/unreachable.
// It returns "" for a usable node.
func nodeProblem(nodes []corev1.Node, want string) string {
	i := slices.IndexFunc(nodes, func(n corev1.Node) bool { return n.Name == want })
	if i < 0 {
		return fmt.Sprintf("node %s is not registered", want)
	}
	node := nodes[i]
	if !isReady(node) {
		return fmt.Sprintf("node %s is not Ready", want)
	}
	for _, taint := range node.Spec.Taints {
		if taint.Key == corev1.TaintNodeNotReady || taint.Key == corev1.TaintNodeUnreachable {
			return fmt.Sprintf("node %s still has taint %s", want, taint.Key)
		}
	}
	return ""
}

// isReady reports whether the node's Ready condition is True.
func isReady(node corev1.Node) bool {
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
