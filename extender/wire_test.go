package extender

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"

	"github.com/toposnap/toposnap/internal/topology"
)

func TestArgsDecodeAsEncodingJSONDoes(t *testing.T) {
	state, _, _ := wireCase()
	table := state.snapshot().nodes
	const pod = `{"metadata":{"name":"p","annotations":{"a":"} ] \\\" ,"}}}`
	tests := []struct {
		name string
		body string
		fast bool // read without encoding/json reading the names
	}{
		{"names", `{"Pod":` + pod + `,"NodeNames":["node1","ghost"]}`, true},
		{"lower-case key", `{"pod":` + pod + `,"nodenames":["node1"]}`, true},
		{"spaces everywhere", " {\n\"pod\" : " + pod + " ,\t\"nodeNames\" : [ \"node1\" ,\n\"node2\" ] } ", true},
		{"names before pod", `{"NodeNames":["node2"],"Pod":` + pod + `}`, true},
		{"empty names", `{"Pod":` + pod + `,"NodeNames":[]}`, true},
		{"null names", `{"Pod":` + pod + `,"NodeNames":null}`, true},
		{"no names", `{"Pod":` + pod + `}`, true},
		{"nodes instead", `{"Pod":` + pod + `,"Nodes":{"items":[{"metadata":{"name":"node1"}}]}}`, true},
		{"last names win", `{"Pod":` + pod + `,"NodeNames":["node1"],"nodenames":["node2"]}`, true},
		{"null after names", `{"Pod":` + pod + `,"NodeNames":["node1"],"nodenames":null}`, true},
		{"empty name", `{"Pod":` + pod + `,"NodeNames":[""]}`, true},
		{"escaped name", `{"Pod":` + pod + `,"NodeNames":["node\u0031"]}`, false},
		{"non-ASCII name", `{"Pod":` + pod + `,"NodeNames":["nœud"]}`, false},
		{"escaped key", `{"Pod":` + pod + `,"Node\u004eames":["node1"]}`, false},
		{"folded key", `{"Pod":` + pod + `,"NodeNameſ":["node1"]}`, false},
		{"number name", `{"Pod":` + pod + `,"NodeNames":[1]}`, false},
		{"invalid earlier names", `{"Pod":` + pod + `,"NodeNames":["a" "b"],"NodeNames":["node1"]}`, false},
		{"names not an array", `{"Pod":` + pod + `,"NodeNames":"node1"}`, false},
		{"trailing comma", `{"Pod":` + pod + `,"NodeNames":["node1"],}`, false},
		{"trailing garbage", `{"Pod":` + pod + `,"NodeNames":["node1"]} x`, false},
		{"not an object", `[]`, false},
		{"unterminated", `{"Pod":` + pod + `,"NodeNames":["node1"]`, false},
		{"bad pod", `{"Pod":{"metadata":{"name":}},"NodeNames":["node1"]}`, true},
		{"pod of the wrong type", `{"Pod":5,"NodeNames":["node1"]}`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, fast := readNames([]byte(tt.body), table, &nodeRefs{}); fast != tt.fast {
				t.Fatalf("read without encoding/json = %v, want %v", fast, tt.fast)
			}
			refs := parsesAsEncodingJSON(t, tt.body, table)
			for i, name := range refs.names {
				if at := refs.nodes[i]; (at.node != nil) != (state.Nodes[name] != nil) || at.node != nil && at.node.Name != name {
					t.Fatalf("name %q looked up as %+v", name, at)
				}
			}
		})
	}
}

// parsesAsEncodingJSON checks that parseArgs reads body as encoding/json
// reads it into ExtenderArgs, and returns the names it read.
func parsesAsEncodingJSON(t *testing.T, body string, table *nodeTable) nodeRefs {
	t.Helper()
	var want extenderv1.ExtenderArgs
	wantErr := json.Unmarshal([]byte(body), &want)
	var refs nodeRefs
	got, hasNames, err := parseArgs([]byte(body), table, &refs)
	if (err == nil) != (wantErr == nil) {
		t.Fatalf("error %v, encoding/json's %v", err, wantErr)
	}
	if err != nil {
		return refs
	}
	if hasNames != (want.NodeNames != nil) || hasNames && !slices.Equal(refs.names, *want.NodeNames) {
		t.Fatalf("names %q (%v), encoding/json's %v", refs.names, hasNames, want.NodeNames)
	}
	want.NodeNames = nil
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("args %+v, encoding/json's %+v", got, want)
	}
	return refs
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
