package webhooke2e

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestMetricsCountDecisions(t *testing.T) {
	needEnv(t)
	// Set-up's probes have already been patched (StorageClass) and denied (claim).
	response, err := env.httpClient().Get("https://" + env.address + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if err != nil {
		t.Fatal(err)
	}
	if response.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", response.Status)
	}
	for _, want := range []string{
		`toposnap_webhook_requests_total{path="/mutate/storageclass",result="patched"}`,
		`toposnap_webhook_requests_total{path="/validate/pvc",result="denied"}`,
		`toposnap_webhook_request_duration_seconds_bucket{path="/validate/pvc"`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
