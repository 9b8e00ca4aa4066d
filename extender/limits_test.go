package extender

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/toposnap/toposnap/internal/inflight/inflighttest"
)

// The attack of issue 19: about 100 connections each send the largest
// body the extender accepts and stall before its end. Before the limits,
// every body was held whole (the 512Mi container limit was passed) and
// the connections stayed open for good.
const (
	attackers = 100
	// heapBound is what the attack may add to the heap: the bodies of
	// the requests in flight (maxInFlight of them), not one per connection.
	heapBound = 128 << 20
	// stalledCloseDeadline is the read timeout and a margin for a loaded
	// machine.
	stalledCloseDeadline = 25 * time.Second
)

func TestRunWithstandsStalledBodies(t *testing.T) {
	address := startRun(t, Options{Kubeconfig: unreachableKubeconfig(t), DriverName: driver, Resync: time.Minute})
	client := &http.Client{Timeout: 5 * time.Second}
	if code, body := get(t, client, "http://"+address+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d %q", code, body)
	}
	baseline := inflighttest.LiveHeap()
	attack := inflighttest.StallBodies(t, func() (net.Conn, error) { return net.Dial("tcp", address) }, "/filter", attackers, MaxBodyBytes-1024)
	attack.WaitWritten(t, 20*time.Second)
	if grown := inflighttest.PeakGrowth(baseline, heapBound, 3*time.Second); grown > heapBound {
		t.Fatalf("%d stalled bodies grew the heap by %d MiB, want at most %d MiB", attackers, grown>>20, heapBound>>20)
	}
	// The scheduler's call is answered within its httpTimeout (the
	// client's 5 s): served, or 503 at once, which it retries.
	response, err := client.Post("http://"+address+"/filter", "application/json",
		strings.NewReader(`{"pod":{"metadata":{"name":"p","namespace":"default"}},"nodenames":["node1"]}`))
	if err != nil {
		t.Fatalf("a scheduler's request during the attack: %v", err)
	}
	body, _ := io.ReadAll(response.Body)
	response.Body.Close()
	if response.StatusCode != http.StatusOK && response.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("a scheduler's request during the attack: %d %s, want an answer (200, or 503 to retry)", response.StatusCode, body)
	}
	if open := attack.StillOpen(stalledCloseDeadline); open > 0 {
		t.Fatalf("%d of %d stalled connections still open after %s", open, attackers, stalledCloseDeadline)
	}
	// Once they are gone, requests are served again.
	if code, body := get(t, client, "http://"+address+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz after the attack = %d %q", code, body)
	}
}
