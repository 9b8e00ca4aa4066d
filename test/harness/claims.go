package harness

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/toposnap/toposnap/test/cluster"
)

// WaitBound waits for a claim to be bound and its pod scheduled, and returns
// the claim's PV and the pod's node. Its error lists the namespace's events.
func WaitBound(ctx context.Context, client kubernetes.Interface, ns, claimName, podName string, timeout time.Duration) (*corev1.PersistentVolume, string, error) {
	var pv *corev1.PersistentVolume
	var node string
	err := cluster.Poll(ctx, 200*time.Millisecond, timeout, func() (bool, error) {
		claim, err := client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claimName, metav1.GetOptions{})
		if err != nil || claim.Status.Phase != corev1.ClaimBound {
			return false, nil
		}
		pod, err := client.CoreV1().Pods(ns).Get(ctx, podName, metav1.GetOptions{})
		if err != nil || pod.Spec.NodeName == "" {
			return false, nil
		}
		pv, err = client.CoreV1().PersistentVolumes().Get(ctx, claim.Spec.VolumeName, metav1.GetOptions{})
		node = pod.Spec.NodeName
		return err == nil, nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("claim %s/%s did not bind with pod %s scheduled: %w\nevents:\n%s", ns, claimName, podName, err, NamespaceEvents(client, ns))
	}
	return pv, node, nil
}

// NamespaceEvents lists a namespace's events one per line, for failure
// messages.
func NamespaceEvents(client kubernetes.Interface, ns string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	events, err := client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var lines []string
	for _, e := range events.Items {
		lines = append(lines, fmt.Sprintf("%s %s/%s %s: %s", e.Type, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message))
	}
	return strings.Join(lines, "\n")
}
