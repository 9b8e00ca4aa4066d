package chart

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// releaseName is the release the rendering tests use.
const releaseName = "t"

// snapshotAPI tells helm template that the cluster serves VolumeSnapshotClass,
// as the test cluster does, so the chart renders its snapshot classes.
const snapshotAPI = "snapshot.storage.k8s.io/v1/VolumeSnapshotClass"

// valueSet is one way to configure the chart and what it must render.
type valueSet struct {
	name string
	// args are helm flags (--set, -f) giving the values.
	args []string
	// apiVersions are extra --api-versions for helm template.
	apiVersions []string
	// kinds are how many objects of each kind the set renders (every kind
	// rendered must be listed).
	kinds map[string]int
}

// commonKinds are what every set renders unless it says otherwise.
var commonKinds = map[string]int{
	"CSIDriver": 1, "ServiceAccount": 4, "ClusterRole": 6, "ClusterRoleBinding": 6, "Role": 3, "RoleBinding": 3,
	"DaemonSet": 1, "Deployment": 3, "Service": 2, "PodDisruptionBudget": 3, "Secret": 3,
	"MutatingWebhookConfiguration": 1, "ValidatingWebhookConfiguration": 1,
	"StorageClass": 1, "VolumeSnapshotClass": 1,
	"ValidatingAdmissionPolicy": 7, "ValidatingAdmissionPolicyBinding": 7,
}

// with returns commonKinds changed by delta (0 removes a kind).
func with(delta map[string]int) map[string]int {
	kinds := maps.Clone(commonKinds)
	for kind, n := range delta {
		if n == 0 {
			delete(kinds, kind)
		} else {
			kinds[kind] = n
		}
	}
	return kinds
}

// merge returns a copy of a with b's entries added or replaced.
func merge(a, b map[string]int) map[string]int {
	merged := maps.Clone(a)
	maps.Copy(merged, b)
	return merged
}

// schedulerKinds are the second scheduler's objects added to commonKinds,
// with the extender's NetworkPolicy (its only caller is then known).
var schedulerKinds = map[string]int{
	"ServiceAccount": 5, "ConfigMap": 1, "ClusterRoleBinding": 8, "Role": 4, "RoleBinding": 5,
	"Deployment": 4, "PodDisruptionBudget": 4, "NetworkPolicy": 1,
}

func valueSets() []valueSet {
	return []valueSet{
		{name: "defaults", kinds: commonKinds},
		{
			name:        "cert-manager",
			args:        []string{"--set", "webhook.certManager.enabled=true"},
			apiVersions: []string{"cert-manager.io/v1"},
			kinds:       with(map[string]int{"Secret": 2, "Issuer": 2, "Certificate": 2}),
		},
		{name: "second scheduler", args: []string{"--set", "scheduler.enabled=true"}, kinds: with(schedulerKinds)},
		{
			name:  "snapshot CRDs and toposnap snapshot controller",
			args:  []string{"--set", "snapshotCRDs.install=true", "--set", "snapshotController.toposnap=true"},
			kinds: with(map[string]int{"CustomResourceDefinition": 3}),
		},
		{
			name:  "zone pool and extra classes",
			args:  []string{"-f", "test/chart/testdata/zone.yaml"},
			kinds: with(map[string]int{"StorageClass": 3, "VolumeSnapshotClass": 2}),
		},
		{name: "two replicas with PDBs", args: []string{"-f", "test/chart/testdata/replicas.yaml"}, kinds: with(schedulerKinds)},
		{
			name:        "cert-manager for webhook and extender with the second scheduler",
			args:        []string{"--set", "webhook.certManager.enabled=true", "--set", "extender.tls.certManager.enabled=true", "--set", "scheduler.enabled=true"},
			apiVersions: []string{"cert-manager.io/v1"},
			kinds:       with(merge(schedulerKinds, map[string]int{"Secret": 0, "Issuer": 3, "Certificate": 5})),
		},
		{
			name:  "plain HTTP extender and no node admission policies",
			args:  []string{"--set", "extender.tls.enabled=false", "--set", "node.admissionPolicy.enabled=false"},
			kinds: with(map[string]int{"Secret": 1, "ValidatingAdmissionPolicy": 0, "ValidatingAdmissionPolicyBinding": 0}),
		},
		{
			name:  "extender NetworkPolicy with the second scheduler and peers",
			args:  []string{"-f", "test/chart/testdata/networkpolicy.yaml"},
			kinds: with(merge(schedulerKinds, map[string]int{"NetworkPolicy": 1})),
		},
		{
			name:  "webhook NetworkPolicy and client CA",
			args:  []string{"-f", "test/chart/testdata/webhook-callers.yaml"},
			kinds: with(map[string]int{"NetworkPolicy": 1, "ConfigMap": 1}),
		},
	}
}

