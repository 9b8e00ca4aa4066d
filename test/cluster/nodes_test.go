package cluster

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestNodeProblem(t *testing.T) {
	ready := corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}
	notReady := corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionFalse}}}
	node := func(status corev1.NodeStatus, taints ...string) corev1.Node {
		n := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1"}, Status: status}
		for _, key := range taints {
			n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: key, Effect: corev1.TaintEffectNoSchedule})
		}
		return n
	}
	tests := []struct {
		name  string
		nodes []corev1.Node
		want  string // substring of the problem; "" for a usable node
	}{
		{"ready untainted node is usable", []corev1.Node{node(ready)}, ""},
		{"control-plane taint does not make a node unusable", []corev1.Node{node(ready, LabelControlPlane)}, ""},
		{"missing node is reported", nil, "not registered"},
		{"node without a Ready condition is reported", []corev1.Node{node(corev1.NodeStatus{})}, "not Ready"},
		{"NotReady node is reported", []corev1.Node{node(notReady)}, "not Ready"},
		{"not-ready taint is reported", []corev1.Node{node(ready, corev1.TaintNodeNotReady)}, corev1.TaintNodeNotReady},
		{"unreachable taint is reported", []corev1.Node{node(ready, corev1.TaintNodeUnreachable)}, corev1.TaintNodeUnreachable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := nodeProblem(tt.nodes, "node1")
			if (got == "") != (tt.want == "") || !strings.Contains(got, tt.want) {
				t.Errorf("nodeProblem() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestReadyStatusKeepsRequestedCapacity(t *testing.T) {
	tests := []struct {
		name    string
		want    corev1.NodeStatus
		wantCPU string
	}{
		{"no capacity asked gives the default", corev1.NodeStatus{}, "8"},
		{"asked allocatable is kept", corev1.NodeStatus{Allocatable: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2")}}, "2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status := readyStatus(tt.want, metav1.Now())
			if !isReady(corev1.Node{Status: status}) {
				t.Fatalf("status is not Ready: %+v", status.Conditions)
			}
			if got := status.Allocatable.Cpu().String(); got != tt.wantCPU {
				t.Errorf("allocatable cpu = %s, want %s", got, tt.wantCPU)
			}
			if got := status.Capacity.Cpu().String(); got != tt.wantCPU {
				t.Errorf("capacity cpu = %s, want %s", got, tt.wantCPU)
			}
		})
	}
}
