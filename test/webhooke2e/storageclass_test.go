package webhooke2e

import (
	"strings"
	"testing"
	"time"

	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/webhook"
)

func TestStorageClassBindingMode(t *testing.T) {
	needEnv(t)
	keep := storageClass("e2e-keep-immediate", webhook.DriverName)
	keep.Annotations = map[string]string{webhook.AnnAllowImmediate: "true"}
	tests := []struct {
		name        string
		class       *storagev1.StorageClass
		wantMode    storagev1.VolumeBindingMode
		wantWarning string // "": no warning
	}{
		{"toposnap class without a binding mode is stored as WaitForFirstConsumer with a warning",
			storageClass("e2e-defaulted", webhook.DriverName), storagev1.VolumeBindingWaitForFirstConsumer,
			"StorageClass e2e-defaulted: volumeBindingMode set to WaitForFirstConsumer (was Immediate)"},
		{"no-provisioner class is stored as WaitForFirstConsumer",
			storageClass("e2e-local", webhook.NoProvisioner), storagev1.VolumeBindingWaitForFirstConsumer,
			"volumeBindingMode set to WaitForFirstConsumer"},
		{"class annotated allow-immediate keeps Immediate", keep, storagev1.VolumeBindingImmediate, ""},
		{"class of another provisioner is left alone", storageClass("e2e-other", otherCSI), storagev1.VolumeBindingImmediate, ""},
	}
	c := newClients(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxFor(t, time.Minute)
			if _, err := c.kube.StorageV1().StorageClasses().Create(ctx, tt.class, metav1.CreateOptions{}); err != nil {
				t.Fatalf("create: %v", err)
			}
			deleteAfter(t, tt.class.Name)
			warnings := c.warnings.take()
			stored, err := env.cluster.Client.StorageV1().StorageClasses().Get(ctx, tt.class.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if stored.VolumeBindingMode == nil || *stored.VolumeBindingMode != tt.wantMode {
				t.Errorf("stored volumeBindingMode %v, want %s", stored.VolumeBindingMode, tt.wantMode)
			}
			switch {
			case tt.wantWarning == "" && len(warnings) > 0:
				t.Errorf("warnings %q, want none", warnings)
			case tt.wantWarning != "" && (len(warnings) != 1 || !strings.Contains(warnings[0], tt.wantWarning)):
				t.Errorf("warnings %q, want one containing %q", warnings, tt.wantWarning)
			}
		})
	}
}

func TestStorageClassAllowingNoNodeWarns(t *testing.T) {
	needEnv(t)
	ctx := ctxFor(t, time.Minute)
	c := newClients(t)
	class := storageClass("e2e-seed-mistake", webhook.DriverName, zoneD)
	class.VolumeBindingMode = ptr.To(storagev1.VolumeBindingWaitForFirstConsumer)
	if _, err := c.kube.StorageV1().StorageClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create: %v", err)
	}
	deleteAfter(t, class.Name)
	warnings := c.warnings.take()
	if len(warnings) != 1 || !containsAll(warnings[0], "[zone "+zoneD+"]", "nodes are in zones ["+cluster.SeedZone+"]") {
		t.Fatalf("warnings %q, want one naming the allowed zone %s and the nodes' zone %s", warnings, zoneD, cluster.SeedZone)
	}
}
