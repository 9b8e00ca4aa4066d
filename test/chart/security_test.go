package chart

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// valueSetNamed returns the value set of that name.
func valueSetNamed(t *testing.T, name string) valueSet {
	t.Helper()
	for _, set := range valueSets() {
		if set.name == name {
			return set
		}
	}
	t.Fatalf("no value set %q", name)
	return valueSet{}
}

// extenderContainer is the extender Deployment's pod spec and container.
func extenderContainer(t *testing.T, objects []*unstructured.Unstructured) (corev1.PodSpec, corev1.Container) {
	t.Helper()
	var deployment appsv1.Deployment
	convert(t, find(t, objects, "Deployment", releaseName+"-toposnap-extender"), &deployment)
	return deployment.Spec.Template.Spec, deployment.Spec.Template.Spec.Containers[0]
}

// TestExtenderServesHTTPSWithItsOwnCA: by default the extender serves
// HTTPS with a chart-made pair for its Service's name, signed by a CA of
// its own (not the webhook's), mounted where its flags point; the Service
// names the port https; and toposnap-scheduler trusts exactly that CA.
func TestExtenderServesHTTPSWithItsOwnCA(t *testing.T) {
	objects := render(t, ctxFor(t, time.Minute), valueSetNamed(t, "second scheduler"))
	var secret, webhookSecret corev1.Secret
	convert(t, find(t, objects, "Secret", releaseName+"-toposnap-extender-tls"), &secret)
	convert(t, find(t, objects, "Secret", releaseName+"-toposnap-webhook-tls"), &webhookSecret)
	verifyServing(t, secret.Data["ca.crt"], secret.Data["tls.crt"], releaseName+"-toposnap-extender."+dryRunNamespace+".svc")
	if bytes.Equal(secret.Data["ca.crt"], webhookSecret.Data["ca.crt"]) {
		t.Error("the extender and the webhook share a CA; each should have its own")
	}

	pod, container := extenderContainer(t, objects)
	for _, flag := range []string{"--tls-cert-file=/tls/tls.crt", "--tls-key-file=/tls/tls.key"} {
		if !slices.Contains(container.Args, flag) {
			t.Errorf("extender args %v lack %s", container.Args, flag)
		}
	}
	if got := secretVolume(pod, "tls"); got != secret.Name {
		t.Errorf("extender mounts Secret %q as tls, want %q", got, secret.Name)
	}
	if !slices.ContainsFunc(container.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == "tls" && m.MountPath == "/tls" && m.ReadOnly }) {
		t.Errorf("extender does not mount tls read-only at /tls: %+v", container.VolumeMounts)
	}
	var service corev1.Service
	convert(t, find(t, objects, "Service", releaseName+"-toposnap-extender"), &service)
	if port := service.Spec.Ports[0]; port.Name != "https" || port.TargetPort != intstr.FromString("https") {
		t.Errorf("extender Service port %+v, want https", port)
	}

	config := schedulerConfig(t, objects)
	extender := config.Extenders[0]
	if !strings.HasPrefix(extender.URLPrefix, "https://") || extender.TLSConfig == nil || !bytes.Equal(extender.TLSConfig.CAData, secret.Data["ca.crt"]) {
		t.Errorf("scheduler's extender entry %s with tlsConfig %+v does not trust the extender's CA over https", extender.URLPrefix, extender.TLSConfig)
	}
	if extender.EnableHTTPS || (extender.TLSConfig != nil && extender.TLSConfig.Insecure) {
		t.Error("scheduler's extender entry turns certificate verification off")
	}
}

// TestExtenderAndWebhookProbes: both servers are probed alike, over
// their scheme: liveness on /healthz (the process serves), readiness on
// /readyz (503 until it can decide: caches filled, snapshot API known).
func TestExtenderAndWebhookProbes(t *testing.T) {
	objects := render(t, ctxFor(t, time.Minute), valueSetNamed(t, "defaults"))
	for _, component := range []string{"extender", "webhook"} {
		var deployment appsv1.Deployment
		convert(t, find(t, objects, "Deployment", releaseName+"-toposnap-"+component), &deployment)
		container := deployment.Spec.Template.Spec.Containers[0]
		checkProbe(t, component+" readiness", container.ReadinessProbe, "/readyz", corev1.URISchemeHTTPS, "https")
		checkProbe(t, component+" liveness", container.LivenessProbe, "/healthz", corev1.URISchemeHTTPS, "https")
	}
}

