package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/toposnap/toposnap/internal/certs/certstest"
)

// mutualServer serves 200 over TLS with serving, requiring clients signed
// by the CAs in caFile, until the test ends; it returns the address.
func mutualServer(t *testing.T, serving certstest.Pair, caFile string) string {
	t.Helper()
	files := certstest.NewFiles(t)
	files.WriteInPlace(t, serving)
	s := running(t, files)
	clients, err := NewClientCAs(caFile)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go clients.Run(ctx)
	listener, err := tls.Listen("tcp", "127.0.0.1:0", s.TLSConfigRequiring(clients))
	if err != nil {
		t.Fatal(err)
	}
	server := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }),
		ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(func() { _ = server.Close() })
	return listener.Addr().String()
}

// getWith fetches / from address presenting client (none when nil) and
// trusting serving; it returns the status or the error.
func getWith(address string, serving certstest.Pair, client *tls.Certificate) (int, error) {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(serving.CertPEM)
	config := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if client != nil {
		// Presented whatever CAs the server names: crypto/tls would
		// otherwise keep back a certificate of a CA the server did not ask for.
		config.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return client, nil }
	}
	httpClient := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: config, DisableKeepAlives: true}}
	response, err := httpClient.Get("https://" + address + "/")
	if err != nil {
		return 0, err
	}
	response.Body.Close()
	return response.StatusCode, nil
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path+".new", data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

func TestTLSConfigRequiringAdmitsOnlyClientsOfTheCA(t *testing.T) {
	serving := certstest.NewPair(t, "serving")
	ca, otherCA := certstest.NewCA(t, "client-ca"), certstest.NewCA(t, "other-ca")
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	writeFile(t, caFile, ca.CertPEM)
	address := mutualServer(t, serving, caFile)
	signed, foreign := certstest.NewClient(t, ca, "scheduler").Certificate(t), certstest.NewClient(t, otherCA, "intruder").Certificate(t)
	selfSigned := otherCA.Certificate(t)
	tests := []struct {
		name   string
		client *tls.Certificate
		// refusal is part of the handshake's error; empty: served.
		refusal string
	}{
		{"no client certificate is refused at the handshake", nil, "certificate required"},
		{"a certificate of another CA is refused", &foreign, "unknown certificate authority"},
		{"a self-signed certificate is refused", &selfSigned, "unknown certificate authority"},
		{"a certificate of the client CA is served", &signed, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, err := getWith(address, serving, tt.client)
			switch {
			case tt.refusal == "" && (err != nil || code != http.StatusOK):
				t.Fatalf("got %d, %v; want 200", code, err)
			case tt.refusal != "" && (err == nil || !strings.Contains(err.Error(), tt.refusal)):
				t.Fatalf("got %d, %v; want a refusal saying %q", code, err, tt.refusal)
			}
		})
	}
}

func TestTLSConfigRequiringFollowsTheCAFile(t *testing.T) {
	serving := certstest.NewPair(t, "serving")
	first, second := certstest.NewCA(t, "first-ca"), certstest.NewCA(t, "second-ca")
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	writeFile(t, caFile, first.CertPEM)
	address := mutualServer(t, serving, caFile)
	ofFirst, ofSecond := certstest.NewClient(t, first, "old").Certificate(t), certstest.NewClient(t, second, "new").Certificate(t)
	if code, err := getWith(address, serving, &ofFirst); err != nil || code != http.StatusOK {
		t.Fatalf("client of the first CA: %d, %v", code, err)
	}
	writeFile(t, caFile, second.CertPEM)
	deadline := time.Now().Add(reloadDeadline)
	for {
		code, err := getWith(address, serving, &ofSecond)
		if err == nil && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("client of the new CA refused %s after the file changed: %v", reloadDeadline, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := getWith(address, serving, &ofFirst); err == nil {
		t.Fatal("a client of the CA removed from the file is still served")
	}
}

func TestNewClientCAsRefusesAFileWithoutCertificates(t *testing.T) {
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	writeFile(t, caFile, []byte("not a certificate"))
	if _, err := NewClientCAs(caFile); err == nil || !strings.Contains(err.Error(), caFile) {
		t.Fatalf("err = %v, want one naming %s", err, caFile)
	}
	if _, err := NewClientCAs(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("a missing file is accepted")
	}
}

func TestServersOfferHTTPOneOnly(t *testing.T) {
	files := certstest.NewFiles(t)
	files.WriteInPlace(t, certstest.NewPair(t, "serving"))
	s := running(t, files)
	clients, err := NewClientCAs(func() string {
		path := filepath.Join(t.TempDir(), "ca.crt")
		writeFile(t, path, certstest.NewCA(t, "ca").CertPEM)
		return path
	}())
	if err != nil {
		t.Fatal(err)
	}
	perConnection, err := s.TLSConfigRequiring(clients).GetConfigForClient(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	for name, config := range map[string]*tls.Config{"TLSConfig": s.TLSConfig(), "TLSConfigRequiring": perConnection} {
		if len(config.NextProtos) != 1 || config.NextProtos[0] != "http/1.1" {
			t.Errorf("%s offers %v, want http/1.1 alone (no HTTP/2)", name, config.NextProtos)
		}
	}
}
