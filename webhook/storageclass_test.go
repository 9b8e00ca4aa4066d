package webhook

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
)

func TestMutateStorageClass(t *testing.T) {
	allowImmediate := storageClass("keep", DriverName)
	allowImmediate.Annotations = map[string]string{AnnAllowImmediate: "true"}
	hostClass := storageClass("host", DriverName)
	hostClass.AllowedTopologies = []corev1.TopologySelectorTerm{{MatchLabelExpressions: []corev1.TopologySelectorLabelRequirement{
		{Key: corev1.LabelHostname, Values: []string{"node9"}},
	}}}
	legacyNode := node("old", "")
	delete(legacyNode.Labels, "topology.kubernetes.io/zone")
	legacyNode.Labels[corev1.LabelFailureDomainBetaZone] = zoneD

	tests := []struct {
		name      string
		class     *storagev1.StorageClass
		create    bool
		nodes     []*corev1.Node
		wantMode  storagev1.VolumeBindingMode // "" : no patch
		wantWarns []string                    // substrings, one per expected warning
	}{
		{
			name:  "toposnap class without a binding mode becomes WaitForFirstConsumer with a warning",
			class: storageClass("fast", DriverName), create: true, nodes: seedNodes(),
			wantMode: storagev1.VolumeBindingWaitForFirstConsumer, wantWarns: []string{"set to WaitForFirstConsumer"},
		},
		{
			name:  "Immediate, as the API server defaults it, becomes WaitForFirstConsumer",
			class: withMode(storageClass("fast", DriverName), storagev1.VolumeBindingImmediate), create: true,
			wantMode: storagev1.VolumeBindingWaitForFirstConsumer, wantWarns: []string{"was Immediate"},
		},
		{
			name:  "no-provisioner class becomes WaitForFirstConsumer",
			class: storageClass("local", NoProvisioner), create: true,
			wantMode: storagev1.VolumeBindingWaitForFirstConsumer, wantWarns: []string{AnnAllowImmediate},
		},
		{
			name:  "allow-immediate annotation keeps Immediate",
			class: allowImmediate, create: true, nodes: seedNodes(),
		},
		{
			name:  "WaitForFirstConsumer class is left alone",
			class: withMode(storageClass("fast", DriverName), storagev1.VolumeBindingWaitForFirstConsumer), create: true, nodes: seedNodes(),
		},
		{
			name:  "other provisioner is untouched even when no node matches",
			class: storageClass("ebs", "ebs.csi.aws.com", zoneD), create: true, nodes: seedNodes(),
		},
		{
			name:  "update is never mutated",
			class: storageClass("fast", DriverName, zoneD), create: false, nodes: seedNodes(),
		},
		{
			name:  "allowedTopologies matching no node warns with the allowed zone and the nodes' zones",
			class: withMode(storageClass("demo", DriverName, zoneD), storagev1.VolumeBindingWaitForFirstConsumer), create: true, nodes: seedNodes(),
			wantWarns: []string{"allowedTopologies [zone cn-hangzhou-d] match no node; nodes are in zones [cn-hangzhou-b]"},
		},
		{
			name:  "allowedTopologies matching one node do not warn",
			class: withMode(storageClass("demo", DriverName, zoneD, zoneB), storagev1.VolumeBindingWaitForFirstConsumer), create: true, nodes: seedNodes(),
		},
		{
			name:  "a node labelled only with the legacy zone key matches the GA key",
			class: withMode(storageClass("demo", DriverName, zoneD), storagev1.VolumeBindingWaitForFirstConsumer), create: true,
			nodes: []*corev1.Node{legacyNode},
		},
		{
			name:  "without nodes there is nothing to warn about",
			class: withMode(storageClass("demo", DriverName, zoneD), storagev1.VolumeBindingWaitForFirstConsumer), create: true,
		},
		{
			name:  "an unmatched hostname topology names the nodes' hostnames",
			class: withMode(hostClass, storagev1.VolumeBindingWaitForFirstConsumer), create: true, nodes: seedNodes(),
			wantWarns: []string{"have kubernetes.io/hostname in [master, node1, node2]"},
		},
		{
			name:  "both fixes at once give both warnings",
			class: storageClass("demo", DriverName, zoneD), create: true, nodes: seedNodes(),
			wantMode: storagev1.VolumeBindingWaitForFirstConsumer, wantWarns: []string{"WaitForFirstConsumer", "cn-hangzhou-d"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			decision := MutateStorageClass(tt.class, tt.create, tt.nodes)
			if !decision.Allowed {
				t.Fatalf("denied: %s", decision.Message())
			}
			if got := patchedMode(t, tt.class, decision.Patch); got != tt.wantMode {
				t.Errorf("volumeBindingMode after patch = %q, want %q", got, tt.wantMode)
			}
			if len(decision.Warnings) != len(tt.wantWarns) {
				t.Fatalf("warnings = %q, want %d containing %q", decision.Warnings, len(tt.wantWarns), tt.wantWarns)
			}
			for i, want := range tt.wantWarns {
				if !strings.Contains(decision.Warnings[i], want) {
					t.Errorf("warning %d = %q, want it to contain %q", i, decision.Warnings[i], want)
				}
			}
		})
	}
}

// patchedMode applies patch to class as the API server would and returns
// the binding mode it set, or "" for no patch.
func patchedMode(t *testing.T, class *storagev1.StorageClass, patch []PatchOperation) storagev1.VolumeBindingMode {
	t.Helper()
	if len(patch) == 0 {
		return ""
	}
	result := applyPatch(t, class, patch)
	if result.VolumeBindingMode == nil {
		t.Fatalf("patch %v left volumeBindingMode unset", patch)
	}
	return *result.VolumeBindingMode
}
