package chart

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
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

// TestExtenderAndWebhookProbes: both servers are probed alike, on their
// plain-HTTP probe port (the kubelet presents no client certificate, which
// the main port may require): liveness on /healthz (the process serves),
// readiness on /readyz (503 until it can decide: caches filled, snapshot
// API known).
func TestExtenderAndWebhookProbes(t *testing.T) {
	objects := render(t, ctxFor(t, time.Minute), valueSetNamed(t, "defaults"))
	for _, component := range []string{"extender", "webhook"} {
		var deployment appsv1.Deployment
		convert(t, find(t, objects, "Deployment", releaseName+"-toposnap-"+component), &deployment)
		container := deployment.Spec.Template.Spec.Containers[0]
		checkProbe(t, component+" readiness", container.ReadinessProbe, "/readyz", corev1.URISchemeHTTP, "health")
		checkProbe(t, component+" liveness", container.LivenessProbe, "/healthz", corev1.URISchemeHTTP, "health")
		port := map[string]string{"extender": "8098", "webhook": "9444"}[component]
		if !slices.Contains(container.Args, "--health-listen=:"+port) ||
			!slices.ContainsFunc(container.Ports, func(p corev1.ContainerPort) bool {
				return p.Name == "health" && p.ContainerPort == intstr.Parse(port).IntVal
			}) {
			t.Errorf("%s does not serve its probe port %s: args %v, ports %+v", component, port, container.Args, container.Ports)
		}
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
	checkProbe(t, "readiness", container.ReadinessProbe, "/readyz", corev1.URISchemeHTTP, "health")
	checkProbe(t, "liveness", container.LivenessProbe, "/healthz", corev1.URISchemeHTTP, "health")
	if slices.ContainsFunc(container.Args, func(arg string) bool { return strings.HasPrefix(arg, "--client-ca-file") }) {
		t.Errorf("extender args %v require client certificates with TLS off", container.Args)
	}
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
// scheduler pods by their labels and the configured scheduler peers, and in
// a rule of their own, on the probe port only, the metrics peers.
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
	for i, port := range []int32{8099, 8098} {
		if rule := policy.Spec.Ingress[i]; len(rule.Ports) != 1 || ptr.Deref(rule.Ports[0].Port, intstr.IntOrString{}) != intstr.FromInt32(port) {
			t.Errorf("rule %d opens ports %+v, want %d only", i, rule.Ports, port)
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

// TestNetworkPoliciesAreOnWhereTheirCallersAreKnown: the policies are on
// by default, and rendered wherever the chart knows who calls: the
// extender's when toposnap-scheduler is its only scheduler or scheduler
// peers are listed, the webhook's when the API server's source is given.
// Where it does not know (your kube-scheduler, your API server), no policy
// is rendered rather than one that would shut the caller out (the
// extender is not ignorable; the webhook fails closed).
func TestNetworkPoliciesAreOnWhereTheirCallersAreKnown(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"defaults: neither caller known", nil, nil},
		{"toposnap-scheduler alone", []string{"--set", "scheduler.enabled=true"}, []string{"extender"}},
		{"toposnap-scheduler beside the default scheduler", []string{"--set", "scheduler.enabled=true", "--set", "extender.managedResource.defaultScheduler=true"}, nil},
		{"scheduler peers", []string{"--set", "extender.networkPolicy.schedulerPeers[0].ipBlock.cidr=10.0.0.10/32"}, []string{"extender"}},
		{"API server peers", []string{"--set", "webhook.networkPolicy.apiServerPeers[0].ipBlock.cidr=10.0.0.0/24"}, []string{"webhook"}},
		{"turned off", []string{"--set", "scheduler.enabled=true", "--set", "extender.networkPolicy.enabled=false",
			"--set", "webhook.networkPolicy.enabled=false", "--set", "webhook.networkPolicy.apiServerPeers[0].ipBlock.cidr=10.0.0.0/24"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objects := render(t, ctxFor(t, time.Minute), valueSet{name: tc.name, args: tc.args})
			var got []string
			for _, o := range objects {
				if o.GetKind() == "NetworkPolicy" {
					got = append(got, strings.TrimPrefix(o.GetName(), releaseName+"-toposnap-"))
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("NetworkPolicies %v, want %v", got, tc.want)
			}
		})
	}
}

// TestWebhookNetworkPolicyLetsOnlyTheAPIServerIn: the webhook's policy
// selects its pods, isolates ingress only, lets the API server's peers in
// on the webhook's port and the metrics peers on the probe port only.
func TestWebhookNetworkPolicyLetsOnlyTheAPIServerIn(t *testing.T) {
	objects := render(t, ctxFor(t, time.Minute), valueSetNamed(t, "webhook NetworkPolicy and client CA"))
	var policy networkingv1.NetworkPolicy
	convert(t, find(t, objects, "NetworkPolicy", releaseName+"-toposnap-webhook"), &policy)
	var deployment appsv1.Deployment
	convert(t, find(t, objects, "Deployment", releaseName+"-toposnap-webhook"), &deployment)
	if selector, err := metav1.LabelSelectorAsSelector(&policy.Spec.PodSelector); err != nil || selector.Empty() ||
		!selector.Matches(labels.Set(deployment.Spec.Template.Labels)) {
		t.Errorf("policy selector %v does not select the webhook's pods", policy.Spec.PodSelector)
	}
	if !slices.Equal(policy.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) {
		t.Errorf("policyTypes %v, want [Ingress]", policy.Spec.PolicyTypes)
	}
	if len(policy.Spec.Ingress) != 2 {
		t.Fatalf("%d ingress rules, want 2 (API server, metrics)", len(policy.Spec.Ingress))
	}
	for i, want := range []struct {
		port int32
		cidr string
	}{{9443, "10.0.0.0/24"}, {9444, ""}} {
		rule := policy.Spec.Ingress[i]
		if len(rule.Ports) != 1 || ptr.Deref(rule.Ports[0].Port, intstr.IntOrString{}) != intstr.FromInt32(want.port) {
			t.Errorf("rule %d opens ports %+v, want %d only", i, rule.Ports, want.port)
		}
		if want.cidr != "" && (len(rule.From) != 2 || rule.From[0].IPBlock == nil || rule.From[0].IPBlock.CIDR != want.cidr) {
			t.Errorf("rule %d peers %+v, want the control plane's %s first", i, rule.From, want.cidr)
		}
	}
}

// TestWebhookRequiresTheAPIServersCertificateWhenGivenItsCA: with
// webhook.clientAuth.caBundle the webhook reads that CA from a ConfigMap
// (--client-ca-file); without it, it takes no such flag.
func TestWebhookRequiresTheAPIServersCertificateWhenGivenItsCA(t *testing.T) {
	objects := render(t, ctxFor(t, time.Minute), valueSetNamed(t, "webhook NetworkPolicy and client CA"))
	var deployment appsv1.Deployment
	convert(t, find(t, objects, "Deployment", releaseName+"-toposnap-webhook"), &deployment)
	container := deployment.Spec.Template.Spec.Containers[0]
	var configMap corev1.ConfigMap
	convert(t, find(t, objects, "ConfigMap", releaseName+"-toposnap-webhook-client-ca"), &configMap)
	if block, _ := pem.Decode([]byte(configMap.Data["ca.crt"])); block == nil || block.Type != "CERTIFICATE" {
		t.Errorf("ConfigMap's ca.crt is not the PEM given: %q", configMap.Data["ca.crt"])
	}
	if !slices.Contains(container.Args, "--client-ca-file=/client-ca/ca.crt") ||
		!slices.ContainsFunc(container.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == "client-ca" && m.MountPath == "/client-ca" }) ||
		!slices.ContainsFunc(deployment.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool {
			return v.Name == "client-ca" && v.ConfigMap != nil && v.ConfigMap.Name == configMap.Name
		}) {
		t.Errorf("webhook does not read the client CA: args %v, mounts %+v", container.Args, container.VolumeMounts)
	}
	objects = render(t, ctxFor(t, time.Minute), valueSetNamed(t, "defaults"))
	convert(t, find(t, objects, "Deployment", releaseName+"-toposnap-webhook"), &deployment)
	if args := deployment.Spec.Template.Spec.Containers[0].Args; slices.ContainsFunc(args, func(arg string) bool { return strings.HasPrefix(arg, "--client-ca-file") }) {
		t.Errorf("webhook args %v require client certificates by default", args)
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
			if len(policies) != 7 || len(bindings) != len(policies) {
				t.Fatalf("rendered %d policies and %d bindings, want 7 of each (six for the node, one for toposnap-controller's Leases)", len(policies), len(bindings))
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
				if strings.HasSuffix(name, "-controller-leases") {
					controllerUser := "system:serviceaccount:" + dryRunNamespace + ":" + releaseName + "-toposnap-controller"
					want = []admissionv1.MatchCondition{{Name: "controller-serviceaccount", Expression: "request.userInfo.username == '" + controllerUser + "'"}}
				}
				if !slices.Equal(policy.Spec.MatchConditions, want) {
					t.Errorf("policy %s matchConditions %+v, want only %s's requests", name, policy.Spec.MatchConditions, want[0].Expression)
				}
				if len(policy.Spec.Validations) == 0 {
					t.Errorf("policy %s validates nothing", name)
				}
			}
		})
	}
}

