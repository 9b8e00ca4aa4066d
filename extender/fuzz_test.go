package extender

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	extenderv1 "k8s.io/kube-scheduler/extender/v1"
)

// FuzzServer feeds arbitrary bodies to both verbs: every answer is a
// well-formed status (200, 400 or 413), never a panic or a 5xx, and a 200
// reads back, through encoding/json, as what Filter or Prioritize answer
// for the request as encoding/json decodes it.
func FuzzServer(f *testing.F) {
	f.Add("/filter", `{"pod":{"metadata":{"name":"app","namespace":"default"},"spec":{"volumes":[{"name":"d","persistentVolumeClaim":{"claimName":"disk-pvc"}}]}},"nodenames":["node1","node2"]}`)
	f.Add("/prioritize", `{"pod":{"metadata":{"name":"app"}},"nodenames":["node1"]}`)
	f.Add("/filter", `{"pod":{"spec":{"volumes":[{"name":"e","ephemeral":{}}]}},"nodes":{"items":[{"metadata":{"name":"node1"}}]}}`)
	f.Add("/filter", `{"pod":null,"nodenames":null}`)
	f.Add("/prioritize", `[]`)
	f.Add("/filter", `{"pod":{"metadata":{"name":"app","namespace":"default"},"spec":{"volumes":[{"name":"z","persistentVolumeClaim":{"claimName":"zone-pvc"}},{"name":"n","persistentVolumeClaim":{"claimName":"node-pvc"}}]}},"nodenames":["node1","node2","node3","ghost","odd<\"node>","\u00e9"]}`)
	f.Add("/prioritize", `{"Pod":{"metadata":{"name":"app","namespace":"default"},"spec":{"volumes":[{"name":"n","persistentVolumeClaim":{"claimName":"node-pvc"}}]}},"NodeNames":[ "node1" , "node2" ]}`)
	state, _, _ := wireCase()
	handler := NewServer(func() State { return state }, driver).Handler()
	f.Fuzz(func(t *testing.T, path, body string) {
		if path != "/filter" && path != "/prioritize" {
			path = "/filter"
		}
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, strings.NewReader(body)))
		switch rec.Code {
		case http.StatusOK:
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			return
		default:
			t.Fatalf("%s answered %d: %s", path, rec.Code, rec.Body.String())
		}
		var args extenderv1.ExtenderArgs
		if err := json.Unmarshal([]byte(body), &args); err != nil {
			t.Fatalf("answered 200 to what encoding/json refuses (%v): %s", err, body)
		}
		names := []string{}
		if args.NodeNames != nil {
			names = *args.NodeNames
		} else {
			for _, n := range args.Nodes.Items {
				names = append(names, n.Name)
			}
		}
		var want, got any = Prioritize(state, driver, args.Pod, names), &extenderv1.HostPriorityList{}
		if path == "/filter" {
			want, got = Filter(state, driver, args.Pod, names), &extenderv1.ExtenderFilterResult{}
		}
		if err := json.Unmarshal(rec.Body.Bytes(), got); err != nil {
			t.Fatalf("answer is not JSON (%v): %s", err, rec.Body.String())
		}
		if got := reflect.ValueOf(got).Elem().Interface(); !reflect.DeepEqual(got, want) {
			t.Fatalf("answer reads back as\n%+v\nencoding/json's answer is\n%+v", got, want)
		}
	})
}

// FuzzParseArgs holds the server's own reading of ExtenderArgs to
// encoding/json's: same acceptance, same names, same pod and nodes.
func FuzzParseArgs(f *testing.F) {
	for _, body := range []string{
		`{"Pod":{"metadata":{"name":"p"}},"NodeNames":["node1","ghost"]}`,
		`{"NodeNames":["node2"],"pod":{"metadata":{"annotations":{"a":"} ] \\\" ,"}}}}`,
		`{"Pod":{},"NodeNames":["node1"],"nodenames":null}`,
		`{"Pod":{},"NodeNames":["a" "b"],"NodeNames":["node1"]}`,
		`{"Pod":{},"Node\u004eames":["node\u0031"],"NodeNameſ":[]}`,
		`{"Pod":{},"Nodes":{"items":[{"metadata":{"name":"node1"}}]},"NodeNames":[]}`,
		` { "pod" : null , "nodenames" : [ "" ] } `,
	} {
		f.Add(body)
	}
	state, _, _ := wireCase()
	table := state.snapshot().nodes
	f.Fuzz(func(t *testing.T, body string) { parsesAsEncodingJSON(t, body, table) })
}
