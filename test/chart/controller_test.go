package chart

import (
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
)

// controllerName is toposnap-controller's Deployment, ServiceAccount and
// roles in the rendering tests' release.
const controllerName = releaseName + "-toposnap-controller"

// controllerLease is the Lease its replicas elect a leader with.
const controllerLease = "toposnap-controller"

// TestControllerDeployment: two replicas of toposnap-controller's binary,
// with the release namespace, the pod's name as its leader-election
// identity, the chart's driver and the Lease its Role names; probed on its
// metrics port, and not on /readyz (200 on the leader only: a standby would
// never be available, so a rolling update and a drain of the leader's node
// would wait forever).
func TestControllerDeployment(t *testing.T) {
	objects := render(t, ctxFor(t, time.Minute), valueSetNamed(t, "defaults"))
	var deployment appsv1.Deployment
	convert(t, find(t, objects, "Deployment", controllerName), &deployment)
	if got := ptr.Deref(deployment.Spec.Replicas, 1); got != 2 {
		t.Errorf("replicas %d, want 2", got)
	}
	pod := deployment.Spec.Template.Spec
	if pod.ServiceAccountName != controllerName {
		t.Errorf("runs as ServiceAccount %q, want %q", pod.ServiceAccountName, controllerName)
	}
	if pod.Affinity == nil || pod.Affinity.PodAntiAffinity == nil ||
		len(pod.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) == 0 ||
		pod.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm.TopologyKey != "kubernetes.io/hostname" {
		t.Errorf("replicas are not spread over nodes: %+v", pod.Affinity)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	container := pod.Containers[0]
	if !slices.Equal(container.Command, []string{"/usr/local/bin/toposnap-controller"}) {
		t.Errorf("command %v", container.Command)
	}
	for _, want := range []string{
		"--metrics-address=:9820",
		"--namespace=" + dryRunNamespace,
		"--leader-election-lease=" + controllerLease,
		"--leader-election-identity=$(POD_NAME)",
		"--driver-name=csi.toposnap.io",
		"--v=2",
	} {
		if !slices.Contains(container.Args, want) {
			t.Errorf("args %v lack %s", container.Args, want)
		}
	}
	if !slices.ContainsFunc(container.Env, func(e corev1.EnvVar) bool {
		return e.Name == "POD_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name"
	}) {
		t.Errorf("no POD_NAME from the downward API: %+v", container.Env)
	}
	if !slices.ContainsFunc(container.Ports, func(p corev1.ContainerPort) bool { return p.Name == "metrics" && p.ContainerPort == 9820 }) {
		t.Errorf("metrics port 9820 not declared: %+v", container.Ports)
	}
	checkProbe(t, "controller liveness", container.LivenessProbe, "/healthz", corev1.URISchemeHTTP, "metrics")
	checkProbe(t, "controller readiness", container.ReadinessProbe, "/healthz", corev1.URISchemeHTTP, "metrics")
	security := container.SecurityContext
	if security == nil || !ptr.Deref(security.RunAsNonRoot, false) || !ptr.Deref(security.ReadOnlyRootFilesystem, false) ||
		security.SeccompProfile == nil || security.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("security context not restricted: %+v", security)
	}
	if container.Resources.Requests.Memory().IsZero() || container.Resources.Limits.Memory().IsZero() {
		t.Errorf("no memory request and limit: %+v", container.Resources)
	}
}

// controllerMay is everything toposnap-controller may do: its informers,
// route-label patches, source-protection finalizers (get and update), a GET
// of a class its cache lacks, and events. Its Role adds the Lease and the
// clean-up of CSIStorageCapacity in the release namespace.
var controllerMay = map[string][]string{
	"/persistentvolumeclaims":       {"get", "list", "watch", "patch", "update"},
	"/persistentvolumes":            {"get", "list", "watch", "patch"},
	"/nodes":                        {"list", "watch"},
	"/events":                       {"create", "patch"},
	"storage.k8s.io/storageclasses": {"get", "list", "watch"},
	// Which nodes run the driver: the zone Leases' candidates.
	"storage.k8s.io/csinodes":                        {"list", "watch"},
	"snapshot.storage.k8s.io/volumesnapshots":        {"get", "list", "watch", "patch", "update"},
	"snapshot.storage.k8s.io/volumesnapshotcontents": {"get", "list", "watch", "patch", "create", "update", "delete"},
	// With --snapshot-binder only (snapshotController.toposnap).
	"snapshot.storage.k8s.io/volumesnapshotcontents/status": {"update"},
	"snapshot.storage.k8s.io/volumesnapshots/status":        {"update"},
	"snapshot.storage.k8s.io/volumesnapshotclasses":         {"get", "list", "watch"},
}

