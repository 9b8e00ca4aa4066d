package webhook

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/toposnap/toposnap/internal/certs"
	"github.com/toposnap/toposnap/internal/certs/certstest"
	"github.com/toposnap/toposnap/internal/inflight/inflighttest"
)

// The attack of issue 19 on the webhook: about 100 connections each send
// the largest AdmissionReview the webhook reads and stall before its end.
const (
	attackers = 100
	// heapBound is what the attack may add to the heap: the bodies of the
	// requests in flight (maxInFlight of them), not one per connection.
	heapBound = 64 << 20
	// stalledCloseDeadline is the read timeout and a margin for a loaded
	// machine.
	stalledCloseDeadline = 25 * time.Second
)

func TestServeWithstandsStalledBodies(t *testing.T) {
	pair := certstest.NewPair(t, "serving")
	files := certstest.NewFiles(t)
	files.WriteInPlace(t, pair)
	address, _, _ := startServing(t, files, NewServer(newState(t), nil, PodOptions{}))
	client := clientTrusting(pair)
	client.Timeout = 5 * time.Second // the API server's timeoutSeconds
	if response, err := client.Get("https://" + address + PathHealthz); err != nil {
		t.Fatal(err)
	} else {
		response.Body.Close()
	}
	baseline := inflighttest.LiveHeap()
	dial := func() (net.Conn, error) {
		return tls.Dial("tcp", address, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}) //nolint:gosec // an attacker
	}
	attack := inflighttest.StallBodies(t, dial, PathValidateClaim, attackers, int(maxBodyBytes)-1024)
	attack.WaitWritten(t, 20*time.Second)
	if grown := inflighttest.PeakGrowth(baseline, heapBound, 3*time.Second); grown > heapBound {
		t.Fatalf("%d stalled bodies grew the heap by %d MiB, want at most %d MiB", attackers, grown>>20, heapBound>>20)
	}
	// The API server's call is answered within its timeout: decided, or
	// 503 at once (its failurePolicy then applies).
	response, err := client.Post("https://"+address+PathValidateClaim, "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatalf("an admission request during the attack: %v", err)
	}
	body, _ := io.ReadAll(response.Body)
	response.Body.Close()
	if response.StatusCode == http.StatusGatewayTimeout || response.StatusCode == http.StatusRequestTimeout {
		t.Fatalf("an admission request during the attack: %d %s, want an answer", response.StatusCode, body)
	}
	if open := attack.StillOpen(stalledCloseDeadline); open > 0 {
		t.Fatalf("%d of %d stalled connections still open after %s", open, attackers, stalledCloseDeadline)
	}
}

func TestServeWithAClientCAAnswersOnlyItsClients(t *testing.T) {
	serving, ca, otherCA := certstest.NewPair(t, "webhook"), certstest.NewCA(t, "apiserver-client-ca"), certstest.NewCA(t, "other-ca")
	files := certstest.NewFiles(t)
	files.WriteInPlace(t, serving)
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	certificates, err := certs.NewServing(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	clients, err := certs.NewClientCAs(caFile)
	if err != nil {
		t.Fatal(err)
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		_ = serve(ctx, listener, NewServer(newState(t), nil, PodOptions{}), certificates.TLSConfigRequiring(clients), time.Second)
	}()
	t.Cleanup(func() { cancel(); <-finished })
	apiServer, intruder := certstest.NewClient(t, ca, "kube-apiserver").Certificate(t), certstest.NewClient(t, otherCA, "tenant").Certificate(t)
	review := func(client *tls.Certificate) (int, error) {
		httpClient := clientTrusting(serving)
		if client != nil {
			httpClient.Transport.(*http.Transport).TLSClientConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return client, nil }
		}
		response, err := httpClient.Post("https://"+listener.Addr().String()+PathValidateClaim, "application/json",
			strings.NewReader(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"PersistentVolumeClaim"},"namespace":"other-tenant","operation":"CREATE"}}`))
		if err != nil {
			return 0, err
		}
		response.Body.Close()
		return response.StatusCode, nil
	}
	for _, tt := range []struct {
		name    string
		client  *tls.Certificate
		refusal string
	}{
		{"a caller without a client certificate", nil, "certificate required"},
		{"a caller with a certificate of another CA", &intruder, "unknown certificate authority"},
	} {
		if code, err := review(tt.client); err == nil || !strings.Contains(err.Error(), tt.refusal) {
			t.Errorf("%s: %d, %v; want the handshake refused (%s)", tt.name, code, err, tt.refusal)
		}
	}
	if code, err := review(&apiServer); err != nil || code != http.StatusOK {
		t.Errorf("the API server's certificate: %d, %v; want 200", code, err)
	}
}
