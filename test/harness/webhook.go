package harness

import (
	"context"
	"fmt"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/webhook"
)

// startWebhook runs the webhook with a fresh CA, registers it with the API
// server as the chart would (failurePolicy Fail), and waits until a dry-run
// StorageClass comes back mutated.
func (e *Env) startWebhook(ctx context.Context, markPods bool) error {
	pki, err := WritePKI(e.Dir)
	if err != nil {
		return err
	}
	port, err := FreePort()
	if err != nil {
		return err
	}
	address := fmt.Sprintf("127.0.0.1:%d", port)
	args := []string{"--listen", address, "--tls-cert-file", pki.CertFile, "--tls-key-file", pki.KeyFile, "--kubeconfig", e.Cluster.Kubeconfig, "--v", "2"}
	var pods webhook.PodOptions
	if markPods {
		pods = webhook.PodOptions{VolumeResource: webhook.VolumeResource, ResourceSchedulers: []string{webhook.DefaultSchedulerName}}
		args = append(args, "--volume-resource", string(pods.VolumeResource), "--volume-resource-schedulers", webhook.DefaultSchedulerName)
	}
	if err := e.controlPlaneNode().start("webhook", "toposnap-webhook", args...); err != nil {
		return err
	}
	mutating, validating := webhook.Configurations(webhook.ConfigurationOptions{
		Name: "toposnap-webhook",
		ClientConfig: func(path string) admissionregistrationv1.WebhookClientConfig {
			return admissionregistrationv1.WebhookClientConfig{URL: ptr.To("https://" + address + path), CABundle: pki.CAPEM}
		},
		FailurePolicy:  admissionregistrationv1.Fail,
		TimeoutSeconds: 5,
		Pods:           pods,
	})
	api := e.Cluster.Client.AdmissionregistrationV1()
	if _, err := api.MutatingWebhookConfigurations().Create(ctx, mutating, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create MutatingWebhookConfiguration: %w", err)
	}
	if _, err := api.ValidatingWebhookConfigurations().Create(ctx, validating, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create ValidatingWebhookConfiguration: %w", err)
	}
	probe := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "toposnap-webhook-probe"}, Provisioner: webhook.DriverName}
	err = cluster.Poll(ctx, 100*time.Millisecond, 2*time.Minute, func() (bool, error) {
		created, err := e.Cluster.Client.StorageV1().StorageClasses().Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err == nil && ptr.Deref(created.VolumeBindingMode, "") == storagev1.VolumeBindingWaitForFirstConsumer, nil
	})
	if err != nil {
		return fmt.Errorf("webhook not effective (see %s): %w", e.LogPath("control-plane", "webhook"), err)
	}
	return nil
}