// TestControllerRolesGrantOnlyWhatItUses: every rule of toposnap-controller's
// ClusterRole is within controllerMay (so no wildcard, no Secret, no
// create or delete of storage objects); its Role lets it create Leases,
// get and update only its own, and list and delete CSIStorageCapacity.
func TestControllerRolesGrantOnlyWhatItUses(t *testing.T) {
	objects := render(t, ctxFor(t, time.Minute), valueSetNamed(t, "defaults"))
	var defaults rbacv1.ClusterRole
	convert(t, find(t, objects, "ClusterRole", controllerName), &defaults)
	if allows(defaults.Rules, "snapshot.storage.k8s.io", "volumesnapshotcontents", "", "create") {
		t.Error("toposnap-controller may create contents though it binds no snapshots (snapshotController.toposnap false)")
	}
	// The widest: toposnap binds snapshots, and the binder is central.
	objects = render(t, ctxFor(t, time.Minute), valueSetNamed(t, "snapshot CRDs and toposnap snapshot controller"))
	var deployment appsv1.Deployment
	convert(t, find(t, objects, "Deployment", controllerName), &deployment)
	if args := deployment.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--snapshot-binder") {
		t.Errorf("toposnap binds snapshots, but toposnap-controller runs without --snapshot-binder: %v", args)
	}
	var clusterRole rbacv1.ClusterRole
	convert(t, find(t, objects, "ClusterRole", controllerName), &clusterRole)
	for i, rule := range clusterRole.Rules {
		if len(rule.ResourceNames) > 0 || len(rule.NonResourceURLs) > 0 {
			t.Errorf("ClusterRole rule %d: unexpected resourceNames or nonResourceURLs: %+v", i, rule)
		}
		for _, group := range rule.APIGroups {
			for _, resource := range rule.Resources {
				allowed, ok := controllerMay[group+"/"+resource]
				if !ok {
					t.Errorf("ClusterRole rule %d grants %s in group %q, which toposnap-controller does not use", i, resource, group)
					continue
				}
				for _, verb := range rule.Verbs {
					if !slices.Contains(allowed, verb) {
						t.Errorf("ClusterRole rule %d grants %s on %s/%s; toposnap-controller may only %v", i, verb, group, resource, allowed)
					}
				}
			}
		}
	}
	// What it cannot work without.
	for _, need := range []struct{ group, resource, verbs string }{
		{"", "persistentvolumeclaims", "list watch patch get update"},
		{"", "persistentvolumes", "list watch patch"},
		{"", "nodes", "list watch"},
		{"storage.k8s.io", "storageclasses", "get list watch"},
		{"storage.k8s.io", "csinodes", "list watch"},
		{"snapshot.storage.k8s.io", "volumesnapshots", "list watch patch get update"},
		{"snapshot.storage.k8s.io", "volumesnapshotcontents", "list watch patch get create update delete"},
		{"snapshot.storage.k8s.io", "volumesnapshots/status", "update"},
		{"snapshot.storage.k8s.io", "volumesnapshotcontents/status", "update"},
		{"snapshot.storage.k8s.io", "volumesnapshotclasses", "list watch"},
		{"", "events", "create patch"},
	} {
		if !allows(clusterRole.Rules, need.group, need.resource, "", strings.Fields(need.verbs)...) {
			t.Errorf("ClusterRole does not grant %s on %s/%s", need.verbs, need.group, need.resource)
		}
	}

	var role rbacv1.Role
	convert(t, find(t, objects, "Role", controllerName), &role)
	if role.Namespace != dryRunNamespace {
		t.Errorf("Role in namespace %q, want the release's %q", role.Namespace, dryRunNamespace)
	}
	roleMay := map[string][]string{"coordination.k8s.io/leases": {"create", "get", "update"}, "storage.k8s.io/csistoragecapacities": {"list", "delete"}}
	for i, rule := range role.Rules {
		for _, group := range rule.APIGroups {
			for _, resource := range rule.Resources {
				allowed := roleMay[group+"/"+resource]
				for _, verb := range rule.Verbs {
					if !slices.Contains(allowed, verb) {
						t.Errorf("Role rule %d grants %s on %s/%s; toposnap-controller may only %v there", i, verb, group, resource, allowed)
					}
					// Leases: its own, and the zone Leases' candidates, whose
					// names (a hash of the zone) RBAC cannot know; which
					// fields it writes there is the admission policies' and
					// the code's to keep (central/candidates.go).
				}
			}
		}
	}
	if !allows(role.Rules, "coordination.k8s.io", "leases", controllerLease, "get", "update") ||
		!allows(role.Rules, "coordination.k8s.io", "leases", "", "create") ||
		!allows(role.Rules, "storage.k8s.io", "csistoragecapacities", "", "list", "delete") {
		t.Errorf("Role does not let toposnap-controller hold Lease %s and remove stale capacity: %+v", controllerLease, role.Rules)
	}

	for _, binding := range []struct{ kind, roleKind string }{{"ClusterRoleBinding", "ClusterRole"}, {"RoleBinding", "Role"}} {
		var roleRef rbacv1.RoleRef
		var subjects []rbacv1.Subject
		o := find(t, objects, binding.kind, controllerName)
		if binding.kind == "ClusterRoleBinding" {
			var b rbacv1.ClusterRoleBinding
			convert(t, o, &b)
			roleRef, subjects = b.RoleRef, b.Subjects
		} else {
			var b rbacv1.RoleBinding
			convert(t, o, &b)
			roleRef, subjects = b.RoleRef, b.Subjects
		}
		want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: controllerName, Namespace: dryRunNamespace}}
		if roleRef.Kind != binding.roleKind || roleRef.Name != controllerName || !slices.Equal(subjects, want) {
			t.Errorf("%s binds %s %s to %+v, want %s %s to %+v", binding.kind, roleRef.Kind, roleRef.Name, subjects, binding.roleKind, controllerName, want)
		}
	}
}