// checkProbe checks an HTTP probe's path, scheme and port.
func checkProbe(t *testing.T, what string, probe *corev1.Probe, path string, scheme corev1.URIScheme, port string) {
	t.Helper()
	if probe == nil || probe.HTTPGet == nil {
		t.Errorf("no %s HTTP probe", what)
		return
	}
	get := probe.HTTPGet
	if get.Path != path || get.Scheme != scheme || get.Port != intstr.FromString(port) {
		t.Errorf("%s probe %s %s port %s, want %s %s port %s", what, get.Scheme, get.Path, get.Port.String(), scheme, path, port)
	}
}

// TestExtenderPlainHTTPWhenTLSIsOff: extender.tls.enabled=false is an
// explicit, complete switch: no certificate, no TLS flags or mount, HTTP
// probes, and an http:// scheduler entry without tlsConfig.
func TestExtenderPlainHTTPWhenTLSIsOff(t *testing.T) {
	set := valueSetNamed(t, "plain HTTP extender and no node admission policies")
	set.args = append(set.args, "--set", "scheduler.enabled=true")
	objects := render(t, ctxFor(t, time.Minute), set)
	for _, o := range objects {
		if o.GetKind() == "Secret" && strings.Contains(o.GetName(), "extender") {
			t.Errorf("Secret %s rendered with TLS off", o.GetName())
		}
	}
	pod, container := extenderContainer(t, objects)
	if slices.ContainsFunc(container.Args, func(arg string) bool { return strings.HasPrefix(arg, "--tls-") }) {
		t.Errorf("extender args %v carry TLS flags with TLS off", container.Args)
	}
	if len(pod.Volumes) != 0 || len(container.VolumeMounts) != 0 {
		t.Errorf("extender has volumes %+v with TLS off", pod.Volumes)
	}
	checkProbe(t, "readiness", container.ReadinessProbe, "/readyz", corev1.URISchemeHTTP, "http")
	checkProbe(t, "liveness", container.LivenessProbe, "/healthz", corev1.URISchemeHTTP, "http")
	extender := schedulerConfig(t, objects).Extenders[0]
	if !strings.HasPrefix(extender.URLPrefix, "http://") || extender.TLSConfig != nil {
		t.Errorf("scheduler's extender entry %s with tlsConfig %+v, want plain http", extender.URLPrefix, extender.TLSConfig)
	}
}

// TestNotesPrintTheSchedulerSnippet: the install notes give an existing
// scheduler the extender's URL and, with TLS, a tlsConfig with serverName
// (for a ClusterIP in urlPrefix) and the CA of the extender's Secret in the
// same release. (helm install --dry-run still asks the cluster for its
// version and the kinds it renders, so this needs one, and cannot render
// the cert-manager variant without cert-manager's CRDs;
// TestInstallUpgradeKeepsTheWebhookCA checks a real install's notes too.)
func TestNotesPrintTheSchedulerSnippet(t *testing.T) {
	needCluster(t)
	host := releaseName + "-toposnap-extender." + dryRunNamespace + ".svc"
	for _, tc := range []struct {
		name string
		args []string
		want func(objects []*unstructured.Unstructured) []string
		not  []string
	}{
		{"chart-made CA", nil, func(objects []*unstructured.Unstructured) []string {
			var secret corev1.Secret
			convert(t, find(t, objects, "Secret", releaseName+"-toposnap-extender-tls"), &secret)
			return []string{
				"extenders:\n      - urlPrefix: https://" + host + ":8099\n",
				"        tlsConfig:\n          serverName: " + host + "\n          caData: " + b64(secret.Data["ca.crt"]) + "\n",
			}
		}, nil},
		{"plain HTTP", []string{"--set", "extender.tls.enabled=false"}, func([]*unstructured.Unstructured) []string {
			return []string{"extenders:\n      - urlPrefix: http://" + host + ":8099\n"}
		}, []string{"tlsConfig"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"install", releaseName, chartDir, "--dry-run=client", "--namespace", dryRunNamespace}, tc.args...)
			out, err := runHelm(ctxFor(t, time.Minute), args...)
			if err != nil {
				t.Fatal(err)
			}
			manifest, notes, ok := strings.Cut(string(out), "\nNOTES:\n")
			if !ok {
				t.Fatalf("helm install --dry-run printed no notes:\n%s", out)
			}
			_, manifest, _ = strings.Cut(manifest, "\nMANIFEST:\n")
			objects, err := parseObjects([]byte(manifest))
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range tc.want(objects) {
				if !strings.Contains(notes, want) {
					t.Errorf("notes lack %q:\n%s", want, notes)
				}
			}
			for _, unwanted := range tc.not {
				if strings.Contains(notes, unwanted) {
					t.Errorf("notes mention %q:\n%s", unwanted, notes)
				}
			}
		})
	}
}

