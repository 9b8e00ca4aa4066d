package webhook

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"testing"
	"time"
)

// startServing serves handler over TLS with the pair in files on a free
// loopback port until the returned cancel; done reports serve's result.
func startServing(t *testing.T, files pairFiles, handler http.Handler) (address string, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	reloader, err := newCertReloader(files.cert, files.key)
	if err != nil {
		t.Fatal(err)
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	result, finished := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(finished)
		result <- serve(ctx, listener, handler, serverTLSConfig(reloader), 5*time.Second)
	}()
	t.Cleanup(func() {
		cancel()
		<-finished
	})
	return listener.Addr().String(), cancel, result
}

// clientTrusting is an HTTPS client that trusts the pairs and opens a new
// connection per request, so each request sees the certificate served now.
func clientTrusting(pairs ...keyPair) *http.Client {
	roots := x509.NewCertPool()
	for _, pair := range pairs {
		roots.AppendCertsFromPEM(pair.certPEM)
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, DisableKeepAlives: true,
	}}
}

func TestServeReloadsCertificateForNewConnections(t *testing.T) {
	first, second := newKeyPair(t, "first"), newKeyPair(t, "second")
	files := newPairFiles(t)
	files.writeInPlace(t, first)
	address, _, _ := startServing(t, files, NewServer(newState(t), nil, ""))
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
	files.swap(t, second)
	if got := servedName(); got != "second" {
		t.Fatalf("after rotation serves %s, want second", got)
	}
}

func TestServeShutsDownGracefully(t *testing.T) {
	pair := newKeyPair(t, "serving")
	files := newPairFiles(t)
	files.writeInPlace(t, pair)
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
