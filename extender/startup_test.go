package extender

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"

	"github.com/toposnap/toposnap/internal/topology"
)

// restoreCase is a restore of a snapshot that lives on node2, in state.
func restoreCase(tune func(*MemState)) *MemState {
	snap, content := snapshotOn("node2")
	state := seed(class("topo-node", driver, "node"), restoreOf("disk-snapshot"), snap, content, claim("plain", "topo-node", "1Gi"))
	tune(state)
	return state
}

func TestFilterWhileTheExtenderDoesNotKnowEnough(t *testing.T) {
	const snapshotsUnknown = "cannot ask the API server whether it serves snapshot.storage.k8s.io/v1: connection refused"
	tests := []struct {
		name    string
		tune    func(*MemState)
		pod     *corev1.Pod
		wantFit []string
		// wantError, when set, is a part of the answer's Error: the
		// scheduler tries the pod again rather than placing it.
		wantError string
	}{
		{"restore while it is unknown whether snapshots are served waits",
			func(s *MemState) { s.SnapshotsUnknown = snapshotsUnknown }, podWith("restore"),
			nil, "does not know yet where snapshots live (" + snapshotsUnknown + ")"},
		{"plain claim while snapshots are unknown is placed",
			func(s *MemState) { s.SnapshotsUnknown = snapshotsUnknown }, podWith("plain"),
			[]string{"node1", "node2"}, ""},
		{"restore where the API server serves no snapshot API goes anywhere",
			func(s *MemState) { s.NoSnapshotAPI = true }, podWith("restore"),
			[]string{"node1", "node2"}, ""},
		{"restore once snapshots are known goes where its snapshot lives",
			func(*MemState) {}, podWith("restore"),
			[]string{"node2"}, ""},
		{"any pod while the caches fill waits",
			func(s *MemState) { s.Loading = "waiting for the caches" }, podWith("plain"),
			nil, "toposnap extender is starting: waiting for the caches"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Filter(restoreCase(tt.tune), driver, tt.pod, []string{"node1", "node2"})
			if tt.wantError != "" {
				if !strings.Contains(got.Error, tt.wantError) || got.NodeNames == nil || len(*got.NodeNames) != 0 {
					t.Fatalf("answer %+v, want no node and an error saying %q", got, tt.wantError)
				}
				return
			}
			if got.Error != "" || strings.Join(*got.NodeNames, ",") != strings.Join(tt.wantFit, ",") {
				t.Fatalf("answer %+v, want nodes %v", got, tt.wantFit)
			}
		})
	}
}

func TestReadyzSaysWhatTheExtenderWaitsFor(t *testing.T) {
	tests := []struct {
		name     string
		tune     func(*MemState)
		want     int
		mentions string
	}{
		{"caches filling", func(s *MemState) { s.Loading = "waiting for the caches" }, http.StatusServiceUnavailable, "waiting for the caches"},
		{"snapshot API unknown", func(s *MemState) { s.SnapshotsUnknown = "connection refused" }, http.StatusServiceUnavailable, "restores wait: connection refused"},
		{"no snapshot API", func(s *MemState) { s.NoSnapshotAPI = true }, http.StatusOK, "ok"},
		{"everything known", func(*MemState) {}, http.StatusOK, "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state := restoreCase(tt.tune)
			handler := NewServer(func() State { return state }, driver).Handler()
			rec := httptest.NewRecorder()
			handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
			if rec.Code != tt.want || !strings.Contains(rec.Body.String(), tt.mentions) {
				t.Fatalf("/readyz = %d %q, want %d mentioning %q", rec.Code, rec.Body.String(), tt.want, tt.mentions)
			}
			rec = httptest.NewRecorder()
			handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
			if rec.Code != http.StatusOK {
				t.Fatalf("/healthz = %d while %s: liveness must not fail for what readiness waits for", rec.Code, tt.name)
			}
		})
	}
}

func TestAPanicInAPrioritizeWorkerIsAnErrorAnswer(t *testing.T) {
	// Enough nodes and cores that the request is shared out to workers.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	state, names := workerState(2 * parallelFrom)
	defer func(original func(string, []podClaim, []tableNode, []scoreParts) int64) { scoreChunk = original }(scoreChunk)
	scoreChunk = func(string, []podClaim, []tableNode, []scoreParts) int64 { panic("index out of range in a worker") }

	server := NewServer(func() State { return state }, driver)
	handler := server.Handler()
	body, _ := json.Marshal(extenderv1.ExtenderArgs{Pod: podWith("node-pvc"), NodeNames: &names})
	for attempt := range 2 {
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/prioritize", bytes.NewReader(body)))
		if rec.Code != http.StatusInternalServerError || !strings.Contains(rec.Body.String(), "index out of range in a worker") {
			t.Fatalf("request %d with a panicking worker = %d %q, want 500 naming the panic", attempt, rec.Code, rec.Body.String())
		}
	}
	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if want := `toposnap_extender_panics_total{verb="prioritize"} 2`; !strings.Contains(rec.Body.String(), want) {
		t.Fatalf("metrics lack %s", want)
	}

	// The same request answers again once nothing panics: nothing was left
	// broken by the panics (pooled buffers, workers).
	scoreChunk = scoreNodes
	rec = httptest.NewRecorder()
	handler.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/prioritize", bytes.NewReader(body)))
	var scores extenderv1.HostPriorityList
	if err := json.Unmarshal(rec.Body.Bytes(), &scores); rec.Code != http.StatusOK || err != nil || len(scores) != len(names) {
		t.Fatalf("after the panics: %d, %d scores (%v), want 200 with %d", rec.Code, len(scores), err, len(names))
	}
}

func TestAPanicInFilterIsAnErrorAnswer(t *testing.T) {
	// A State whose lookups panic stands for any bug on the request's own
	// goroutine.
	state := panickingState{restoreCase(func(*MemState) {})}
	handler := NewServer(func() State { return state }, driver).Handler()
	names := []string{"node1", "node2"}
	body, _ := json.Marshal(extenderv1.ExtenderArgs{Pod: podWith("plain"), NodeNames: &names})
	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/filter", bytes.NewReader(body)))
	if rec.Code != http.StatusInternalServerError || !strings.Contains(rec.Body.String(), "claim lookup") {
		t.Fatalf("/filter with a panicking lookup = %d %q, want 500 naming the panic", rec.Code, rec.Body.String())
	}
	rec = httptest.NewRecorder()
	handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if want := `toposnap_extender_panics_total{verb="filter"} 1`; !strings.Contains(rec.Body.String(), want) {
		t.Fatalf("metrics lack %s", want)
	}
}

type panickingState struct{ *MemState }

func (panickingState) Claim(string, string) (*corev1.PersistentVolumeClaim, bool) {
	panic("claim lookup")
}

// workerState is n nodes, each with capacity for a node-scope claim.
func workerState(n int) (*MemState, []string) {
	state := seed(class("topo-node", driver, "node"), claim("node-pvc", "topo-node", "5Gi"))
	names := make([]string, 0, n)
	for i := range n {
		name := fmt.Sprintf("worker%05d", i)
		state.Nodes[name] = node(name, "cn-hangzhou-b")
		state.Capacity = append(state.Capacity, capacity("topo-node", map[string]string{topology.NodeKey: name}, "100Gi"))
		names = append(names, name)
	}
	state.Index()
	return state, names
}