// TestExtenderNetworkPolicyLetsOnlySchedulersIn: the policy selects the
// extender's pods, isolates ingress only (the extender must still reach
// the API server), and lets in, on the extender's port only, the chart's
// scheduler pods by their labels, the configured scheduler peers and, in a
// rule of their own, the metrics peers.
func TestExtenderNetworkPolicyLetsOnlySchedulersIn(t *testing.T) {
	objects := render(t, ctxFor(t, time.Minute), valueSetNamed(t, "extender NetworkPolicy with the second scheduler and peers"))
	var policy networkingv1.NetworkPolicy
	convert(t, find(t, objects, "NetworkPolicy", releaseName+"-toposnap-extender"), &policy)
	podLabels := func(name string) labels.Set {
		var deployment appsv1.Deployment
		convert(t, find(t, objects, "Deployment", releaseName+"-toposnap-"+name), &deployment)
		return deployment.Spec.Template.Labels
	}
	selects := func(selector *metav1.LabelSelector, set labels.Set) bool {
		s, err := metav1.LabelSelectorAsSelector(selector)
		return err == nil && !s.Empty() && s.Matches(set)
	}
	if !selects(&policy.Spec.PodSelector, podLabels("extender")) || selects(&policy.Spec.PodSelector, podLabels("webhook")) {
		t.Errorf("policy selector %v does not select exactly the extender's pods", policy.Spec.PodSelector)
	}
	if !slices.Equal(policy.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) {
		t.Errorf("policyTypes %v, want [Ingress] (egress to the API server stays open)", policy.Spec.PolicyTypes)
	}
	if len(policy.Spec.Ingress) != 2 {
		t.Fatalf("%d ingress rules, want 2 (schedulers, metrics)", len(policy.Spec.Ingress))
	}
	for i, rule := range policy.Spec.Ingress {
		if len(rule.Ports) != 1 || ptr.Deref(rule.Ports[0].Port, intstr.IntOrString{}) != intstr.FromInt32(8099) {
			t.Errorf("rule %d opens ports %+v, want 8099 only", i, rule.Ports)
		}
	}
	schedulers := policy.Spec.Ingress[0].From
	if len(schedulers) != 3 {
		t.Fatalf("scheduler rule has %d peers, want the chart's scheduler and 2 configured: %+v", len(schedulers), schedulers)
	}
	if chart := schedulers[0]; chart.NamespaceSelector != nil || chart.IPBlock != nil || !selects(chart.PodSelector, podLabels("scheduler")) {
		t.Errorf("first peer %+v does not select toposnap-scheduler's pods in the release namespace", chart)
	}
	if peer := schedulers[1]; peer.IPBlock == nil || peer.IPBlock.CIDR != "10.0.0.10/32" {
		t.Errorf("second peer %+v, want the host-network scheduler's ipBlock", peer)
	}
	if peer := schedulers[2]; peer.NamespaceSelector == nil || peer.PodSelector == nil || peer.PodSelector.MatchLabels["component"] != "kube-scheduler" {
		t.Errorf("third peer %+v, want kube-system's kube-scheduler pods", peer)
	}
	if metrics := policy.Spec.Ingress[1].From; len(metrics) != 1 || metrics[0].NamespaceSelector == nil ||
		metrics[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] != "monitoring" {
		t.Errorf("metrics rule peers %+v, want the monitoring namespace", metrics)
	}
}

