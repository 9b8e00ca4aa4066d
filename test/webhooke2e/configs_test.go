package webhooke2e

import (
	"context"
	"fmt"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/webhook"
)

// Names the configurations use.
const (
	configName = "toposnap-webhook"
	// schedulerName is the second scheduler pods using toposnap classes are
	// pointed at (the webhook runs with --scheduler-name).
	schedulerName = "toposnap-scheduler"
	probeClass    = "e2e-webhook-probe"
)

// podOptions are what the webhook runs with, as the chart's with the second
// scheduler: pods are moved to it and given the volume resource it manages.
var podOptions = webhook.PodOptions{SchedulerName: schedulerName, VolumeResource: webhook.VolumeResource, ResourceSchedulers: []string{schedulerName}}

// registerWebhooks creates the webhook's Mutating- and
// ValidatingWebhookConfiguration, as the chart would, calling the webhook
// at base with failurePolicy Fail so that every check is enforced.
func registerWebhooks(ctx context.Context, c *cluster.Cluster, base string, caBundle []byte) error {
	mutating, validating := webhook.Configurations(webhook.ConfigurationOptions{
		Name: configName,
		ClientConfig: func(path string) admissionregistrationv1.WebhookClientConfig {
			return admissionregistrationv1.WebhookClientConfig{URL: ptr.To(base + path), CABundle: caBundle}
		},
		FailurePolicy:  admissionregistrationv1.Fail,
		TimeoutSeconds: 5,
		Pods:           podOptions,
	})
	if _, err := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, mutating, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create MutatingWebhookConfiguration: %w", err)
	}
	if _, err := c.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, validating, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create ValidatingWebhookConfiguration: %w", err)
	}
	return nil
}

// waitEffective waits until the API server calls both configurations:
// a dry-run StorageClass comes back mutated, and a dry-run claim restoring
// a missing snapshot is rejected by the webhook.
func waitEffective(ctx context.Context, c *cluster.Cluster) error {
	probe := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: probeClass}, Provisioner: webhook.DriverName}
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	var last string
	err := poll(ctx, 100*time.Millisecond, time.Minute, func() (bool, error) {
		created, err := c.Client.StorageV1().StorageClasses().Create(ctx, probe, dryRun)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		mode := created.VolumeBindingMode
		last = fmt.Sprintf("probe StorageClass has volumeBindingMode %v", ptr.Deref(mode, ""))
		return mode != nil && *mode == storagev1.VolumeBindingWaitForFirstConsumer, nil
	})
	if err != nil {
		return fmt.Errorf("mutating webhook not effective (%s): %w", last, err)
	}
	// The claim's class must exist for the webhook to look at the claim.
	if _, err := c.Client.StorageV1().StorageClasses().Create(ctx, probe, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create probe StorageClass: %w", err)
	}
	claim := restoreClaim("default", "probe", probeClass, "1Gi", "snapshot.storage.k8s.io", "no-such-snapshot")
	err = poll(ctx, 100*time.Millisecond, time.Minute, func() (bool, error) {
		_, err := c.Client.CoreV1().PersistentVolumeClaims("default").Create(ctx, claim, dryRun)
		if err == nil {
			last = "probe claim admitted"
			return false, nil
		}
		last = err.Error()
		return strings.Contains(last, "no-such-snapshot not found"), nil
	})
	if err != nil {
		return fmt.Errorf("validating webhook not effective (%s): %w", last, err)
	}
	return nil
}

// restoreClaim is a claim of class requesting size restored from the
// VolumeSnapshot name of apiGroup.
func restoreClaim(namespace, name, class, size, apiGroup, snapshot string) *corev1.PersistentVolumeClaim {
	claim := newClaim(namespace, name, class, size)
	claim.Spec.DataSource = &corev1.TypedLocalObjectReference{APIGroup: ptr.To(apiGroup), Kind: "VolumeSnapshot", Name: snapshot}
	return claim
}