// render runs helm template for a set and parses the objects.
func render(t *testing.T, ctx context.Context, set valueSet) []*unstructured.Unstructured {
	t.Helper()
	args := []string{"template", releaseName, chartDir, "--namespace", dryRunNamespace, "--api-versions", snapshotAPI}
	for _, version := range set.apiVersions {
		args = append(args, "--api-versions", version)
	}
	out, err := runHelm(ctx, append(args, set.args...)...)
	if err != nil {
		t.Fatal(err)
	}
	objects, err := parseObjects(out)
	if err != nil {
		t.Fatalf("parse helm template output: %v", err)
	}
	return objects
}

// parseObjects splits a multi-document YAML stream into objects.
func parseObjects(manifest []byte) ([]*unstructured.Unstructured, error) {
	decoder := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifest), 4096)
	var objects []*unstructured.Unstructured
	for {
		var doc map[string]any
		if err := decoder.Decode(&doc); errors.Is(err, io.EOF) {
			return objects, nil
		} else if err != nil {
			return nil, err
		}
		if len(doc) == 0 {
			continue
		}
		objects = append(objects, &unstructured.Unstructured{Object: doc})
	}
}

// countKinds counts objects per kind.
func countKinds(objects []*unstructured.Unstructured) map[string]int {
	kinds := map[string]int{}
	for _, o := range objects {
		kinds[o.GetKind()]++
	}
	return kinds
}

// find returns the object of that kind and name, failing the test without it.
func find(t *testing.T, objects []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objects {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %s rendered", kind, name)
	return nil
}

// convert turns an unstructured object into a typed one.
func convert(t *testing.T, o *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, into, true); err != nil {
		t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
	}
}