// TestNetworkPolicyWithoutAnySchedulerIsRefused: enabling the policy with
// neither the second scheduler nor scheduler peers would cut every
// scheduler off (and, the extender not being ignorable, stop scheduling):
// the chart refuses to render it.
func TestNetworkPolicyWithoutAnySchedulerIsRefused(t *testing.T) {
	_, err := runHelm(ctxFor(t, time.Minute), "template", releaseName, chartDir, "--set", "extender.networkPolicy.enabled=true")
	if err == nil || !strings.Contains(err.Error(), "no scheduler could reach the extender") {
		t.Fatalf("helm template with a NetworkPolicy and no scheduler: %v, want the chart to refuse", err)
	}
}

// TestNodeAdmissionPoliciesBindToTheNodeServiceAccount: every policy
// fails closed, applies only to the node DaemonSet's ServiceAccount, and
// has a binding with the configured actions; turning them off (or to
// Warn/Audit) is a value.
func TestNodeAdmissionPoliciesBindToTheNodeServiceAccount(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		actions []admissionv1.ValidationAction
	}{
		{"defaults", nil, []admissionv1.ValidationAction{admissionv1.Deny}},
		{"warn and audit", []string{"--set", "node.admissionPolicy.validationActions={Warn,Audit}"}, []admissionv1.ValidationAction{admissionv1.Warn, admissionv1.Audit}},
		{"disabled", []string{"--set", "node.admissionPolicy.enabled=false"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objects := render(t, ctxFor(t, time.Minute), valueSet{args: tc.args})
			var daemonSet appsv1.DaemonSet
			convert(t, find(t, objects, "DaemonSet", releaseName+"-toposnap-node"), &daemonSet)
			user := "system:serviceaccount:" + dryRunNamespace + ":" + daemonSet.Spec.Template.Spec.ServiceAccountName
			policies := map[string]admissionv1.ValidatingAdmissionPolicy{}
			var bindings []admissionv1.ValidatingAdmissionPolicyBinding
			for _, o := range objects {
				switch o.GetKind() {
				case "ValidatingAdmissionPolicy":
					var policy admissionv1.ValidatingAdmissionPolicy
					convert(t, o, &policy)
					policies[policy.Name] = policy
				case "ValidatingAdmissionPolicyBinding":
					var binding admissionv1.ValidatingAdmissionPolicyBinding
					convert(t, o, &binding)
					bindings = append(bindings, binding)
				}
			}
			if tc.actions == nil {
				if len(policies)+len(bindings) != 0 {
					t.Fatalf("rendered %d policies and %d bindings with the policies off", len(policies), len(bindings))
				}
				return
			}
			if len(policies) != 6 || len(bindings) != len(policies) {
				t.Fatalf("rendered %d policies and %d bindings, want 6 of each", len(policies), len(bindings))
			}
			bound := map[string]bool{}
			for _, binding := range bindings {
				if _, ok := policies[binding.Spec.PolicyName]; !ok {
					t.Errorf("binding %s names no rendered policy (%s)", binding.Name, binding.Spec.PolicyName)
				}
				bound[binding.Spec.PolicyName] = true
				if !slices.Equal(binding.Spec.ValidationActions, tc.actions) {
					t.Errorf("binding %s actions %v, want %v", binding.Name, binding.Spec.ValidationActions, tc.actions)
				}
				if binding.Spec.ParamRef != nil || binding.Spec.MatchResources != nil {
					t.Errorf("binding %s narrows its policy further (%+v)", binding.Name, binding.Spec)
				}
			}
			for name, policy := range policies {
				if !bound[name] {
					t.Errorf("policy %s has no binding", name)
				}
				if ptr.Deref(policy.Spec.FailurePolicy, "") != admissionv1.Fail {
					t.Errorf("policy %s failurePolicy %v, want Fail", name, policy.Spec.FailurePolicy)
				}
				want := []admissionv1.MatchCondition{{Name: "node-serviceaccount", Expression: "request.userInfo.username == '" + user + "'"}}
				if !slices.Equal(policy.Spec.MatchConditions, want) {
					t.Errorf("policy %s matchConditions %+v, want only %s's requests", name, policy.Spec.MatchConditions, user)
				}
				if len(policy.Spec.Validations) == 0 {
					t.Errorf("policy %s validates nothing", name)
				}
			}
		})
	}
}
