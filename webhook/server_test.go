package webhook

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
)

// reviewOf is the AdmissionReview the API server would send about object.
func reviewOf(t testing.TB, resource metav1.GroupVersionResource, operation admissionv1.Operation, object, old any) []byte {
	t.Helper()
	request := &admissionv1.AdmissionRequest{
		UID: types.UID("uid-1"), Resource: resource, Operation: operation, Namespace: namespace, Name: "x",
	}
	if object != nil {
		request.Object = runtime.RawExtension{Raw: mustJSON(t, object)}
	}
	if old != nil {
		request.OldObject = runtime.RawExtension{Raw: mustJSON(t, old)}
	}
	return mustJSON(t, admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request:  request,
	})
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// post sends body to path on server and returns the recorded answer.
func post(server http.Handler, path string, body io.Reader) *httptest.ResponseRecorder {
	request := httptest.NewRequest(http.MethodPost, path, body)
	request.Header.Set("Content-Type", "application/json")
	recorder := httptest.NewRecorder()
	server.ServeHTTP(recorder, request)
	return recorder
}

// answer decodes a 200 answer's AdmissionReview.
func answer(t *testing.T, recorder *httptest.ResponseRecorder) *admissionv1.AdmissionResponse {
	t.Helper()
	if recorder.Code != http.StatusOK {
		t.Fatalf("status %d: %s", recorder.Code, recorder.Body)
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(recorder.Body.Bytes(), &review); err != nil {
		t.Fatalf("decode answer %s: %v", recorder.Body, err)
	}
	if review.APIVersion != "admission.k8s.io/v1" || review.Kind != "AdmissionReview" || review.Response == nil {
		t.Fatalf("answer is not an AdmissionReview v1 with a response: %s", recorder.Body)
	}
	if review.Response.UID != "uid-1" {
		t.Fatalf("response uid %q, want the request's uid-1", review.Response.UID)
	}
	return review.Response
}

// testScheduler is the scheduler the test servers move pods to.
const testScheduler = "toposnap-scheduler"

func newTestServer(state State) *echo.Echo {
	return NewServer(state, prometheus.NewRegistry(), PodOptions{SchedulerName: testScheduler, VolumeResource: VolumeResource})
}

func TestServerRejectsMalformedRequests(t *testing.T) {
	wellFormed := func(object string) string {
		return `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"CREATE",` +
			`"resource":{"group":"storage.k8s.io","version":"v1","resource":"storageclasses"}` + object + `}}`
	}
	tests := []struct {
		name, path, body, wantMessage string
	}{
		{"empty body", PathValidateClaim, "", "empty body: expected a JSON admission.k8s.io/v1 AdmissionReview"},
		{"not JSON", PathValidateClaim, "{", "decode AdmissionReview"},
		{"JSON of the wrong type", PathValidateClaim, `[1,2]`, "decode AdmissionReview"},
		{"another apiVersion", PathValidateClaim, `{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}`,
			`expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got apiVersion "admission.k8s.io/v1beta1"`},
		{"field names are case-sensitive", PathValidateClaim, `{"APIVERSION":"admission.k8s.io/v1","kind":"AdmissionReview"}`, `got apiVersion ""`},
		{"no request", PathValidateClaim, `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, "AdmissionReview has no request"},
		{"no uid", PathValidateClaim, `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}`, "AdmissionReview request has no uid"},
		{"no object", PathMutateStorageClass, wellFormed(""), "request.object is missing: expected a StorageClass"},
		{"object of the wrong shape", PathMutateStorageClass, wellFormed(`,"object":{"provisioner":5}`), "decode request.object as StorageClass"},
		{"object is not an object", PathMutateStorageClass, wellFormed(`,"object":"class"`), "decode request.object as StorageClass"},
		{"pod of the wrong shape", PathMutatePod,
			`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"CREATE",` +
				`"resource":{"group":"","version":"v1","resource":"pods"},"object":{"spec":{"volumes":{}}}}}`,
			"decode request.object as Pod"},
		{"update without oldObject", PathValidateSnapshotClass,
			`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","operation":"UPDATE",` +
				`"resource":{"group":"snapshot.storage.k8s.io","version":"v1","resource":"volumesnapshotclasses"},"object":{"driver":"d"}}}`,
			"request.oldObject is missing: expected a VolumeSnapshotClass"},
	}
	server := newTestServer(claimState(t))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recorder := post(server, tt.path, strings.NewReader(tt.body))
			if recorder.Code != http.StatusBadRequest {
				t.Fatalf("status %d (%s), want 400", recorder.Code, recorder.Body)
			}
			if !strings.Contains(recorder.Body.String(), tt.wantMessage) {
				t.Errorf("message %q does not contain %q", recorder.Body, tt.wantMessage)
			}
		})
	}
}