func TestLintPassesForEveryValueSet(t *testing.T) {
	for _, set := range valueSets() {
		t.Run(set.name, func(t *testing.T) {
			out, err := runHelm(ctxFor(t, time.Minute), append([]string{"lint", "--strict", chartDir}, set.args...)...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		})
	}
}

func TestValueSetsRenderTheExpectedObjects(t *testing.T) {
	for _, set := range valueSets() {
		t.Run(set.name, func(t *testing.T) {
			got := countKinds(render(t, ctxFor(t, time.Minute), set))
			if !maps.Equal(got, set.kinds) {
				t.Errorf("rendered kinds %v, want %v", got, set.kinds)
			}
		})
	}
}

// TestServerDryRunAcceptsEveryObject sends every rendered object to the real
// API server (kubectl apply --dry-run=server --validate=strict: schema,
// unknown fields, defaulting, validation, CEL in the snapshot CRDs) except
// cert-manager's, whose CRDs this cluster lacks; those are checked by
// TestCertManagerObjectsAreConsistent instead.
func TestServerDryRunAcceptsEveryObject(t *testing.T) {
	needCluster(t)
	for _, set := range valueSets() {
		t.Run(set.name, func(t *testing.T) {
			ctx := ctxFor(t, 2*time.Minute)
			objects := render(t, ctx, set)
			var sent []*unstructured.Unstructured
			var skipped []string
			for _, o := range objects {
				if o.GroupVersionKind().Group == "cert-manager.io" {
					skipped = append(skipped, o.GetKind()+"/"+o.GetName())
					continue
				}
				sent = append(sent, o)
			}
			if len(skipped) > 0 {
				t.Logf("not sent to the API server (no cert-manager CRDs here; checked client-side): %s", strings.Join(skipped, ", "))
			}
			applied := serverDryRun(t, ctx, sent)
			if len(applied) != len(sent) {
				t.Fatalf("API server accepted %d objects, sent %d:\n%s", len(applied), len(sent), strings.Join(applied, "\n"))
			}
			t.Logf("API server accepted all %d objects (%d rendered): %v", len(sent), len(objects), countKinds(sent))
		})
	}
}

// serverDryRun applies objects with a server-side dry run and returns the
// names kubectl reports.
func serverDryRun(t *testing.T, ctx context.Context, objects []*unstructured.Unstructured) []string {
	t.Helper()
	var manifest bytes.Buffer
	for _, o := range objects {
		data, err := yaml.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		manifest.WriteString("---\n")
		manifest.Write(data)
	}
	file := filepath.Join(t.TempDir(), "manifest.yaml")
	if err := os.WriteFile(file, manifest.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := testCluster.Kubectl(ctx, "apply", "--dry-run=server", "--validate=strict", "-o", "name", "-f", file)
	if err != nil {
		t.Fatalf("server dry run rejected the chart: %v\n%s", err, out)
	}
	return strings.Fields(string(out))
}

func TestSchemaRejectsBadValues(t *testing.T) {
	for _, bad := range []struct{ name, set string }{
		{"replicas not a number", "extender.replicas=abc"},
		{"unknown top-level key", "replicaCount=2"},
		{"unknown nested key", "webhook.failurePolicy.everything=Ignore"},
		{"failure policy outside the enum", "webhook.failurePolicy.claims=Sometimes"},
		{"storage class scope outside the enum", "storageClasses[0].scope=region"},
		{"capacity not a quantity", "node.pool.capacity=lots"},
		{"relative host path", "node.pool.hostPath=var/lib/toposnap"},
		{"extender TLS switch not a boolean", "extender.tls.enabled=maybe"},
		{"validation action outside the enum", "node.admissionPolicy.validationActions={Block}"},
		{"network policy peer with an unknown field", "extender.networkPolicy.schedulerPeers[0].cidr=10.0.0.10/32"},
		{"controller replicas not a number", "controller.replicas=two"},
		{"unknown controller key", "controller.leaderElect=false"},
		{"routed switch not a boolean", "node.routed=sometimes"},
	} {
		t.Run(bad.name, func(t *testing.T) {
			_, err := runHelm(ctxFor(t, time.Minute), "template", releaseName, chartDir, "--set", bad.set)
			if err == nil {
				t.Fatalf("helm template --set %s succeeded; the schema must reject it", bad.set)
			}
			if !strings.Contains(err.Error(), "values don't meet the specifications of the schema") {
				t.Fatalf("helm template --set %s failed, but not on the schema: %v", bad.set, err)
			}
		})
	}
}

// TestRolesGrantNoWildcards: least privilege means every verb, resource and
// API group is named.
func TestRolesGrantNoWildcards(t *testing.T) {
	for _, set := range valueSets() {
		t.Run(set.name, func(t *testing.T) {
			checked := 0
			for _, o := range render(t, ctxFor(t, time.Minute), set) {
				if o.GetKind() != "ClusterRole" && o.GetKind() != "Role" {
					continue
				}
				checked++
				rules, _, _ := unstructured.NestedSlice(o.Object, "rules")
				if len(rules) == 0 {
					t.Errorf("%s %s has no rules", o.GetKind(), o.GetName())
				}
				for i, rule := range rules {
					for _, field := range []string{"verbs", "resources", "apiGroups"} {
						values, _, _ := unstructured.NestedStringSlice(rule.(map[string]any), field)
						if len(values) == 0 {
							t.Errorf("%s %s rule %d has no %s", o.GetKind(), o.GetName(), i, field)
						}
						if slices.ContainsFunc(values, func(v string) bool { return strings.Contains(v, "*") }) {
							t.Errorf("%s %s rule %d: %s %v contains a wildcard", o.GetKind(), o.GetName(), i, field, values)
						}
					}
				}
			}
			if checked == 0 {
				t.Fatal("no roles rendered")
			}
		})
	}
}

// TestOnlyTheDriverIsPrivileged: the driver container is privileged (for
// Bidirectional mount propagation of the kubelet's directory); every other
// container is unprivileged, drops all capabilities and has a read-only root.
func TestOnlyTheDriverIsPrivileged(t *testing.T) {
	for _, set := range valueSets() {
		t.Run(set.name, func(t *testing.T) {
			var problems []string
			for _, o := range render(t, ctxFor(t, time.Minute), set) {
				if o.GetKind() != "DaemonSet" && o.GetKind() != "Deployment" {
					continue
				}
				containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
				for _, c := range containers {
					container := c.(map[string]any)
					name := fmt.Sprintf("%s/%s", o.GetName(), container["name"])
					privileged, _, _ := unstructured.NestedBool(container, "securityContext", "privileged")
					readOnly, _, _ := unstructured.NestedBool(container, "securityContext", "readOnlyRootFilesystem")
					if !readOnly {
						problems = append(problems, name+": root filesystem not read-only")
					}
					bidirectional := false
					mounts, _, _ := unstructured.NestedSlice(container, "volumeMounts")
					for _, m := range mounts {
						if m.(map[string]any)["mountPropagation"] == "Bidirectional" {
							bidirectional = true
						}
					}
					if container["name"] == "driver" {
						if !privileged || !bidirectional {
							problems = append(problems, name+": the driver needs privileged and a Bidirectional kubelet mount")
						}
						continue
					}
					drop, _, _ := unstructured.NestedStringSlice(container, "securityContext", "capabilities", "drop")
					escalation, found, _ := unstructured.NestedBool(container, "securityContext", "allowPrivilegeEscalation")
					switch {
					case privileged || bidirectional:
						problems = append(problems, name+": privileged or Bidirectional outside the driver")
					case !slices.Equal(drop, []string{"ALL"}):
						problems = append(problems, name+": capabilities not dropped")
					case !found || escalation:
						problems = append(problems, name+": privilege escalation allowed")
					}
				}
			}
			sort.Strings(problems)
			for _, p := range problems {
				t.Error(p)
			}
		})
	}
}
