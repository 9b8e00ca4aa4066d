package webhook

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	kjson "sigs.k8s.io/json"
)

// The fuzz targets post arbitrary bodies to each route of a server over
// claimState. Whatever the body, the answer must be an AdmissionReview
// (200) for the request, or a 400/413 saying what was wrong: never a
// panic, a 500, or an answer the API server cannot use. `go test` runs
// them on the seeds in testdata/fuzz; `go test -fuzz FuzzValidateClaim`
// explores further.

func FuzzMutateStorageClass(f *testing.F)    { fuzzRoute(f, PathMutateStorageClass) }
func FuzzValidateClaim(f *testing.F)         { fuzzRoute(f, PathValidateClaim) }
func FuzzValidateSnapshotClass(f *testing.F) { fuzzRoute(f, PathValidateSnapshotClass) }
func FuzzMutatePod(f *testing.F)             { fuzzRoute(f, PathMutatePod) }

func fuzzRoute(f *testing.F, path string) {
	server := newTestServer(claimState(f))
	f.Fuzz(func(t *testing.T, body []byte) {
		recorder := post(server, path, bytes.NewReader(body))
		switch recorder.Code {
		case http.StatusOK:
			checkAnswer(t, body, recorder.Body.Bytes())
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			if recorder.Body.Len() < 2 {
				t.Fatalf("status %d without a message", recorder.Code)
			}
		default:
			t.Fatalf("status %d: %s", recorder.Code, recorder.Body)
		}
	})
}

// checkAnswer checks that answer is a usable AdmissionReview for request.
func checkAnswer(t *testing.T, request, answer []byte) {
	var sent, got admissionv1.AdmissionReview
	if err := kjson.UnmarshalCaseSensitivePreserveInts(request, &sent); err != nil || sent.Request == nil {
		t.Fatalf("answered 200 to a request that does not decode: %v", err)
	}
	if err := json.Unmarshal(answer, &got); err != nil {
		t.Fatalf("answer does not decode: %v: %s", err, answer)
	}
	response := got.Response
	if response == nil || response.UID != sent.Request.UID {
		t.Fatalf("answer does not respond to request %q: %s", sent.Request.UID, answer)
	}
	if !response.Allowed && (response.Result == nil || response.Result.Message == "") {
		t.Fatalf("denial without a message: %s", answer)
	}
	if len(response.Patch) > 0 {
		if response.PatchType == nil || *response.PatchType != admissionv1.PatchTypeJSONPatch {
			t.Fatalf("patch without patchType JSONPatch: %s", answer)
		}
		patch, err := jsonpatch.DecodePatch(response.Patch)
		if err != nil {
			t.Fatalf("invalid JSONPatch %s: %v", response.Patch, err)
		}
		if _, err := patch.Apply(sent.Request.Object.Raw); err != nil {
			t.Fatalf("JSONPatch %s does not apply to the object: %v", response.Patch, err)
		}
	}
}

var writeSeeds = flag.Bool("write-seeds", false, "rewrite the fuzz seed corpus in testdata/fuzz")

