package cluster

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// testCluster is this package's cluster; nil under -short.
var testCluster *Cluster

func TestMain(m *testing.M) {
	os.Exit(TestMainWithCluster(m, Options{}, func(c *Cluster) { testCluster = c }))
}

// requireCluster returns the package's cluster, skipping the test without one.
func requireCluster(t *testing.T) *Cluster {
	t.Helper()
	if testCluster == nil {
		t.Skip("no cluster under -short")
	}
	return testCluster
}

func TestSeedNodesAreReadyAndOnlyTheMasterIsTainted(t *testing.T) {
	c := requireCluster(t)
	tests := []struct {
		node       string
		wantTaints []string
	}{
		{"master", []string{LabelControlPlane}},
		{"node1", nil},
		{"node2", nil},
	}
	for _, tt := range tests {
		t.Run(tt.node, func(t *testing.T) {
			node, err := c.Client.CoreV1().Nodes().Get(t.Context(), tt.node, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("get node: %v", err)
			}
			if !isReady(*node) {
				t.Errorf("node is not Ready: %+v", node.Status.Conditions)
			}
			var taints []string
			for _, taint := range node.Spec.Taints {
				taints = append(taints, taint.Key)
			}
			if !slices.Equal(taints, tt.wantTaints) {
				t.Errorf("taints = %v, want %v", taints, tt.wantTaints)
			}
			if zone := node.Labels[corev1.LabelTopologyZone]; zone != SeedZone {
				t.Errorf("zone label = %q, want %q", zone, SeedZone)
			}
		})
	}
}

func TestSchedulerBindsPodToWorkerAndKwokRunsIt(t *testing.T) {
	c := requireCluster(t)
	ctx := t.Context()
	pods := c.Client.CoreV1().Pods(metav1.NamespaceDefault)
	pod, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "pause-"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "pause", Image: "registry.k8s.io/pause:3.10"},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod: %v", err)
	}
	t.Cleanup(func() {
		_ = pods.Delete(context.WithoutCancel(ctx), pod.Name, metav1.DeleteOptions{})
	})
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		pod, err = pods.Get(ctx, pod.Name, metav1.GetOptions{})
		return err == nil && pod.Status.Phase == corev1.PodRunning, err
	})
	if err != nil {
		t.Fatalf("pod %s not Running (node %q, phase %s): %v", pod.Name, pod.Spec.NodeName, pod.Status.Phase, err)
	}
	if node := pod.Spec.NodeName; node != "node1" && node != "node2" {
		t.Errorf("pod bound to %q, want node1 or node2", node)
	}
}

func TestKubectlSeesTheNodes(t *testing.T) {
	c := requireCluster(t)
	out, err := c.Kubectl(t.Context(), "get", "nodes", "-o", "name")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(out)); !slices.Equal(got, []string{"node/master", "node/node1", "node/node2"}) {
		t.Errorf("kubectl get nodes = %v", got)
	}
}