// TestExtenderRequiresTheSchedulersClientCertificate: the chart issues the
// schedulers' client pair (under a CA of its own, usable for client auth
// only by what that CA signs); with toposnap-scheduler as the only
// scheduler the extender requires it (--client-ca-file, the Secret's CA
// alone mounted) and the scheduler presents it (certFile/keyFile, the pair
// mounted where they point). With your own scheduler (the default) the
// pair is issued but not yet required, so an upgrade cannot lock it out.
func TestExtenderRequiresTheSchedulersClientCertificate(t *testing.T) {
	objects := render(t, ctxFor(t, time.Minute), valueSetNamed(t, "second scheduler"))
	var client corev1.Secret
	convert(t, find(t, objects, "Secret", releaseName+"-toposnap-extender-client-tls"), &client)
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(client.Data["ca.crt"]) {
		t.Fatal("client Secret's ca.crt holds no certificate")
	}
	pair, err := tls.X509KeyPair(client.Data["tls.crt"], client.Data["tls.key"])
	if err != nil {
		t.Fatalf("client Secret's pair: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate does not verify for client auth against the Secret's CA: %v", err)
	}
	var serving corev1.Secret
	convert(t, find(t, objects, "Secret", releaseName+"-toposnap-extender-tls"), &serving)
	if bytes.Equal(serving.Data["ca.crt"], client.Data["ca.crt"]) {
		t.Error("the client CA is the serving CA: it should vouch for nothing else")
	}

	pod, container := extenderContainer(t, objects)
	if !slices.Contains(container.Args, "--client-ca-file=/client-ca/ca.crt") {
		t.Errorf("extender args %v do not require client certificates", container.Args)
	}
	volume := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == "client-ca" })
	if volume < 0 || pod.Volumes[volume].Secret == nil || pod.Volumes[volume].Secret.SecretName != client.Name ||
		len(pod.Volumes[volume].Secret.Items) != 1 || pod.Volumes[volume].Secret.Items[0].Key != "ca.crt" {
		t.Errorf("extender volumes %+v, want client-ca: only ca.crt of %s", pod.Volumes, client.Name)
	}

	tlsConfig := schedulerConfig(t, objects).Extenders[0].TLSConfig
	var scheduler appsv1.Deployment
	convert(t, find(t, objects, "Deployment", releaseName+"-toposnap-scheduler"), &scheduler)
	mounts := scheduler.Spec.Template.Spec.Containers[0].VolumeMounts
	mount := slices.IndexFunc(mounts, func(m corev1.VolumeMount) bool { return m.Name == "extender-client" })
	if mount < 0 || tlsConfig == nil || tlsConfig.CertFile != mounts[mount].MountPath+"/tls.crt" || tlsConfig.KeyFile != mounts[mount].MountPath+"/tls.key" {
		t.Fatalf("scheduler's tlsConfig %+v does not name the mounted client pair (mounts %+v)", tlsConfig, mounts)
	}
	if secretVolume(scheduler.Spec.Template.Spec, "extender-client") != client.Name {
		t.Errorf("scheduler mounts %q as extender-client, want %s", secretVolume(scheduler.Spec.Template.Spec, "extender-client"), client.Name)
	}

	for _, tc := range []struct {
		name string
		args []string
	}{
		{"your own scheduler (defaults)", nil},
		{"toposnap-scheduler beside the default scheduler", []string{"--set", "scheduler.enabled=true", "--set", "extender.managedResource.defaultScheduler=true"}},
		{"turned off", []string{"--set", "scheduler.enabled=true", "--set", "extender.tls.clientAuth.required=false"}},
	} {
		objects := render(t, ctxFor(t, time.Minute), valueSet{name: tc.name, args: tc.args})
		find(t, objects, "Secret", releaseName+"-toposnap-extender-client-tls")
		if _, container := extenderContainer(t, objects); slices.ContainsFunc(container.Args, func(arg string) bool { return strings.HasPrefix(arg, "--client-ca-file") }) {
			t.Errorf("%s: extender args %v require client certificates", tc.name, container.Args)
		}
	}
	objects = render(t, ctxFor(t, time.Minute), valueSet{args: []string{"--set", "extender.tls.clientAuth.required=true"}})
	if _, container := extenderContainer(t, objects); !slices.Contains(container.Args, "--client-ca-file=/client-ca/ca.crt") {
		t.Errorf("required=true: extender args %v do not require client certificates", container.Args)
	}
	if _, err := runHelm(ctxFor(t, time.Minute), "template", releaseName, chartDir, "--set", "extender.tls.enabled=false",
		"--set", "extender.tls.clientAuth.required=true"); err == nil || !strings.Contains(err.Error(), "needs extender.tls.enabled=true") {
		t.Errorf("client certificates required over plain HTTP: %v, want the chart to refuse", err)
	}
}
