package chart

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/test/cluster"
)

const (
	installRelease   = "toposnap"
	installNamespace = "toposnap-install"
)

// webhookPKI is what must survive an upgrade: the Secret's CA and serving
// pair, and the caBundle of every webhook.
type webhookPKI struct {
	ca, cert, key []byte
	bundles       map[string][]byte // "<kind>/<webhook>" -> caBundle
	timeouts      map[string]int32
}

// TestInstallUpgradeKeepsTheWebhookCA installs the chart for real (no
// --wait: no kubelet runs its pods), upgrades it with a changed value and
// checks that the webhook's CA, serving pair and caBundles, and the
// extender's CA and serving pair (the CA the notes told the scheduler to
// trust), are byte for byte the same, then uninstalls it and checks that
// its objects are gone.
func TestInstallUpgradeKeepsTheWebhookCA(t *testing.T) {
	needCluster(t)
	ctx := ctxFor(t, 5*time.Minute)
	client := testCluster.Client
	base := []string{"--namespace", installNamespace, "-f", "test/chart/testdata/install.yaml"}
	t.Cleanup(func() {
		// Leave nothing behind if an assertion failed before the uninstall.
		_, _ = runHelm(context.Background(), "uninstall", installRelease, "--namespace", installNamespace, "--ignore-not-found")
	})

	out, err := runHelm(ctx, append([]string{"install", installRelease, chartDir, "--create-namespace"}, base...)...)
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	// NOTES.txt tells how to add the extender to an existing scheduler,
	// over https, trusting the CA in the extender's Secret.
	extenderHost := installRelease + "-extender." + installNamespace + ".svc"
	extenderTLS := readExtenderTLS(t, ctx)
	for _, snippet := range []string{
		"extenders:\n      - urlPrefix: https://" + extenderHost + ":8099",
		"tlsConfig:\n          serverName: " + extenderHost + "\n          caData: " + b64(extenderTLS.Data["ca.crt"]) + "\n",
	} {
		if !strings.Contains(string(out), snippet) {
			t.Errorf("helm install's notes lack the extender snippet %q:\n%s", snippet, out)
		}
	}
	verifyServing(t, extenderTLS.Data["ca.crt"], extenderTLS.Data["tls.crt"], extenderHost)
	t.Logf("helm install printed:\n%s", out)
	installed := readWebhookPKI(t, ctx)
	if len(installed.bundles) != 4 {
		t.Fatalf("found %d webhooks after install, want 4", len(installed.bundles))
	}
	for hook, bundle := range installed.bundles {
		if !bytes.Equal(bundle, installed.ca) {
			t.Errorf("webhook %s: caBundle is not the Secret's ca.crt", hook)
		}
	}
	verifyServing(t, installed.ca, installed.cert, installRelease+"-webhook."+installNamespace+".svc")

	// The controllers create the pods (nothing runs them here): their specs
	// pass the API server's pod admission (security context, priority
	// class, volumes).
	for _, component := range []string{"node", "controller", "extender", "webhook"} {
		selector := "app.kubernetes.io/instance=" + installRelease + ",app.kubernetes.io/component=" + component
		err := cluster.Poll(ctx, 200*time.Millisecond, time.Minute, func() (bool, error) {
			pods, err := client.CoreV1().Pods(installNamespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
			return err == nil && len(pods.Items) > 0, nil
		})
		if err != nil {
			out, _ := testCluster.Kubectl(ctx, "get", "events", "--namespace", installNamespace)
			t.Errorf("no %s pod was created: %v\n%s", component, err, out)
		}
	}

	// A changed value that re-renders both webhook configurations.
	if out, err := runHelm(ctx, append([]string{"upgrade", installRelease, chartDir, "--set", "webhook.timeoutSeconds=7", "--set", "extender.replicas=1"}, base...)...); err != nil {
		t.Fatalf("upgrade: %v\n%s", err, out)
	}
	upgraded := readWebhookPKI(t, ctx)
	for hook, timeout := range upgraded.timeouts {
		if timeout != 7 {
			t.Errorf("webhook %s: timeoutSeconds %d after upgrade, want 7 (was the upgrade applied?)", hook, timeout)
		}
	}
	extender, err := client.AppsV1().Deployments(installNamespace).Get(ctx, installRelease+"-extender", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ptr.Deref(extender.Spec.Replicas, 0); got != 1 {
		t.Errorf("extender replicas %d after upgrade, want 1", got)
	}
	if !bytes.Equal(installed.ca, upgraded.ca) || !bytes.Equal(installed.cert, upgraded.cert) || !bytes.Equal(installed.key, upgraded.key) {
		t.Error("the webhook Secret's CA or serving pair changed on upgrade")
	}
	for hook, bundle := range installed.bundles {
		if !bytes.Equal(bundle, upgraded.bundles[hook]) {
			t.Errorf("webhook %s: caBundle changed on upgrade", hook)
		}
	}
	for key, data := range readExtenderTLS(t, ctx).Data {
		if !bytes.Equal(data, extenderTLS.Data[key]) {
			t.Errorf("the extender Secret's %s changed on upgrade (schedulers trust the old CA)", key)
		}
	}
	t.Logf("CA (%d bytes), serving pair and %d caBundles identical after upgrade", len(installed.ca), len(upgraded.bundles))

	if out, err := runHelm(ctx, "uninstall", installRelease, "--namespace", installNamespace); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	gone := []struct {
		what string
		get  func() error
	}{
		{"webhook Secret", func() error {
			_, err := client.CoreV1().Secrets(installNamespace).Get(ctx, installRelease+"-webhook-tls", metav1.GetOptions{})
			return err
		}},
		{"extender Secret", func() error {
			_, err := client.CoreV1().Secrets(installNamespace).Get(ctx, installRelease+"-extender-tls", metav1.GetOptions{})
			return err
		}},
		{"node ValidatingAdmissionPolicy", func() error {
			_, err := client.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, installRelease+"-node-volumes", metav1.GetOptions{})
			return err
		}},
		{"node ValidatingAdmissionPolicyBinding", func() error {
			_, err := client.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Get(ctx, installRelease+"-node-volumes", metav1.GetOptions{})
			return err
		}},
		{"MutatingWebhookConfiguration", func() error {
			_, err := client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, installRelease+"-webhook", metav1.GetOptions{})
			return err
		}},
		{"ValidatingWebhookConfiguration", func() error {
			_, err := client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, installRelease+"-webhook", metav1.GetOptions{})
			return err
		}},
		{"CSIDriver", func() error {
			_, err := client.StorageV1().CSIDrivers().Get(ctx, "csi.toposnap.io", metav1.GetOptions{})
			return err
		}},
		{"StorageClass", func() error {
			_, err := client.StorageV1().StorageClasses().Get(ctx, "install-node", metav1.GetOptions{})
			return err
		}},
		{"provisioner ClusterRole", func() error {
			_, err := client.RbacV1().ClusterRoles().Get(ctx, installRelease+"-provisioner", metav1.GetOptions{})
			return err
		}},
		{"node DaemonSet", func() error {
			_, err := client.AppsV1().DaemonSets(installNamespace).Get(ctx, installRelease+"-node", metav1.GetOptions{})
			return err
		}},
	}
	for _, object := range gone {
		err := cluster.Poll(ctx, 200*time.Millisecond, time.Minute, func() (bool, error) {
			err := object.get()
			if err != nil && !apierrors.IsNotFound(err) {
				return false, err
			}
			return apierrors.IsNotFound(err), nil
		})
		if err != nil {
			t.Errorf("%s still there after uninstall: %v", object.what, err)
		}
	}
}