func TestServerRefusesLargeBodies(t *testing.T) {
	server := newTestServer(claimState(t))
	large := bytes.Repeat([]byte(" "), int(maxBodyBytes)+1)
	t.Run("announced by Content-Length", func(t *testing.T) {
		recorder := post(server, PathValidateClaim, bytes.NewReader(large))
		if recorder.Code != http.StatusRequestEntityTooLarge || !strings.Contains(recorder.Body.String(), "exceeds the limit of 1048576 bytes") {
			t.Fatalf("status %d %q, want 413 naming the limit", recorder.Code, recorder.Body)
		}
	})
	t.Run("streamed without a length", func(t *testing.T) {
		request := httptest.NewRequest(http.MethodPost, PathValidateClaim, io.MultiReader(bytes.NewReader(large)))
		request.ContentLength = -1
		recorder := httptest.NewRecorder()
		server.ServeHTTP(recorder, request)
		if recorder.Code != http.StatusRequestEntityTooLarge {
			t.Fatalf("status %d %q, want 413", recorder.Code, recorder.Body)
		}
	})
}

func TestServerAnswersReviews(t *testing.T) {
	server := newTestServer(claimState(t))

	t.Run("StorageClass create is patched with a warning", func(t *testing.T) {
		response := answer(t, post(server, PathMutateStorageClass,
			bytes.NewReader(reviewOf(t, storageClassesResource, admissionv1.Create, storageClass("fast", DriverName), nil))))
		if !response.Allowed || response.PatchType == nil || *response.PatchType != admissionv1.PatchTypeJSONPatch {
			t.Fatalf("want an allowed JSONPatch, got %+v", response)
		}
		if string(response.Patch) != `[{"op":"add","path":"/volumeBindingMode","value":"WaitForFirstConsumer"}]` {
			t.Errorf("patch %s", response.Patch)
		}
		if len(response.Warnings) != 1 {
			t.Errorf("warnings %q, want one", response.Warnings)
		}
	})
	t.Run("bad restore is denied with its reason", func(t *testing.T) {
		response := answer(t, post(server, PathValidateClaim, bytes.NewReader(reviewOf(t, claimsResource, admissionv1.Create,
			restoring(claim("new", "toposnap", "1Gi"), snapv1.GroupName, "missing"), nil))))
		if response.Allowed || response.Result == nil || response.Result.Code != http.StatusForbidden ||
			!strings.Contains(response.Result.Message, "VolumeSnapshot app/missing not found") {
			t.Fatalf("want a 403 denial naming the snapshot, got %+v", response)
		}
	})
	t.Run("second default VolumeSnapshotClass is denied", func(t *testing.T) {
		state := newState(t, snapshotClass("first", DriverName, true))
		server := newTestServer(state)
		response := answer(t, post(server, PathValidateSnapshotClass, bytes.NewReader(reviewOf(t, snapshotClassesResource, admissionv1.Create,
			snapshotClass("second", DriverName, true), nil))))
		if response.Allowed || !strings.Contains(response.Result.Message, "VolumeSnapshotClass first is already the default") {
			t.Fatalf("want a denial naming first, got %+v", response)
		}
	})
	t.Run("a resource the route does not handle is admitted with a warning", func(t *testing.T) {
		pods := metav1.GroupVersionResource{Version: "v1", Resource: "pods"}
		response := answer(t, post(server, PathValidateClaim, bytes.NewReader(reviewOf(t, pods, admissionv1.Create, map[string]any{}, nil))))
		if !response.Allowed || len(response.Warnings) != 1 || !strings.Contains(response.Warnings[0], "check the webhook configuration") {
			t.Fatalf("want admitted with a configuration warning, got %+v", response)
		}
	})
	t.Run("state that cannot be read denies with a retry message", func(t *testing.T) {
		broken := newTestServer(brokenState{})
		response := answer(t, post(broken, PathValidateClaim, bytes.NewReader(reviewOf(t, claimsResource, admissionv1.Create,
			restoring(claim("new", "toposnap", "1Gi"), snapv1.GroupName, "ready"), nil))))
		if response.Allowed || !strings.Contains(response.Result.Message, "cannot check this request now (connection refused): retry") {
			t.Fatalf("want a retry denial, got %+v", response)
		}
	})
	t.Run("pod using a toposnap claim is moved to the configured scheduler and marked, with a warning", func(t *testing.T) {
		response := answer(t, post(server, PathMutatePod, bytes.NewReader(reviewOf(t, podsResource, admissionv1.Create,
			pod("web", claimVolume("data", "source")), nil))))
		if !response.Allowed || response.PatchType == nil || *response.PatchType != admissionv1.PatchTypeJSONPatch {
			t.Fatalf("want an allowed JSONPatch, got %+v", response)
		}
		if string(response.Patch) != `[{"op":"replace","path":"/spec/schedulerName","value":"toposnap-scheduler"},`+
			`{"op":"add","path":"/spec/containers/0/resources","value":{"limits":{"toposnap.io/volumes":"1"},"requests":{"toposnap.io/volumes":"1"}}}]` {
			t.Errorf("patch %s", response.Patch)
		}
		if len(response.Warnings) != 1 || !strings.Contains(response.Warnings[0], "spec.schedulerName set to toposnap-scheduler") {
			t.Errorf("warnings %q, want one naming the scheduler", response.Warnings)
		}
	})
	t.Run("pod is admitted unchanged when its claims cannot be read", func(t *testing.T) {
		broken := newTestServer(brokenState{})
		response := answer(t, post(broken, PathMutatePod, bytes.NewReader(reviewOf(t, podsResource, admissionv1.Create,
			pod("web", claimVolume("data", "source")), nil))))
		if !response.Allowed || len(response.Patch) > 0 || len(response.Warnings) != 1 ||
			!strings.Contains(response.Warnings[0], "pod app/web admitted unchanged: the toposnap webhook could not read its volumes (connection refused); "+
				"if they are toposnap's, set spec.schedulerName to toposnap-scheduler and add toposnap.io/volumes: 1 to a container's limits") {
			t.Fatalf("want admitted unpatched with a warning, got %+v", response)
		}
	})
	t.Run("pod route without a scheduler name admits every pod unchanged", func(t *testing.T) {
		off := NewServer(claimState(t), prometheus.NewRegistry(), PodOptions{})
		response := answer(t, post(off, PathMutatePod, bytes.NewReader(reviewOf(t, podsResource, admissionv1.Create,
			pod("web", claimVolume("data", "source")), nil))))
		if !response.Allowed || len(response.Patch) > 0 || len(response.Warnings) > 0 {
			t.Fatalf("want admitted untouched, got %+v", response)
		}
	})
	t.Run("metrics count requests by path and result", func(t *testing.T) {
		post(server, PathValidateClaim, strings.NewReader("{"))
		recorder := httptest.NewRecorder()
		server.ServeHTTP(recorder, httptest.NewRequest(http.MethodGet, PathMetrics, nil))
		for _, want := range []string{
			`toposnap_webhook_requests_total{path="/mutate/storageclass",result="patched"} 1`,
			`toposnap_webhook_requests_total{path="/validate/pvc",result="denied"} 1`,
			`toposnap_webhook_requests_total{path="/validate/pvc",result="bad_request"} 1`,
			`toposnap_webhook_requests_total{path="/mutate/pod",result="patched"} 1`,
			`toposnap_webhook_request_duration_seconds_count{path="/validate/pvc"}`,
		} {
			if !strings.Contains(recorder.Body.String(), want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})
}

func TestServerServesHealthAndRefusesOtherMethods(t *testing.T) {
	server := newTestServer(claimState(t))
	tests := []struct {
		method, path string
		wantCode     int
	}{
		{http.MethodGet, PathHealthz, http.StatusOK},
		{http.MethodGet, PathMetrics, http.StatusOK},
		{http.MethodGet, PathValidateClaim, http.StatusMethodNotAllowed},
		{http.MethodPost, "/validate/pod", http.StatusNotFound},
	}
	for _, tt := range tests {
		recorder := httptest.NewRecorder()
		server.ServeHTTP(recorder, httptest.NewRequest(tt.method, tt.path, nil))
		if recorder.Code != tt.wantCode {
			t.Errorf("%s %s: status %d, want %d", tt.method, tt.path, recorder.Code, tt.wantCode)
		}
	}
}
