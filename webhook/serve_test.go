package webhook

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/toposnap/toposnap/internal/certs"
	"github.com/toposnap/toposnap/internal/certs/certstest"
)

// startServing serves handler over TLS with the pair in files on a free
// loopback port until the returned cancel; done reports serve's result.
func startServing(t *testing.T, files certstest.Files, handler http.Handler) (address string, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	certificates, err := certs.NewServing(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	certCtx, stopCertificates := context.WithCancel(context.Background())
	t.Cleanup(stopCertificates)
	go certificates.Run(certCtx)
	result, finished := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(finished)
		result <- serve(ctx, listener, handler, certificates.TLSConfig(), 5*time.Second)
	}()
	t.Cleanup(func() {
		cancel()
		<-finished
	})
	return listener.Addr().String(), cancel, result
}

// clientTrusting is an HTTPS client that trusts the pairs and opens a new
// connection per request, so each request sees the certificate served now.
func clientTrusting(pairs ...certstest.Pair) *http.Client {
	roots := x509.NewCertPool()
	for _, pair := range pairs {
		roots.AppendCertsFromPEM(pair.CertPEM)
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, DisableKeepAlives: true,
	}}
}

func TestServeReloadsCertificateForNewConnections(t *testing.T) {
	first, second := certstest.NewPair(t, "first"), certstest.NewPair(t, "second")
	volume := certstest.NewSecretVolume(t, first)
	address, _, _ := startServing(t, volume.Files, NewServer(newState(t), nil, PodOptions{}))
	client := clientTrusting(first, second)
	servedName := func() string {
		response, err := client.Get("https://" + address + PathHealthz)
		if err != nil {
			t.Fatal(err)
		}
		defer response.Body.Close()
		if response.StatusCode != http.StatusOK {
			t.Fatalf("healthz: %s", response.Status)
		}
		return response.TLS.PeerCertificates[0].Subject.CommonName
	}
	if got := servedName(); got != "first" {
		t.Fatalf("serves %s, want first", got)
	}
	volume.Update(t, second)
	// The files are watched: the new pair is served within moments.
	deadline := time.Now().Add(20 * time.Second)
	for got := servedName(); got != "second"; got = servedName() {
		if time.Now().After(deadline) {
			t.Fatalf("20 s after the rotation serves %s, want second", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestServeShutsDownGracefully(t *testing.T) {
	pair := certstest.NewPair(t, "serving")
	files := certstest.NewFiles(t)
	files.WriteInPlace(t, pair)
	entered, release := make(chan struct{}), make(chan struct{})
	slow := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		close(entered)
		<-release
		w.WriteHeader(http.StatusOK)
	})
	address, cancel, done := startServing(t, files, slow)
	status := make(chan int, 1)
	go func() {
		response, err := clientTrusting(pair).Get("https://" + address + "/slow")
		if err != nil {
			status <- 0
			return
		}
		response.Body.Close()
		status <- response.StatusCode
	}()
	<-entered
	cancel()
	select {
	case err := <-done:
		t.Fatalf("serve returned (%v) with a request in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if got := <-status; got != http.StatusOK {
		t.Fatalf("request in flight got status %d, want 200", got)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve after shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not return after shutdown")
	}
	if _, err := clientTrusting(pair).Get("https://" + address + "/slow"); err == nil {
		t.Fatal("new connections are still accepted after shutdown")
	}
}
