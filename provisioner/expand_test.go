package provisioner

import (
	"context"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/fakecsi"
	"github.com/toposnap/toposnap/internal/topology"
)

// nodeExpansionDriver is a driver whose volumes need the node's step after
// ControllerExpandVolume, as toposnap's block volumes do.
type nodeExpansionDriver struct{ csi.ControllerClient }

func (d nodeExpansionDriver) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest, opts ...grpc.CallOption) (*csi.ControllerExpandVolumeResponse, error) {
	resp, err := d.ControllerClient.ControllerExpandVolume(ctx, req, opts...)
	if err == nil {
		resp.NodeExpansionRequired = true
	}
	return resp, err
}

// resizeState is the part of a claim and its PV that expansion reads and writes.
type resizeState struct {
	request, capacity, pvCapacity string
	allocated                     string // "" is none
	progress                      corev1.ClaimResourceStatus
	conditions                    []corev1.PersistentVolumeClaimConditionType
}

// TestExpand: the claim records an expansion as external-resizer does with
// RecoverVolumeExpansionFailure (allocatedResources, allocatedResourceStatuses,
// resize conditions), the kubelet's step is left to it, a failure is recorded
// by its class, and a user may recover from an infeasible size.
func TestExpand(t *testing.T) {
	cases := []struct {
		name       string
		before     resizeState
		nodeStep   bool        // the driver asks for NodeExpandVolume
		fault      error       // ControllerExpandVolume's answer
		otherClaim bool        // the PV is bound to an earlier claim of the same name
		wantCalls  int         // ControllerExpandVolume calls
		wantErr    bool        // the sync fails (and is retried)
		want       resizeState // request is not compared
	}{
		{
			name:      "growth without a node step is finished at once",
			before:    resizeState{request: "2Mi", capacity: "1Mi", pvCapacity: "1Mi"},
			wantCalls: 1,
			want:      resizeState{capacity: "2Mi", pvCapacity: "2Mi", allocated: "2Mi"},
		},
		{
			name:      "growth that needs the node's step is handed to the kubelet",
			before:    resizeState{request: "2Mi", capacity: "1Mi", pvCapacity: "1Mi"},
			nodeStep:  true,
			wantCalls: 1,
			want: resizeState{capacity: "1Mi", pvCapacity: "2Mi", allocated: "2Mi", progress: corev1.PersistentVolumeClaimNodeResizePending,
				conditions: []corev1.PersistentVolumeClaimConditionType{corev1.PersistentVolumeClaimResizing, corev1.PersistentVolumeClaimFileSystemResizePending}},
		},
		{
			name: "a pending node step is left to the kubelet",
			before: resizeState{request: "2Mi", capacity: "1Mi", pvCapacity: "2Mi", allocated: "2Mi", progress: corev1.PersistentVolumeClaimNodeResizePending,
				conditions: []corev1.PersistentVolumeClaimConditionType{corev1.PersistentVolumeClaimFileSystemResizePending}},
			wantCalls: 0,
			want: resizeState{capacity: "1Mi", pvCapacity: "2Mi", allocated: "2Mi", progress: corev1.PersistentVolumeClaimNodeResizePending,
				conditions: []corev1.PersistentVolumeClaimConditionType{corev1.PersistentVolumeClaimFileSystemResizePending}},
		},
		{
			name:      "a request the claim already has asks for nothing",
			before:    resizeState{request: "1Mi", capacity: "1Mi", pvCapacity: "1Mi"},
			wantCalls: 0,
			want:      resizeState{capacity: "1Mi", pvCapacity: "1Mi"},
		},
		{
			name:       "a PV bound to an earlier claim of the same name is not resized",
			before:     resizeState{request: "2Mi", capacity: "1Mi", pvCapacity: "1Mi"},
			otherClaim: true,
			wantCalls:  0,
			want:       resizeState{capacity: "1Mi", pvCapacity: "1Mi"},
		},
		{
			name:      "an infeasible size is recorded so the user can recover",
			before:    resizeState{request: "2Mi", capacity: "1Mi", pvCapacity: "1Mi"},
			fault:     status.Error(codes.OutOfRange, "pool too small"),
			wantCalls: 1, wantErr: true,
			want: resizeState{capacity: "1Mi", pvCapacity: "1Mi", allocated: "2Mi", progress: corev1.PersistentVolumeClaimControllerResizeInfeasible,
				conditions: []corev1.PersistentVolumeClaimConditionType{corev1.PersistentVolumeClaimResizing, corev1.PersistentVolumeClaimControllerResizeError}},
		},
		{
			name:      "a final failure leaves an error condition on the expansion in progress",
			before:    resizeState{request: "2Mi", capacity: "1Mi", pvCapacity: "1Mi"},
			fault:     status.Error(codes.Internal, "disk error"),
			wantCalls: 1, wantErr: true,
			want: resizeState{capacity: "1Mi", pvCapacity: "1Mi", allocated: "2Mi", progress: corev1.PersistentVolumeClaimControllerResizeInProgress,
				conditions: []corev1.PersistentVolumeClaimConditionType{corev1.PersistentVolumeClaimResizing, corev1.PersistentVolumeClaimControllerResizeError}},
		},
		{
			name:      "a timeout may still be running: only the expansion in progress is recorded",
			before:    resizeState{request: "2Mi", capacity: "1Mi", pvCapacity: "1Mi"},
			fault:     status.Error(codes.DeadlineExceeded, "slow"),
			wantCalls: 1, wantErr: true,
			want: resizeState{capacity: "1Mi", pvCapacity: "1Mi", allocated: "2Mi", progress: corev1.PersistentVolumeClaimControllerResizeInProgress,
				conditions: []corev1.PersistentVolumeClaimConditionType{corev1.PersistentVolumeClaimResizing}},
		},
		{
			name: "an expansion that may be running keeps its size when the request grows again",
			before: resizeState{request: "3Mi", capacity: "1Mi", pvCapacity: "1Mi", allocated: "2Mi", progress: corev1.PersistentVolumeClaimControllerResizeInProgress,
				conditions: []corev1.PersistentVolumeClaimConditionType{corev1.PersistentVolumeClaimResizing}},
			wantCalls: 1,
			want:      resizeState{capacity: "2Mi", pvCapacity: "2Mi", allocated: "2Mi"},
		},
		{
			name: "after a final failure the current request wins",
			before: resizeState{request: "3Mi", capacity: "1Mi", pvCapacity: "1Mi", allocated: "2Mi", progress: corev1.PersistentVolumeClaimControllerResizeInProgress,
				conditions: []corev1.PersistentVolumeClaimConditionType{corev1.PersistentVolumeClaimResizing, corev1.PersistentVolumeClaimControllerResizeError}},
			wantCalls: 1,
			want:      resizeState{capacity: "3Mi", pvCapacity: "3Mi", allocated: "3Mi"},
		},
		{
			name: "a user who lowers an infeasible request recovers",
			before: resizeState{request: "2Mi", capacity: "1Mi", pvCapacity: "1Mi", allocated: "10Gi", progress: corev1.PersistentVolumeClaimControllerResizeInfeasible,
				conditions: []corev1.PersistentVolumeClaimConditionType{corev1.PersistentVolumeClaimControllerResizeError}},
			wantCalls: 1,
			want:      resizeState{capacity: "2Mi", pvCapacity: "2Mi", allocated: "2Mi"},
		},
		{
			name: "an expansion done but not recorded before a crash is finished",
			before: resizeState{request: "2Mi", capacity: "1Mi", pvCapacity: "2Mi", allocated: "2Mi", progress: corev1.PersistentVolumeClaimControllerResizeInProgress,
				conditions: []corev1.PersistentVolumeClaimConditionType{corev1.PersistentVolumeClaimResizing}},
			wantCalls: 1,
			want:      resizeState{capacity: "2Mi", pvCapacity: "2Mi", allocated: "2Mi"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			claim := boundClaim(tc.before)
			server, client := fakecsi.Start(t)
			handle := server.AddVolume(PVName(claim), map[string]string{topology.NodeKey: "node1"})
			pv := provisionedPV(claim, handle, "node1", corev1.VolumeBound, corev1.PersistentVolumeReclaimDelete)
			pv.Spec.Capacity = corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(tc.before.pvCapacity)}
			if tc.otherClaim {
				pv.Spec.ClaimRef.UID = types.UID("uid-of-an-earlier-claim")
			}
			if tc.fault != nil {
				server.Fail("ControllerExpandVolume", fakecsi.Fault{Err: tc.fault})
			}
			w := newWorld(t, nodeObject("node1", "b"), claim, pv)
			driverClient := client
			if tc.nodeStep {
				driverClient = nodeExpansionDriver{client}
			}
			n := w.startNode("node1", "b", server, driverClient, false)

			err := n.syncClaim(ns, "data")
			if (err != nil) != tc.wantErr {
				t.Fatalf("sync error = %v, want error %v", err, tc.wantErr)
			}
			if calls := server.Count("ControllerExpandVolume"); calls != tc.wantCalls {
				t.Fatalf("ControllerExpandVolume called %d times, want %d", calls, tc.wantCalls)
			}
			got := readResizeState(t, w)
			if !sameResizeState(got, tc.want) {
				t.Fatalf("after the sync:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// A sync of a claim whose expansion is recorded and finished changes
// nothing: no second expansion, no status write to wake the watchers.
func TestExpandIsIdempotent(t *testing.T) {
	claim := boundClaim(resizeState{request: "2Mi", capacity: "1Mi", pvCapacity: "1Mi"})
	server, client := fakecsi.Start(t)
	handle := server.AddVolume(PVName(claim), map[string]string{topology.NodeKey: "node1"})
	pv := provisionedPV(claim, handle, "node1", corev1.VolumeBound, corev1.PersistentVolumeReclaimDelete)
	pv.Spec.Capacity = corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Mi")}
	w := newWorld(t, nodeObject("node1", "b"), claim, pv)
	n := w.startNode("node1", "b", server, client, false)
	if err := n.syncClaim(ns, "data"); err != nil {
		t.Fatal(err)
	}
	version := w.claim(ns, "data").ResourceVersion
	for range 2 {
		if err := n.syncClaim(ns, "data"); err != nil {
			t.Fatal(err)
		}
	}
	if calls := server.Count("ControllerExpandVolume"); calls != 1 {
		t.Errorf("ControllerExpandVolume called %d times, want 1", calls)
	}
	if again := w.claim(ns, "data").ResourceVersion; again != version {
		t.Errorf("the claim was written again (resourceVersion %s -> %s)", version, again)
	}
}

// boundClaim is claim tenant/data bound to its PV, in state s.
func boundClaim(s resizeState) *corev1.PersistentVolumeClaim {
	claim := claimObject(ns, "data", "local", "node1")
	claim.Spec.VolumeName = PVName(claim)
	claim.Spec.Resources.Requests[corev1.ResourceStorage] = resource.MustParse(s.request)
	claim.Status = corev1.PersistentVolumeClaimStatus{
		Phase:    corev1.ClaimBound,
		Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(s.capacity)},
	}
	if s.allocated != "" {
		claim.Status.AllocatedResources = corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(s.allocated)}
	}
	if s.progress != "" {
		claim.Status.AllocatedResourceStatuses = map[corev1.ResourceName]corev1.ClaimResourceStatus{corev1.ResourceStorage: s.progress}
	}
	for _, conditionType := range s.conditions {
		claim.Status.Conditions = append(claim.Status.Conditions, corev1.PersistentVolumeClaimCondition{
			Type: conditionType, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()})
	}
	return claim
}

// readResizeState reads tenant/data and its PV back from the API.
func readResizeState(t *testing.T, w *world) resizeState {
	t.Helper()
	claim := w.claim(ns, "data")
	pv, err := w.Kube.CoreV1().PersistentVolumes().Get(context.Background(), claim.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s := resizeState{
		capacity:   quantityString(claim.Status.Capacity),
		pvCapacity: quantityString(pv.Spec.Capacity),
		allocated:  quantityString(claim.Status.AllocatedResources),
		progress:   claim.Status.AllocatedResourceStatuses[corev1.ResourceStorage],
	}
	for _, condition := range claim.Status.Conditions {
		s.conditions = append(s.conditions, condition.Type)
	}
	return s
}

func quantityString(resources corev1.ResourceList) string {
	if quantity, ok := resources[corev1.ResourceStorage]; ok {
		return quantity.String()
	}
	return ""
}

// sameResizeState compares what a sync writes; quantities by value.
func sameResizeState(got, want resizeState) bool {
	sameQuantity := func(a, b string) bool {
		if a == "" || b == "" {
			return a == b
		}
		qa, qb := resource.MustParse(a), resource.MustParse(b)
		return qa.Cmp(qb) == 0
	}
	if !sameQuantity(got.capacity, want.capacity) || !sameQuantity(got.pvCapacity, want.pvCapacity) ||
		!sameQuantity(got.allocated, want.allocated) || got.progress != want.progress || len(got.conditions) != len(want.conditions) {
		return false
	}
	for i := range got.conditions {
		if got.conditions[i] != want.conditions[i] {
			return false
		}
	}
	return true
}

// TestPopulatorSourcesAreLeftAlone (provision.go, kept here beside the other
// upstream-contract table): a claim whose dataSourceRef names a kind
// toposnap does not fill belongs to that kind's volume populator, as
// external-provisioner assumes: no CreateVolume and no ProvisioningFailed.
func TestPopulatorSourcesAreLeftAlone(t *testing.T) {
	cases := []struct {
		name        string
		source      *corev1.TypedObjectReference
		wantCreated bool
	}{
		{"a populator's kind is left to it", &corev1.TypedObjectReference{APIGroup: ptr.To("hello.example.com"), Kind: "Hello", Name: "h"}, false},
		{"a VolumeSnapshot of another API group is another kind", &corev1.TypedObjectReference{APIGroup: ptr.To("example.com"), Kind: "VolumeSnapshot", Name: "s"}, false},
		{"a claim without a source is provisioned", nil, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			claim := claimObject(ns, "data", "local", "node1")
			claim.Spec.DataSourceRef = tc.source
			w := newWorld(t, nodeObject("node1", "b"), classObject("local", "node", wffc), claim)
			server, client := fakecsi.Start(t)
			n := w.startNode("node1", "b", server, client, false)
			if err := n.syncClaim(ns, "data"); err != nil {
				t.Fatalf("sync: %v", err)
			}
			if created := server.Count("CreateVolume") > 0; created != tc.wantCreated {
				t.Fatalf("CreateVolume called = %v, want %v", created, tc.wantCreated)
			}
			recorder := n.ctrl.recorder.(*record.FakeRecorder)
			for len(recorder.Events) > 0 {
				if event := <-recorder.Events; strings.Contains(event, "ProvisioningFailed") {
					t.Fatalf("event %q on a claim left to its populator", event)
				}
			}
		})
	}
}
