package extender

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzServer feeds arbitrary bodies to both verbs: every answer is a
// well-formed status (200, 400 or 413), never a panic or a 5xx.
func FuzzServer(f *testing.F) {
	f.Add("/filter", `{"pod":{"metadata":{"name":"app","namespace":"default"},"spec":{"volumes":[{"name":"d","persistentVolumeClaim":{"claimName":"disk-pvc"}}]}},"nodenames":["node1","node2"]}`)
	f.Add("/prioritize", `{"pod":{"metadata":{"name":"app"}},"nodenames":["node1"]}`)
	f.Add("/filter", `{"pod":{"spec":{"volumes":[{"name":"e","ephemeral":{}}]}},"nodes":{"items":[{"metadata":{"name":"node1"}}]}}`)
	f.Add("/filter", `{"pod":null,"nodenames":null}`)
	f.Add("/prioritize", `[]`)
	state := seed(class("topo-node", driver, "node"), claim("disk-pvc", "topo-node", "1Gi"), restoreOf("disk-snapshot"))
	handler := NewServer(func() State { return state }, driver).Handler()
	f.Fuzz(func(t *testing.T, path, body string) {
		if path != "/filter" && path != "/prioritize" {
			path = "/filter"
		}
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, strings.NewReader(body)))
		switch rec.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("%s answered %d: %s", path, rec.Code, rec.Body.String())
		}
	})
}
