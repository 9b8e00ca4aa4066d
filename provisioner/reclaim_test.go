package provisioner

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/record"

	"github.com/toposnap/toposnap/internal/fakecsi"
	"github.com/toposnap/toposnap/internal/topology"
)

// TestReclaimConfirmsLive: a Released Delete-policy PV deletes its volume
// only when live reads say it is that volume's own PV, released for good.
// A node token can create a PV naming any handle, and a cache can lag: a
// forged PV, a re-pointed claimRef, a volume another PV still names, a
// claim that still exists and a PV bound again since the cache saw it all
// keep the volume (with a VolumeDeleteRefused event where it is a refusal).
// A PV a populator re-pointed at the user's claim is reclaimed (TestReclaim
// and the populated row of TestReclaimRefusal).
func TestReclaimConfirmsLive(t *testing.T) {
	victim := claimObject(ns, "data", "local", "node1")
	cases := []struct {
		name string
		// world returns the objects beside the victim's volume (its handle).
		world func(handle string) []runtimeObject
		// after the node's caches are filled, before the sync.
		live func(t *testing.T, w *world)
		// the PV synced.
		pv string
		// refusal is a substring of the event; "" for no event.
		refusal string
	}{
		{
			name: "a forged PV of another name around the victim's handle",
			world: func(handle string) []runtimeObject {
				forged := provisionedPV(claimObject(ns, "evil", "local", "node1"), handle, "node1", corev1.VolumeReleased, corev1.PersistentVolumeReclaimDelete)
				return []runtimeObject{forged}
			},
			pv: "pvc-uid-tenant-evil", refusal: "was not created for PV pvc-uid-tenant-evil",
		},
		{
			name: "an operator's re-import names the same volume",
			world: func(handle string) []runtimeObject {
				pv := provisionedPV(victim, handle, "node1", corev1.VolumeReleased, corev1.PersistentVolumeReclaimDelete)
				reimport := provisionedPV(claimObject(ns, "again", "local", "node1"), handle, "node1", corev1.VolumeBound, corev1.PersistentVolumeReclaimRetain)
				reimport.Name = "reimported"
				return []runtimeObject{pv, reimport}
			},
			pv: PVName(victim), refusal: "PV reimported also names the volume",
		},
		{
			name: "its claim of the same uid still exists",
			world: func(handle string) []runtimeObject {
				pv := provisionedPV(victim, handle, "node1", corev1.VolumeReleased, corev1.PersistentVolumeReclaimDelete)
				return []runtimeObject{pv, victim.DeepCopy()}
			},
			pv: PVName(victim), refusal: "of uid uid-tenant-data still exists",
		},
		{
			name: "bound again since the cache saw it Released",
			world: func(handle string) []runtimeObject {
				return []runtimeObject{provisionedPV(victim, handle, "node1", corev1.VolumeReleased, corev1.PersistentVolumeReclaimDelete)}
			},
			live: func(t *testing.T, w *world) {
				pv, err := w.Kube.CoreV1().PersistentVolumes().Get(context.Background(), PVName(victim), metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				pv.Status.Phase = corev1.VolumeBound
				if _, err := w.Kube.CoreV1().PersistentVolumes().UpdateStatus(context.Background(), pv, metav1.UpdateOptions{}); err != nil {
					t.Fatal(err)
				}
			},
			pv: PVName(victim),
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			server, client := fakecsi.Start(t)
			handle := server.AddVolume(PVName(victim), map[string]string{topology.NodeKey: "node1"})
			w := newWorld(t, append([]runtimeObject{nodeObject("node1", "b")}, tc.world(handle)...)...)
			n := w.startNode("node1", "b", server, client, false)
			if tc.live != nil {
				tc.live(t, w)
			}
			if err := n.ctrl.syncVolume(context.Background(), tc.pv); err != nil {
				t.Fatal(err)
			}
			if ids := server.VolumeIDs(); len(ids) != 1 {
				t.Fatalf("volume deleted (calls %v)", server.Calls())
			}
			events := drain(n.ctrl.recorder.(*record.FakeRecorder))
			switch {
			case tc.refusal == "" && len(events) > 0:
				t.Fatalf("events %q, want none", events)
			case tc.refusal != "" && (len(events) != 1 || !strings.Contains(events[0], "VolumeDeleteRefused") || !strings.Contains(events[0], tc.refusal)):
				t.Fatalf("events %q, want one VolumeDeleteRefused saying %q", events, tc.refusal)
			}
		})
	}
}

func drain(recorder *record.FakeRecorder) []string {
	var events []string
	for len(recorder.Events) > 0 {
		events = append(events, <-recorder.Events)
	}
	return events
}

func TestReclaimRefusal(t *testing.T) {
	claim := claimObject(ns, "data", "local", "node1")
	handle := fakecsi.VolumeID(PVName(claim))
	pv := provisionedPV(claim, handle, "node1", corev1.VolumeReleased, corev1.PersistentVolumeReclaimDelete)
	noRef := pv.DeepCopy()
	noRef.Spec.ClaimRef = nil
	gone := claim.DeepCopy()
	gone.UID = "uid-recreated"
	repointed := pv.DeepCopy()
	repointed.Spec.ClaimRef = &corev1.ObjectReference{Namespace: ns, Name: "user", UID: "uid-user"}
	forged := provisionedPV(claimObject(ns, "forger", "local", "node1"), handle, "node1", corev1.VolumeReleased, corev1.PersistentVolumeReclaimDelete)
	for _, tc := range []struct {
		name    string
		pv      *corev1.PersistentVolume
		claim   *corev1.PersistentVolumeClaim
		sharing []string
		want    string
	}{
		{"its own PV, claim gone", pv, nil, nil, ""},
		{"its own PV, claim re-created under the same name", pv, gone, nil, ""},
		{"no claim reference", noRef, nil, nil, "names no claim uid"},
		{"claim still there", pv, claim, nil, "still exists"},
		{"shared", pv, nil, []string{"a", "b"}, "PV a, b also names"},
		{"populated: re-pointed at the user's claim, now gone", repointed, nil, nil, ""},
		{"forged around the volume under another name", forged, nil, nil, "was not created for PV pvc-uid-tenant-forger"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := reclaimRefusal(tc.pv, tc.claim, tc.sharing)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Fatalf("reclaimRefusal = %q, want %q", got, tc.want)
			}
		})
	}
}

func BenchmarkReclaimRefusal(b *testing.B) {
	claim := claimObject(ns, "data", "local", "node1")
	pv := provisionedPV(claim, fakecsi.VolumeID(PVName(claim)), "node1", corev1.VolumeReleased, corev1.PersistentVolumeReclaimDelete)
	for b.Loop() {
		if reclaimRefusal(pv, nil, nil) != "" {
			b.Fatal("refused its own PV")
		}
	}
}
