package extender

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	extenderv1 "k8s.io/kube-scheduler/extender/v1"
)

func TestServerRejectsBadRequests(t *testing.T) {
	handler := NewServer(func() State { return seed() }, driver).Handler()
	tests := []struct {
		name     string
		body     string
		want     int
		mentions string
	}{
		{"malformed JSON", "{", http.StatusBadRequest, "not ExtenderArgs JSON"},
		{"no pod", `{"nodenames":["node1"]}`, http.StatusBadRequest, "no pod"},
		{"no node names", `{"pod":{"metadata":{"name":"p"}}}`, http.StatusBadRequest, "nodeCacheCapable"},
		{"oversized", `{"pod":{},"nodenames":["` + strings.Repeat("n", MaxBodyBytes) + `"]}`, http.StatusRequestEntityTooLarge, "exceeds"},
	}
	for _, path := range []string{"/filter", "/prioritize"} {
		for _, tt := range tests {
			t.Run(path+" "+tt.name, func(t *testing.T) {
				rec := httptest.NewRecorder()
				handler.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, strings.NewReader(tt.body)))
				if rec.Code != tt.want || !strings.Contains(rec.Body.String(), tt.mentions) {
					t.Fatalf("%d %s, want %d mentioning %q", rec.Code, rec.Body.String(), tt.want, tt.mentions)
				}
			})
		}
	}
}

func TestServerFilterAnswers200WithNodeNames(t *testing.T) {
	handler := NewServer(func() State { return seed() }, driver).Handler()
	names := []string{"node1", "node2"}
	body, _ := json.Marshal(extenderv1.ExtenderArgs{Pod: podWith("ghost"), NodeNames: &names})
	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/filter", bytes.NewReader(body)))
	var result extenderv1.ExtenderFilterResult
	if err := json.Unmarshal(rec.Body.Bytes(), &result); err != nil || rec.Code != http.StatusOK {
		t.Fatalf("%d %s: %v", rec.Code, rec.Body.String(), err)
	}
	if result.NodeNames == nil || len(*result.NodeNames) != 0 || len(result.FailedAndUnresolvableNodes) != 2 || result.Error != "" {
		t.Fatalf("no-fit answer = %+v, want empty non-nil NodeNames and reasons for both", result)
	}
}

func TestServerCountsDecisionsByReason(t *testing.T) {
	state, pod, names := wireCase()
	handler := NewServer(func() State { return state }, driver).Handler()
	body, _ := json.Marshal(extenderv1.ExtenderArgs{Pod: pod, NodeNames: &names})
	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/filter", bytes.NewReader(body)))
	if rec.Code != http.StatusOK {
		t.Fatalf("%d %s", rec.Code, rec.Body.String())
	}
	rec = httptest.NewRecorder()
	handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, want := range []string{
		`toposnap_extender_node_decisions_total{outcome="fit",reason="none"} 2`,
		`toposnap_extender_node_decisions_total{outcome="short",reason="capacity"} 1`,
		`toposnap_extender_node_decisions_total{outcome="short",reason="unknown-node"} 1`,
		`toposnap_extender_node_decisions_total{outcome="unresolvable",reason="allowed-topologies"} 1`,
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %s:\n%s", want, rec.Body.String())
		}
	}
}
