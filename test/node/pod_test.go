package node

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/toposnap/toposnap/test/cluster"
)

// busyboxImage is the e2e suite's busybox, imported at start.
const busyboxImage = "registry.k8s.io/e2e-test-images/busybox:1.37.0-2"

func needNode(t *testing.T) {
	t.Helper()
	if testNode == nil {
		t.Skip("needs a real node (not with -short)")
	}
}

// A pod runs on the real node, writes into an emptyDir, resolves and
// reaches the kubernetes Service, and `kubectl exec` and `kubectl logs`
// reach it through the kubelet.
func TestBusyboxPodRunsOnTheRealNode(t *testing.T) {
	needNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	client := testCluster.Client
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "busybox", Namespace: "default"},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name:  "busybox",
				Image: busyboxImage,
				// busybox's wget cannot speak the API server's TLS; resolving
				// the Service's name and connecting to it proves the DNS and
				// the proxy, and the chart's pods prove the rest.
				Command: []string{"sh", "-c", `echo hello > /data/file && cat /data/file &&
nslookup kubernetes.default.svc.cluster.local | grep -q 'Address: 10.96.0.1' &&
nc -w 5 kubernetes.default 443 </dev/null && echo api-reachable;
sleep 3600`},
				VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}},
			}},
			Volumes:                       []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
			TerminationGracePeriodSeconds: new(int64),
		},
	}
	if _, err := client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	defer func() {
		_ = client.CoreV1().Pods("default").Delete(context.Background(), pod.Name, metav1.DeleteOptions{})
	}()
	var logs string
	err := cluster.Poll(ctx, time.Second, 2*time.Minute, func() (bool, error) {
		out, err := testCluster.Kubectl(ctx, "logs", "-n", "default", pod.Name)
		if err != nil {
			return false, nil
		}
		logs = string(out)
		return strings.Contains(logs, "api-reachable"), nil
	})
	if err != nil {
		current, _ := client.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
		t.Fatalf("pod never logged hello and api-reachable (logs %q, status %+v): %v\nkubelet log: %s", logs, current.Status, err, testNode.Logs("kubelet"))
	}
	out, err := testCluster.Kubectl(ctx, "exec", "-n", "default", pod.Name, "--", "cat", "/data/file")
	if err != nil || strings.TrimSpace(string(out)) != "hello" {
		t.Fatalf("kubectl exec cat /data/file = %q, %v; want hello", out, err)
	}
}