// TestFuzzSeeds keeps the committed seed corpus in step with fuzzSeeds:
// run with -write-seeds after changing them.
func TestFuzzSeeds(t *testing.T) {
	for target, seeds := range fuzzSeeds(t) {
		for name, body := range seeds {
			path := filepath.Join("testdata", "fuzz", target, name)
			content := []byte("go test fuzz v1\n[]byte(" + strconv.Quote(string(body)) + ")\n")
			if *writeSeeds {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, content, 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			committed, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(committed, content) {
				t.Errorf("seed %s is missing or stale (%v): run go test ./webhook -run TestFuzzSeeds -write-seeds", path, err)
			}
		}
	}
}

// fuzzSeeds are the seed bodies per fuzz target, by file name.
func fuzzSeeds(t *testing.T) map[string]map[string][]byte {
	malformed := map[string][]byte{
		"empty":           {},
		"truncated":       []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":`),
		"v1beta1":         []byte(`{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}`),
		"no-request":      []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`),
		"object-a-string": []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"CREATE","object":"x"}}`),
	}
	seeds := func(valid map[string][]byte) map[string][]byte {
		for name, body := range malformed {
			valid[name] = body
		}
		return valid
	}
	pods := metav1.GroupVersionResource{Version: "v1", Resource: "pods"}
	ownScheduler := pod("web", claimVolume("data", "source"))
	ownScheduler.Spec.SchedulerName = "gpu-scheduler"
	withRef := claim("new", "toposnap", "2Gi")
	withRef.Spec.DataSourceRef = &corev1.TypedObjectReference{APIGroup: ptr.To(snapv1.GroupName), Kind: "VolumeSnapshot", Name: "ready", Namespace: ptr.To("other")}
	return map[string]map[string][]byte{
		"FuzzMutateStorageClass": seeds(map[string][]byte{
			"create-toposnap":     reviewOf(t, storageClassesResource, admissionv1.Create, storageClass("fast", DriverName), nil),
			"create-unreachable":  reviewOf(t, storageClassesResource, admissionv1.Create, storageClass("demo", NoProvisioner, zoneD), nil),
			"create-other-driver": reviewOf(t, storageClassesResource, admissionv1.Create, storageClass("ebs", otherCSI), nil),
			"update":              reviewOf(t, storageClassesResource, admissionv1.Update, storageClass("fast", DriverName), storageClass("fast", DriverName)),
			"misrouted-pod":       reviewOf(t, pods, admissionv1.Create, map[string]any{"kind": "Pod"}, nil),
		}),
		"FuzzValidateClaim": seeds(map[string][]byte{
			"restore-ready":               reviewOf(t, claimsResource, admissionv1.Create, restoring(claim("new", "toposnap", "2Gi"), snapv1.GroupName, "ready"), nil),
			"restore-too-small":           reviewOf(t, claimsResource, admissionv1.Create, restoring(claim("new", "toposnap-d", "1Gi"), snapv1.GroupName, "ready"), nil),
			"restore-wrong-group":         reviewOf(t, claimsResource, admissionv1.Create, restoring(claim("new", "toposnap", "2Gi"), "storage.k8s.io", "ready"), nil),
			"restore-ref-other-namespace": reviewOf(t, claimsResource, admissionv1.Create, withRef, nil),
			"clone-too-small":             reviewOf(t, claimsResource, admissionv1.Create, cloning(claim("new", "toposnap", "1Gi"), "source"), nil),
			"no-class":                    reviewOf(t, claimsResource, admissionv1.Create, restoring(claim("new", "", "1Gi"), snapv1.GroupName, "ready"), nil),
		}),
		"FuzzMutatePod": seeds(map[string][]byte{
			"create-toposnap-claim":  reviewOf(t, podsResource, admissionv1.Create, pod("web", claimVolume("data", "source")), nil),
			"create-ephemeral":       reviewOf(t, podsResource, admissionv1.Create, pod("web", ephemeralVolume("cache", nil)), nil),
			"create-other-driver":    reviewOf(t, podsResource, admissionv1.Create, pod("web", claimVolume("data", "foreign-source")), nil),
			"create-missing-claim":   reviewOf(t, podsResource, admissionv1.Create, pod("web", claimVolume("data", "missing")), nil),
			"create-own-scheduler":   reviewOf(t, podsResource, admissionv1.Create, ownScheduler, nil),
			"update":                 reviewOf(t, podsResource, admissionv1.Update, pod("web", claimVolume("data", "source")), pod("web")),
			"misrouted-storageclass": reviewOf(t, storageClassesResource, admissionv1.Create, storageClass("fast", DriverName), nil),
		}),
		"FuzzValidateSnapshotClass": seeds(map[string][]byte{
			"create-default":     reviewOf(t, snapshotClassesResource, admissionv1.Create, snapshotClass("fast", DriverName, true), nil),
			"update-to-default":  reviewOf(t, snapshotClassesResource, admissionv1.Update, snapshotClass("fast", DriverName, true), snapshotClass("fast", DriverName, false)),
			"create-not-default": reviewOf(t, snapshotClassesResource, admissionv1.Create, snapshotClass("slow", DriverName, false), nil),
			"delete":             reviewOf(t, snapshotClassesResource, admissionv1.Delete, nil, snapshotClass("slow", DriverName, false)),
		}),
	}
}