// readExtenderTLS reads the extender's chart-made TLS Secret of the install.
func readExtenderTLS(t *testing.T, ctx context.Context) *corev1.Secret {
	t.Helper()
	secret, err := testCluster.Client.CoreV1().Secrets(installNamespace).Get(ctx, installRelease+"-extender-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"ca.crt", "tls.crt", "tls.key"} {
		if len(secret.Data[key]) == 0 {
			t.Fatalf("Secret %s lacks %s", secret.Name, key)
		}
	}
	return secret
}

// readWebhookPKI reads the webhook Secret and configurations of the install.
func readWebhookPKI(t *testing.T, ctx context.Context) webhookPKI {
	t.Helper()
	client := testCluster.Client
	secret, err := client.CoreV1().Secrets(installNamespace).Get(ctx, installRelease+"-webhook-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pki := webhookPKI{ca: secret.Data["ca.crt"], cert: secret.Data["tls.crt"], key: secret.Data["tls.key"],
		bundles: map[string][]byte{}, timeouts: map[string]int32{}}
	if len(pki.ca) == 0 || len(pki.cert) == 0 || len(pki.key) == 0 {
		t.Fatalf("Secret %s lacks ca.crt, tls.crt or tls.key", secret.Name)
	}
	mutating, err := client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, installRelease+"-webhook", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	validating, err := client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, installRelease+"-webhook", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	record := func(kind, name string, config admissionv1.WebhookClientConfig, timeout *int32) {
		key := fmt.Sprintf("%s/%s", kind, name)
		pki.bundles[key], pki.timeouts[key] = config.CABundle, ptr.Deref(timeout, 0)
	}
	for _, hook := range mutating.Webhooks {
		record("mutating", hook.Name, hook.ClientConfig, hook.TimeoutSeconds)
	}
	for _, hook := range validating.Webhooks {
		record("validating", hook.Name, hook.ClientConfig, hook.TimeoutSeconds)
	}
	return pki
}
