package chart

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"slices"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	schedulerv1 "k8s.io/kube-scheduler/config/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/toposnap/toposnap/webhook"
)

// chartFailurePolicies are the chart's default failurePolicy per webhook
// (values.yaml webhook.failurePolicy says why).
var chartFailurePolicies = map[string]admissionv1.FailurePolicyType{
	"storageclass.toposnap.io":        admissionv1.Fail,
	"pvc-datasource.toposnap.io":      admissionv1.Fail,
	"pvc.toposnap.io":                 admissionv1.Fail,
	"volumesnapshotclass.toposnap.io": admissionv1.Ignore,
	"pod-scheduler.toposnap.io":       admissionv1.Ignore, // webhook.PodWebhook's own choice
}

// TestWebhookConfigurationsMirrorTheCode compares the chart's webhook
// configurations with webhook.Configurations, field by field, given the
// same Service, CA bundle, scheduler name and per-webhook failure policy:
// with the defaults, and with the second scheduler, where the webhook also
// moves pods to it.
func TestWebhookConfigurationsMirrorTheCode(t *testing.T) {
	defaultManaged := valueSets()[0]
	defaultManaged.name = "default scheduler managing the volume resource"
	defaultManaged.args = []string{"--set", "extender.managedResource.defaultScheduler=true"}
	for _, tc := range []struct {
		set  valueSet
		pods webhook.PodOptions
	}{
		{valueSets()[0], webhook.PodOptions{}},
		{valueSets()[2], webhook.PodOptions{SchedulerName: "toposnap-scheduler", VolumeResource: webhook.VolumeResource,
			ResourceSchedulers: []string{"toposnap-scheduler"}}},
		{defaultManaged, webhook.PodOptions{VolumeResource: webhook.VolumeResource, ResourceSchedulers: []string{"default-scheduler"}}},
	} {
		t.Run(tc.set.name, func(t *testing.T) {
			objects := render(t, ctxFor(t, time.Minute), tc.set)
			name := releaseName + "-toposnap-webhook"
			var mutating admissionv1.MutatingWebhookConfiguration
			var validating admissionv1.ValidatingWebhookConfiguration
			convert(t, find(t, objects, "MutatingWebhookConfiguration", name), &mutating)
			convert(t, find(t, objects, "ValidatingWebhookConfiguration", name), &validating)
			var secret corev1.Secret
			convert(t, find(t, objects, "Secret", releaseName+"-toposnap-webhook-tls"), &secret)
			caBundle := secret.Data["ca.crt"]

			wantMutating, wantValidating := webhook.Configurations(webhook.ConfigurationOptions{
				Name: name,
				ClientConfig: func(path string) admissionv1.WebhookClientConfig {
					return admissionv1.WebhookClientConfig{
						Service:  &admissionv1.ServiceReference{Name: name, Namespace: dryRunNamespace, Path: ptr.To(path), Port: ptr.To[int32](443)},
						CABundle: caBundle,
					}
				},
				FailurePolicy: admissionv1.Fail,
				Pods:          tc.pods,
			})
			for i := range wantMutating.Webhooks {
				wantMutating.Webhooks[i].FailurePolicy = ptr.To(chartFailurePolicies[wantMutating.Webhooks[i].Name])
			}
			for i := range wantValidating.Webhooks {
				wantValidating.Webhooks[i].FailurePolicy = ptr.To(chartFailurePolicies[wantValidating.Webhooks[i].Name])
			}
			if !equality.Semantic.DeepEqual(wantMutating.Webhooks, mutating.Webhooks) {
				t.Errorf("MutatingWebhookConfiguration differs from webhook.Configurations:\nchart:\n%s\ncode:\n%s", toYAML(t, mutating.Webhooks), toYAML(t, wantMutating.Webhooks))
			}
			if !equality.Semantic.DeepEqual(wantValidating.Webhooks, validating.Webhooks) {
				t.Errorf("ValidatingWebhookConfiguration differs from webhook.Configurations:\nchart:\n%s\ncode:\n%s", toYAML(t, validating.Webhooks), toYAML(t, wantValidating.Webhooks))
			}

			// The pod route does what the configuration says only when the
			// webhook runs with the same options.
			var deployment appsv1.Deployment
			convert(t, find(t, objects, "Deployment", name), &deployment)
			args := deployment.Spec.Template.Spec.Containers[0].Args
			for flag, want := range map[string]string{
				"--scheduler-name":             tc.pods.SchedulerName,
				"--volume-resource":            string(tc.pods.VolumeResource),
				"--volume-resource-schedulers": strings.Join(tc.pods.ResourceSchedulers, ","),
			} {
				i := slices.IndexFunc(args, func(arg string) bool { return strings.HasPrefix(arg, flag+"=") })
				switch {
				case want == "" && i >= 0:
					t.Errorf("webhook args %v set %s", args, flag)
				case want != "" && (i < 0 || args[i] != flag+"="+want):
					t.Errorf("webhook args %v lack %s=%s", args, flag, want)
				}
			}
		})
	}
}

