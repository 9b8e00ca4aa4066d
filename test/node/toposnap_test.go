package node

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/toposnap/toposnap/test/cluster"
)

// toposnap installed by helm on the real node serves a volume that a real
// pod writes to and reads back: the kubelet found the driver through the
// registrar, staged and published the volume through its own CSI calls, and
// the chart's scheduler placed the pod with the extender.
func TestPodWritesToAToposnapVolume(t *testing.T) {
	needNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if err := testNode.InstallToposnap(ctx, InstallOptions{}); err != nil {
		t.Fatalf("install toposnap: %v\n%s", err, testNode.describeRelease(ctx))
	}
	client := testCluster.Client
	namespace := "volume-write"
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	className := "toposnap-node"
	claim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data", Namespace: namespace},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &className,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("64Mi")}},
		},
	}
	if _, err := client.CoreV1().PersistentVolumeClaims(namespace).Create(ctx, claim, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create claim: %v", err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "writer", Namespace: namespace},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name:         "writer",
				Image:        busyboxImage,
				Command:      []string{"sh", "-c", "echo toposnap > /data/file && sync && md5sum /data/file && sleep 3600"},
				VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}},
			}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim.Name},
			}}},
			TerminationGracePeriodSeconds: new(int64),
		},
	}
	if _, err := client.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	var logs string
	err := cluster.Poll(ctx, 2*time.Second, 5*time.Minute, func() (bool, error) {
		out, err := testCluster.Kubectl(ctx, "logs", "-n", namespace, pod.Name)
		if err != nil {
			return false, nil
		}
		logs = string(out)
		return strings.Contains(logs, "/data/file"), nil
	})
	if err != nil {
		described, _ := testCluster.Kubectl(ctx, "describe", "pod,pvc", "-n", namespace)
		t.Fatalf("the pod never wrote to its volume (logs %q): %v\n%s", logs, err, described)
	}
	// The file is on the toposnap volume, not in the container: the mount
	// the kubelet made is the driver's.
	out, err := testCluster.Kubectl(ctx, "exec", "-n", namespace, pod.Name, "--", "sh", "-c", "grep ' /data ' /proc/mounts && cat /data/file")
	if err != nil || !strings.Contains(string(out), "toposnap\n") {
		t.Fatalf("exec in the writer: %q, %v", out, err)
	}
	t.Logf("writer: %s", strings.TrimSpace(logs))
}
