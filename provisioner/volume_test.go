package provisioner

import (
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/toposnap/toposnap/internal/topology"
)

func classWith(params map[string]string, allowed ...corev1.TopologySelectorTerm) *storagev1.StorageClass {
	return &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "topo"}, Provisioner: "csi.toposnap.io", Parameters: params, AllowedTopologies: allowed}
}

func zoneTerm(zones ...string) corev1.TopologySelectorTerm {
	return corev1.TopologySelectorTerm{MatchLabelExpressions: []corev1.TopologySelectorLabelRequirement{{Key: topology.ZoneKey, Values: zones}}}
}

func TestDriverParameters(t *testing.T) {
	tests := []struct {
		name    string
		params  map[string]string
		want    map[string]string
		wantErr string
	}{
		{"scope passes", map[string]string{"scope": "zone"}, map[string]string{"scope": "zone"}, ""},
		{"reserved keys dropped", map[string]string{"csi.storage.k8s.io/fstype": "ext4"}, map[string]string{}, ""},
		{"unknown key refused", map[string]string{"scpoe": "zone"}, nil, "unknown parameter(s) scpoe"},
		{"bad scope refused", map[string]string{"scope": "rack"}, nil, "scope"},
		{"nestedSubvolumes passes", map[string]string{"nestedSubvolumes": "allow"}, map[string]string{"nestedSubvolumes": "allow"}, ""},
		{"bad nestedSubvolumes refused", map[string]string{"nestedSubvolumes": "yes"}, nil, `nestedSubvolumes is "yes"; want deny (the default) or allow`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DriverParameters(classWith(tt.params))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || len(got) != len(tt.want) || got["scope"] != tt.want["scope"] || got["nestedSubvolumes"] != tt.want["nestedSubvolumes"] {
				t.Fatalf("got %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestTopologyRequirement(t *testing.T) {
	node := topology.Segment{topology.NodeKey: "node1", topology.ZoneKey: "cn-hangzhou-b"}
	labels := map[string]string{topology.ZoneKey: "cn-hangzhou-b", topology.HostnameKey: "node1"}
	tests := []struct {
		name    string
		class   *storagev1.StorageClass
		wantErr bool
	}{
		{"no allowed topologies", classWith(nil), false},
		{"allowed zone matches", classWith(nil, zoneTerm("cn-hangzhou-b")), false},
		{"one of several terms matches", classWith(nil, zoneTerm("cn-hangzhou-d"), zoneTerm("cn-hangzhou-b")), false},
		{"allowed zone is elsewhere", classWith(nil, zoneTerm("cn-hangzhou-d")), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := TopologyRequirement(node, labels, tt.class)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && (len(req.Requisite) != 1 || req.Requisite[0].Segments[topology.NodeKey] != "node1") {
				t.Fatalf("requisite = %v, want the selected node's segment", req.Requisite)
			}
		})
	}
}

func TestBuildPV(t *testing.T) {
	retain := corev1.PersistentVolumeReclaimRetain
	claim := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: "ns", UID: "1234"},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}}}
	volume := &csi.Volume{VolumeId: "vn-x", CapacityBytes: 1 << 30, AccessibleTopology: []*csi.Topology{{Segments: map[string]string{topology.NodeKey: "node1"}}}}

	pv := BuildPV(claim, classWith(nil), "csi.toposnap.io", volume)
	if pv.Name != "pvc-1234" || pv.Spec.ClaimRef.UID != "1234" || pv.Spec.CSI.VolumeHandle != "vn-x" {
		t.Fatalf("pv = %+v", pv)
	}
	if len(pv.Finalizers) != 1 || pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
		t.Fatalf("Delete policy PV without finalizer: %v %v", pv.Finalizers, pv.Spec.PersistentVolumeReclaimPolicy)
	}
	expr := pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0]
	if expr.Key != topology.NodeKey || expr.Values[0] != "node1" {
		t.Fatalf("node affinity = %+v", expr)
	}
	retained := classWith(nil)
	retained.ReclaimPolicy = &retain
	if pv := BuildPV(claim, retained, "csi.toposnap.io", volume); len(pv.Finalizers) != 0 {
		t.Fatalf("Retain policy PV has finalizers %v", pv.Finalizers)
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		code codes.Code
		want errorClass
	}{
		{codes.DeadlineExceeded, retryInBackground},
		{codes.Unavailable, retryInBackground},
		{codes.Aborted, retryInBackground},
		{codes.ResourceExhausted, reschedule},
		{codes.InvalidArgument, final},
		{codes.NotFound, final},
	}
	for _, tt := range tests {
		if got := classify(status.Error(tt.code, "x")); got != tt.want {
			t.Errorf("classify(%v) = %v, want %v", tt.code, got, tt.want)
		}
	}
}

// TestVolumeModes: a Block claim asks the driver for a block volume and
// gets a Block PV; a Filesystem (or unset) claim a mount volume.
func TestVolumeModes(t *testing.T) {
	tests := []struct {
		name      string
		mode      *corev1.PersistentVolumeMode
		wantBlock bool
	}{
		{"unset is a filesystem", nil, false},
		{"filesystem", ptrTo(corev1.PersistentVolumeFilesystem), false},
		{"block", ptrTo(corev1.PersistentVolumeBlock), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			claim := &corev1.PersistentVolumeClaim{Spec: corev1.PersistentVolumeClaimSpec{VolumeMode: tt.mode,
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce, corev1.ReadWriteOncePod}}}
			caps, err := VolumeCapabilities(claim, classWith(nil))
			if err != nil {
				t.Fatal(err)
			}
			for _, capability := range caps {
				if (capability.GetBlock() != nil) != tt.wantBlock || (capability.GetMount() != nil) == tt.wantBlock {
					t.Fatalf("capability %v, want block=%v", capability, tt.wantBlock)
				}
			}
			pv := BuildPV(claim, classWith(nil), "csi.toposnap.io", &csi.Volume{VolumeId: "v"})
			if got := *pv.Spec.VolumeMode == corev1.PersistentVolumeBlock; got != tt.wantBlock {
				t.Fatalf("PV volumeMode %s, want block=%v", *pv.Spec.VolumeMode, tt.wantBlock)
			}
		})
	}
}

func ptrTo[T any](v T) *T { return &v }