// TestGeneratedCertificateServesTheWebhookService: one CA per render, in the
// Secret and in every webhook's caBundle, signing a serving certificate for
// the Service's DNS names.
func TestGeneratedCertificateServesTheWebhookService(t *testing.T) {
	objects := render(t, ctxFor(t, time.Minute), valueSets()[0])
	var secret corev1.Secret
	convert(t, find(t, objects, "Secret", releaseName+"-toposnap-webhook-tls"), &secret)
	for _, kind := range []string{"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"} {
		hooks, _, _ := unstructured.NestedSlice(find(t, objects, kind, releaseName+"-toposnap-webhook").Object, "webhooks")
		for _, hook := range hooks {
			bundle, _, _ := unstructured.NestedString(hook.(map[string]any), "clientConfig", "caBundle")
			if bundle != b64(secret.Data["ca.crt"]) {
				t.Errorf("%s webhook %v: caBundle is not the Secret's ca.crt", kind, hook.(map[string]any)["name"])
			}
		}
	}
	verifyServing(t, secret.Data["ca.crt"], secret.Data["tls.crt"], releaseName+"-toposnap-webhook."+dryRunNamespace+".svc")
}

// verifyServing checks that cert is signed by ca for dnsName.
func verifyServing(t *testing.T, caPEM, certPEM []byte, dnsName string) {
	t.Helper()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt holds no certificate")
	}
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("tls.crt holds no PEM block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("parse tls.crt: %v", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: dnsName, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatalf("serving certificate does not verify for %s: %v", dnsName, err)
	}
}

