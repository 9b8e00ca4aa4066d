package extender

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"

	"github.com/toposnap/toposnap/internal/topology"
)

func TestNodeNamesDecodeAsEncodingJSONDoes(t *testing.T) {
	tests := []struct {
		name  string
		input string
		plain bool // taken by the fast path
	}{
		{"names", `["node1","node2"]`, true},
		{"spaces everywhere", " [ \"a\" ,\n\t\"b\" ] ", true},
		{"empty", `[]`, true},
		{"empty with space", `[ ]`, true},
		{"empty name", `[""]`, true},
		{"escaped quote", `["a\"b"]`, false},
		{"unicode escape", `["\u00e9"]`, false},
		{"non-ASCII", `["nœud"]`, false},
		{"HTML character", `["a<b"]`, false},
		{"number", `[1]`, false},
		{"null element", `["a",null]`, false},
		{"trailing comma", `["a",]`, false},
		{"object", `{"a":"b"}`, false},
		{"unterminated", `["a"`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, plain := plainStrings([]byte(tt.input))
			if plain != tt.plain {
				t.Fatalf("fast path taken = %v, want %v", plain, tt.plain)
			}
			var got nodeNameList
			gotErr := got.UnmarshalJSON([]byte(tt.input))
			var want []string
			wantErr := json.Unmarshal([]byte(tt.input), &want)
			if (gotErr == nil) != (wantErr == nil) || !reflect.DeepEqual([]string(got), want) && len(got)+len(want) > 0 {
				t.Fatalf("got %q (%v), encoding/json %q (%v)", got, gotErr, want, wantErr)
			}
		})
	}
}

// wireCase is a state and a pod whose answers have every outcome: fits,
// topology mismatches, a capacity shortfall, an unknown node, a name that
// needs escaping.
func wireCase() (*MemState, *corev1.Pod, []string) {
	state := seed(class("topo-zone", driver, "zone", "cn-hangzhou-b"), claim("zone-pvc", "topo-zone", "5Gi"),
		class("topo-node", driver, "node"), claim("node-pvc", "topo-node", "8Gi"))
	state.Nodes["node3"] = node("node3", "cn-hangzhou-d")
	state.Nodes[`odd<"node>`] = node(`odd<"node>`, "cn-hangzhou-b")
	state.Capacity = append(state.Capacity,
		capacity("topo-node", map[string]string{topology.NodeKey: "node1"}, "4Gi"),
		capacity("topo-node", map[string]string{topology.NodeKey: "node2"}, "40Gi"))
	state.Index()
	return state, podWith("zone-pvc", "node-pvc"), []string{"node1", "node2", "node3", "ghost", `odd<"node>`}
}

func TestServerAnswersWhatEncodingJSONWould(t *testing.T) {
	state, pod, names := wireCase()
	handler := NewServer(func() State { return state }, driver).Handler()
	for _, tt := range []struct {
		verb string
		want any
		got  any
	}{
		{"filter", Filter(state, driver, pod, names), &extenderv1.ExtenderFilterResult{}},
		{"prioritize", Prioritize(state, driver, pod, names), &extenderv1.HostPriorityList{}},
	} {
		t.Run(tt.verb, func(t *testing.T) {
			body, err := json.Marshal(extenderv1.ExtenderArgs{Pod: pod, NodeNames: &names})
			if err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			handler.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/"+tt.verb, bytes.NewReader(body)))
			if rec.Code != http.StatusOK || !json.Valid(rec.Body.Bytes()) {
				t.Fatalf("%d %s", rec.Code, rec.Body.String())
			}
			if err := json.Unmarshal(rec.Body.Bytes(), tt.got); err != nil {
				t.Fatal(err)
			}
			if got := reflect.ValueOf(tt.got).Elem().Interface(); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("answer reads back as\n%+v\nencoding/json's answer is\n%+v", got, tt.want)
			}
		})
	}
	result := Filter(state, driver, pod, names)
	if len(*result.NodeNames) == 0 || len(result.FailedNodes) < 2 || len(result.FailedAndUnresolvableNodes) == 0 {
		t.Fatalf("case does not cover every outcome: %+v", result)
	}
}
