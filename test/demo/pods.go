package main

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/test/cluster"
)

// dataFile is what the writer pod writes and the reader pod reads back.
const dataFile = "/data/data.bin"

// dataBytes is how much the writer writes: enough that a copy would take
// visible time, while a btrfs snapshot does not.
const dataBytes = 16 << 20

// Pods end their script by sleeping, so they stay up for `kubectl exec`.
const keepAlive = "exec sleep 2147483647"

// The writer's script: show that /data is the toposnap mount, write random
// bytes, flush them to the pool, print their sha256. Any failure ends the
// container, and the demo with it (restartPolicy Never: a second run would
// write other bytes).
var writerScript = fmt.Sprintf(`set -e
grep ' /data ' /proc/mounts
head -c %d /dev/urandom > %s
sync
sha256sum %s
%s`, dataBytes, dataFile, dataFile, keepAlive)

var readerScript = fmt.Sprintf(`set -e
grep ' /data ' /proc/mounts
sha256sum %s
%s`, dataFile, keepAlive)

var (
	// checksumLine is sha256sum's answer for dataFile.
	checksumLine = regexp.MustCompile(`(?m)^([0-9a-f]{64})  ` + regexp.QuoteMeta(dataFile) + `$`)
	// mountLine is /proc/mounts' line for /data: device, mount point,
	// file system type, options.
	mountLine = regexp.MustCompile(`(?m)^(\S+) /data (\S+) (\S+)`)
)

// busyboxImage is the busybox reference test/node imported into the real
// node's containerd (nothing can be pulled here).
func busyboxImage(images map[string]string) (string, error) {
	var references []string
	for reference := range images {
		references = append(references, reference)
		if strings.Contains(reference, "/busybox:") {
			return reference, nil
		}
	}
	sort.Strings(references)
	return "", fmt.Errorf("no busybox among the real node's images %v", references)
}

func (d *demo) createClaim(name, class, size string, source *corev1.TypedLocalObjectReference) error {
	claim := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr.To(class), DataSource: source,
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}}}}
	_, err := d.cluster.Client.CoreV1().PersistentVolumeClaims(ns).Create(d.ctx, claim, metav1.CreateOptions{})
	return err
}

// createPod creates a busybox pod running script with claim's volume at
// /data, says which scheduler it went to (the webhook moves pods that use
// toposnap's classes to the chart's toposnap-scheduler, which asks the
// extender) and returns it as admitted.
func (d *demo) createPod(name, claim, script string) (*corev1.Pod, error) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: name, Image: d.busybox, Command: []string{"sh", "-c", script},
			VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}}},
		Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}},
		RestartPolicy:                 corev1.RestartPolicyNever,
		TerminationGracePeriodSeconds: ptr.To[int64](0),
	}}
	client, collected, err := d.clientHearingWebhook()
	if err != nil {
		return nil, err
	}
	created, err := client.CoreV1().Pods(ns).Create(d.ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s: %w", name, err)
	}
	say("pod %s created; schedulerName %s", created.Name, created.Spec.SchedulerName)
	collected.say()
	return created, nil
}

// waitPlaced waits for the claim to bind and the pod to be scheduled,
// printing each change, and returns the PV and the pod's node. A pod on
// the real node must also be Running: there a kubelet really starts it
// (the Node objects without a kubelet never run theirs).
func (d *demo) waitPlaced(claimName, podName string) (*corev1.PersistentVolume, string, error) {
	var pv *corev1.PersistentVolume
	var nodeName, last string
	err := cluster.Poll(d.ctx, 250*time.Millisecond, 3*time.Minute, func() (bool, error) {
		claim, err := d.cluster.Client.CoreV1().PersistentVolumeClaims(ns).Get(d.ctx, claimName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pod, err := d.cluster.Client.CoreV1().Pods(ns).Get(d.ctx, podName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		now := fmt.Sprintf("pvc %s %s, pod %s %s", claimName, claim.Status.Phase, podName, pod.Status.Phase)
		if pod.Spec.NodeName != "" {
			now += " on " + pod.Spec.NodeName
		}
		if now != last {
			say("  %s", now)
			last = now
		}
		if pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded {
			return false, fmt.Errorf("pod %s ended (%s): %s", podName, pod.Status.Phase, d.podLogs(podName))
		}
		if claim.Status.Phase != corev1.ClaimBound || pod.Spec.NodeName == "" {
			return false, nil
		}
		if pod.Spec.NodeName == d.node.Name && pod.Status.Phase != corev1.PodRunning {
			return false, nil
		}
		nodeName = pod.Spec.NodeName
		pv, err = d.cluster.Client.CoreV1().PersistentVolumes().Get(d.ctx, claim.Spec.VolumeName, metav1.GetOptions{})
		return err == nil, err
	})
	if err != nil {
		described, _ := d.cluster.Kubectl(context.WithoutCancel(d.ctx), "describe", "pod/"+podName, "pvc/"+claimName)
		return nil, "", fmt.Errorf("pvc %s and pod %s: %w\n%s", claimName, podName, err, described)
	}
	return pv, nodeName, nil
}

// podOutput waits until the pod's log matches want and returns the
// submatches; a pod that ended without printing it is an error quoting its
// log.
func (d *demo) podOutput(podName string, want *regexp.Regexp) ([]string, error) {
	var match []string
	err := cluster.Poll(d.ctx, 500*time.Millisecond, 2*time.Minute, func() (bool, error) {
		logs := d.podLogs(podName)
		if match = want.FindStringSubmatch(logs); match != nil {
			return true, nil
		}
		pod, err := d.cluster.Client.CoreV1().Pods(ns).Get(d.ctx, podName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded {
			return false, fmt.Errorf("pod %s ended (%s) without printing %q; its log: %q", podName, pod.Status.Phase, want, logs)
		}
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("output of pod %s: %w (log so far: %q)", podName, err, d.podLogs(podName))
	}
	return match, nil
}

// podLogs is the pod's log as the kubelet serves it ("" when it cannot).
func (d *demo) podLogs(podName string) string {
	out, err := d.cluster.Client.CoreV1().Pods(ns).GetLogs(podName, &corev1.PodLogOptions{}).DoRaw(d.ctx)
	if err != nil {
		return ""
	}
	return string(out)
}

// volumeFacts runs the pod's side of a data step: it waits for the mount
// line and the checksum the pod prints and says them.
func (d *demo) volumeFacts(podName string) (string, error) {
	mount, err := d.podOutput(podName, mountLine)
	if err != nil {
		return "", err
	}
	sum, err := d.podOutput(podName, checksumLine)
	if err != nil {
		return "", err
	}
	say("  %s: /data is %s (%s) from %s", podName, mount[2], strings.Join(subvolume(mount[3]), ","), mount[1])
	return sum[1], nil
}

// subvolume picks the mount options that say where the data lives.
func subvolume(options string) []string {
	var kept []string
	for _, option := range strings.Split(options, ",") {
		if strings.HasPrefix(option, "subvol=") || option == "rw" || option == "ro" {
			kept = append(kept, option)
		}
	}
	return kept
}