// TestCertManagerObjectsAreConsistent checks client-side what the API
// server cannot here (no cert-manager CRDs): for the webhook and the
// extender, the one self-signed Issuer signs a CA Certificate of the
// component's own, whose Issuer signs the serving Certificate in the Secret
// the component mounts, for its Service's names. The webhook
// configurations ask cert-manager to inject the webhook's CA and carry no
// bundle of their own; toposnap-scheduler reads the extender's CA from the
// serving Secret (ca.crt only) through tlsConfig.caFile.
func TestCertManagerObjectsAreConsistent(t *testing.T) {
	objects := render(t, ctxFor(t, time.Minute), valueSets()[6])
	prefix := releaseName + "-toposnap-"
	selfSigned := find(t, objects, "Issuer", prefix+"selfsigned")
	if _, ok, _ := unstructured.NestedMap(selfSigned.Object, "spec", "selfSigned"); !ok {
		t.Error("the root Issuer is not self-signed")
	}
	servingSecrets := map[string]string{}
	for _, component := range []string{"webhook", "extender"} {
		ca := find(t, objects, "Certificate", prefix+component+"-ca")
		if isCA, _, _ := unstructured.NestedBool(ca.Object, "spec", "isCA"); !isCA {
			t.Errorf("%s: the CA Certificate is not isCA", component)
		}
		if issuer, _, _ := unstructured.NestedString(ca.Object, "spec", "issuerRef", "name"); issuer != selfSigned.GetName() {
			t.Errorf("%s: the CA Certificate is issued by %q, want the self-signed Issuer", component, issuer)
		}
		caSecret, _, _ := unstructured.NestedString(ca.Object, "spec", "secretName")
		caIssuer := find(t, objects, "Issuer", prefix+component+"-ca")
		if secret, _, _ := unstructured.NestedString(caIssuer.Object, "spec", "ca", "secretName"); secret != caSecret {
			t.Errorf("%s: the CA Issuer signs with Secret %q, want the CA Certificate's %q", component, secret, caSecret)
		}
		serving := find(t, objects, "Certificate", prefix+component+"-tls")
		if issuer, _, _ := unstructured.NestedString(serving.Object, "spec", "issuerRef", "name"); issuer != caIssuer.GetName() {
			t.Errorf("%s: the serving Certificate is issued by %q, want its own CA Issuer", component, issuer)
		}
		dnsNames, _, _ := unstructured.NestedStringSlice(serving.Object, "spec", "dnsNames")
		if service := prefix + component + "." + dryRunNamespace + ".svc"; !slices.Contains(dnsNames, service) {
			t.Errorf("%s: serving Certificate dnsNames %v lack %s", component, dnsNames, service)
		}
		servingSecret, _, _ := unstructured.NestedString(serving.Object, "spec", "secretName")
		servingSecrets[component] = servingSecret
		var deployment appsv1.Deployment
		convert(t, find(t, objects, "Deployment", prefix+component), &deployment)
		if mounted := secretVolume(deployment.Spec.Template.Spec, "tls"); mounted != servingSecret {
			t.Errorf("%s mounts Secret %q as tls, cert-manager writes %q", component, mounted, servingSecret)
		}
	}
	for _, kind := range []string{"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"} {
		config := find(t, objects, kind, prefix+"webhook")
		if got, want := config.GetAnnotations()["cert-manager.io/inject-ca-from"], dryRunNamespace+"/"+prefix+"webhook-tls"; got != want {
			t.Errorf("%s inject-ca-from = %q, want %q", kind, got, want)
		}
		if strings.Contains(toYAML(t, config.Object), "caBundle") {
			t.Errorf("%s carries a caBundle; cert-manager's cainjector owns it", kind)
		}
	}

	config := schedulerConfig(t, objects)
	tlsConfig := config.Extenders[0].TLSConfig
	if tlsConfig == nil || tlsConfig.CAFile == "" || len(tlsConfig.CAData) != 0 {
		t.Fatalf("scheduler tlsConfig %+v, want caFile only (the CA is cert-manager's)", tlsConfig)
	}
	var scheduler appsv1.Deployment
	convert(t, find(t, objects, "Deployment", prefix+"scheduler"), &scheduler)
	pod := scheduler.Spec.Template.Spec
	var mountPath string
	for _, m := range pod.Containers[0].VolumeMounts {
		if m.Name == "extender-ca" {
			mountPath = m.MountPath
		}
	}
	if got := secretVolume(pod, "extender-ca"); got != servingSecrets["extender"] {
		t.Errorf("scheduler mounts Secret %q as extender-ca, want the extender's serving Secret %q", got, servingSecrets["extender"])
	}
	if want := mountPath + "/ca.crt"; mountPath == "" || tlsConfig.CAFile != want {
		t.Errorf("scheduler reads the CA from %q, mounts extender-ca at %q", tlsConfig.CAFile, mountPath)
	}
	for _, v := range pod.Volumes {
		if v.Name == "extender-ca" && (len(v.Secret.Items) != 1 || v.Secret.Items[0].Key != "ca.crt") {
			t.Errorf("scheduler's extender-ca volume projects %+v, want ca.crt only (never the key)", v.Secret.Items)
		}
	}
}

// secretVolume is the Secret behind a pod's volume, "" without one.
func secretVolume(pod corev1.PodSpec, name string) string {
	for _, v := range pod.Volumes {
		if v.Name == name && v.Secret != nil {
			return v.Secret.SecretName
		}
	}
	return ""
}

// schedulerConfig decodes toposnap-scheduler's configuration strictly (an
// unknown field fails).
func schedulerConfig(t *testing.T, objects []*unstructured.Unstructured) schedulerv1.KubeSchedulerConfiguration {
	t.Helper()
	var configMap corev1.ConfigMap
	convert(t, find(t, objects, "ConfigMap", releaseName+"-toposnap-scheduler"), &configMap)
	var config schedulerv1.KubeSchedulerConfiguration
	if err := yaml.UnmarshalStrict([]byte(configMap.Data["config.yaml"]), &config); err != nil {
		t.Fatalf("scheduler config: %v\n%s", err, configMap.Data["config.yaml"])
	}
	if len(config.Extenders) != 1 {
		t.Fatalf("scheduler config has %d extenders, want 1", len(config.Extenders))
	}
	return config
}