// TestNodeAgentsRouted: by default the provisioner and the snapshotter (and
// no other container) run with --routed, and the node may no longer list or
// delete CSIStorageCapacity (toposnap-controller removes stale ones); with
// node.routed=false the chart renders neither, as before the controller.
func TestNodeAgentsRouted(t *testing.T) {
	for _, tc := range []struct {
		name          string
		args          []string
		routed        []string
		capacityVerbs []string
	}{
		{"defaults", nil, []string{"provisioner", "snapshotter"}, []string{"get", "create", "update"}},
		{"node.routed=false", []string{"--set", "node.routed=false"}, nil, []string{"get", "list", "create", "update", "delete"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objects := render(t, ctxFor(t, time.Minute), valueSet{name: tc.name, args: tc.args})
			var routed []string
			for _, o := range objects {
				for _, path := range [][]string{{"spec", "template", "spec", "containers"}, {"spec", "template", "spec", "initContainers"}} {
					containers, _, _ := unstructured.NestedSlice(o.Object, path...)
					for _, c := range containers {
						container := c.(map[string]any)
						args, _, _ := unstructured.NestedStringSlice(container, "args")
						if slices.Contains(args, "--routed") {
							routed = append(routed, container["name"].(string))
						}
					}
				}
			}
			if !slices.Equal(routed, tc.routed) {
				t.Errorf("containers with --routed: %v, want %v", routed, tc.routed)
			}
			var role rbacv1.Role
			convert(t, find(t, objects, "Role", releaseName+"-toposnap-provisioner"), &role)
			var verbs []string
			for _, rule := range role.Rules {
				if slices.Contains(rule.Resources, "csistoragecapacities") {
					verbs = append(verbs, rule.Verbs...)
				}
			}
			if !slices.Equal(verbs, tc.capacityVerbs) {
				t.Errorf("the node may %v CSIStorageCapacity, want %v", verbs, tc.capacityVerbs)
			}
		})
	}
}