// TestSchedulerConfiguration decodes toposnap-scheduler's configuration
// strictly (an unknown field fails) and checks the extender entry, the
// leader-election lease and that the scheduler's Role may hold that lease.
func TestSchedulerConfiguration(t *testing.T) {
	objects := render(t, ctxFor(t, time.Minute), valueSets()[2])
	name := releaseName + "-toposnap-scheduler"
	config := schedulerConfig(t, objects)
	if config.APIVersion != "kubescheduler.config.k8s.io/v1" || config.Kind != "KubeSchedulerConfiguration" {
		t.Errorf("scheduler config is %s %s", config.APIVersion, config.Kind)
	}
	if len(config.Profiles) != 1 || ptr.Deref(config.Profiles[0].SchedulerName, "") != "toposnap-scheduler" {
		t.Errorf("profiles %+v, want one named toposnap-scheduler", config.Profiles)
	}
	var extenderTLS corev1.Secret
	convert(t, find(t, objects, "Secret", releaseName+"-toposnap-extender-tls"), &extenderTLS)
	want := schedulerv1.Extender{
		URLPrefix:  "https://" + releaseName + "-toposnap-extender." + dryRunNamespace + ".svc:8099",
		FilterVerb: "filter", PrioritizeVerb: "prioritize", Weight: 5, NodeCacheCapable: true, Ignorable: false,
		HTTPTimeout: metav1.Duration{Duration: 5 * time.Second},
		// Only pods the webhook marked reach the extender.
		ManagedResources: []schedulerv1.ExtenderManagedResource{{Name: string(webhook.VolumeResource), IgnoredByScheduler: true}},
		// The extender's own CA, inline; no enableHTTPS (which would skip
		// verification without a CA).
		// and the client pair it presents (TestExtenderRequiresTheSchedulersClientCertificate).
		TLSConfig: &schedulerv1.ExtenderTLSConfig{CAData: extenderTLS.Data["ca.crt"],
			CertFile: "/etc/kubernetes/toposnap-extender-client/tls.crt", KeyFile: "/etc/kubernetes/toposnap-extender-client/tls.key"},
	}
	if len(config.Extenders) != 1 || !equality.Semantic.DeepEqual(config.Extenders[0], want) {
		t.Errorf("extenders %+v, want [%+v]", config.Extenders, want)
	}
	election := config.LeaderElection
	if !ptr.Deref(election.LeaderElect, false) || election.ResourceName != "toposnap-scheduler" || election.ResourceNamespace != dryRunNamespace {
		t.Errorf("leader election %+v, want lease %s/toposnap-scheduler", election, dryRunNamespace)
	}
	var role rbacv1.Role
	convert(t, find(t, objects, "Role", name+"-leader-election"), &role)
	if !allows(role.Rules, "coordination.k8s.io", "leases", election.ResourceName, "get", "update") ||
		!allows(role.Rules, "coordination.k8s.io", "leases", "", "create") {
		t.Errorf("Role %s does not let the scheduler hold lease %s: %+v", role.Name, election.ResourceName, role.Rules)
	}
	var deployment appsv1.Deployment
	convert(t, find(t, objects, "Deployment", name), &deployment)
	if sa := deployment.Spec.Template.Spec.ServiceAccountName; sa != name {
		t.Errorf("scheduler runs as %q, want %q", sa, name)
	}
}

// allows reports whether rules grant every verb on resource (name "" for
// any name).
func allows(rules []rbacv1.PolicyRule, group, resource, name string, verbs ...string) bool {
	for _, verb := range verbs {
		ok := slices.ContainsFunc(rules, func(r rbacv1.PolicyRule) bool {
			return slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) &&
				(len(r.ResourceNames) == 0 || slices.Contains(r.ResourceNames, name))
		})
		if !ok {
			return false
		}
	}
	return true
}

// TestEveryDeploymentHasADisruptionBudget: each Deployment has a PDB that
// selects its pods, and replicas follow the values.
func TestEveryDeploymentHasADisruptionBudget(t *testing.T) {
	objects := render(t, ctxFor(t, time.Minute), valueSets()[5])
	var budgets []policyv1.PodDisruptionBudget
	for _, o := range objects {
		if o.GetKind() == "PodDisruptionBudget" {
			var pdb policyv1.PodDisruptionBudget
			convert(t, o, &pdb)
			budgets = append(budgets, pdb)
		}
	}
	for _, o := range objects {
		if o.GetKind() != "Deployment" {
			continue
		}
		var deployment appsv1.Deployment
		convert(t, o, &deployment)
		if got := ptr.Deref(deployment.Spec.Replicas, 1); got != 2 {
			t.Errorf("Deployment %s has %d replicas, want 2", deployment.Name, got)
		}
		podLabels := labels.Set(deployment.Spec.Template.Labels)
		covered := slices.ContainsFunc(budgets, func(pdb policyv1.PodDisruptionBudget) bool {
			selector, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
			return err == nil && pdb.Namespace == deployment.Namespace && selector.Matches(podLabels) && pdb.Spec.MaxUnavailable != nil
		})
		if !covered {
			t.Errorf("no PodDisruptionBudget with maxUnavailable selects Deployment %s's pods", deployment.Name)
		}
	}
}

func toYAML(t *testing.T, v any) string {
	t.Helper()
	data, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func b64(data []byte) string { return base64.StdEncoding.EncodeToString(data) }
