package extender

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/toposnap/toposnap/internal/certs/certstest"
)

// unreachableKubeconfig points at a port nothing listens on: the API
// server is down.
func unreachableKubeconfig(t *testing.T) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	address := listener.Addr().String()
	listener.Close()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	config := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://%s", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`, address)
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startRun runs the extender with opts on a free port until the test ends
// and returns its address.
func startRun(t *testing.T, opts Options) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts.Listen = listener.Addr().String()
	listener.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opts) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return opts.Listen
}

// get fetches url with client until it answers or 20 s pass.
func get(t *testing.T, client *http.Client, url string) (int, string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		response, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(response.Body)
			response.Body.Close()
			return response.StatusCode, string(body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRunServesBeforeTheAPIServerAnswers(t *testing.T) {
	address := startRun(t, Options{Kubeconfig: unreachableKubeconfig(t), DriverName: driver, Resync: time.Minute})
	client := &http.Client{Timeout: 5 * time.Second}
	if code, body := get(t, client, "http://"+address+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d %q with the API server down, want 200: the process is alive", code, body)
	}
	if code, body := get(t, client, "http://"+address+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for the caches") {
		t.Fatalf("/readyz = %d %q with the API server down, want 503 saying what it waits for", code, body)
	}
	response, err := client.Post("http://"+address+"/filter", "application/json",
		strings.NewReader(`{"pod":{"metadata":{"name":"p","namespace":"default"}},"nodenames":["node1"]}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(response.Body)
	response.Body.Close()
	if response.StatusCode != http.StatusOK || !strings.Contains(string(body), `"Error":"toposnap extender is starting`) {
		t.Fatalf("/filter = %d %s, want an error answer the scheduler retries", response.StatusCode, body)
	}
}

func TestRunServesHTTPSAndFollowsCertificateRotation(t *testing.T) {
	first, second := certstest.NewPair(t, "first"), certstest.NewPair(t, "second")
	volume := certstest.NewSecretVolume(t, first)
	address := startRun(t, Options{Kubeconfig: unreachableKubeconfig(t), DriverName: driver, Resync: time.Minute,
		TLSCertFile: volume.Cert, TLSKeyFile: volume.Key})
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}} //nolint:gosec // the test reads names only
	if code, _ := get(t, client, "https://"+address+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz over HTTPS = %d", code)
	}
	if name, err := certstest.ServedName(address); err != nil || name != "first" {
		t.Fatalf("serves %q (%v), want first", name, err)
	}
	volume.Update(t, second)
	deadline := time.Now().Add(20 * time.Second)
	for {
		name, err := certstest.ServedName(address)
		if err == nil && name == "second" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("serves %q (%v) 20 s after the Secret changed, want second", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if response, err := http.Get("http://" + address + "/healthz"); err == nil {
		response.Body.Close()
		if response.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP is served on the HTTPS port")
		}
	}
}

func TestRunRefusesHalfATLSPair(t *testing.T) {
	err := Run(context.Background(), Options{TLSCertFile: "tls.crt"})
	if err == nil || !strings.Contains(err.Error(), "go together") {
		t.Fatalf("Run with a certificate and no key: %v", err)
	}
}

func TestRunWithAClientCARequiresClientCertificates(t *testing.T) {
	serving, ca, otherCA := certstest.NewPair(t, "extender"), certstest.NewCA(t, "scheduler-ca"), certstest.NewCA(t, "other-ca")
	files := certstest.NewFiles(t)
	files.WriteInPlace(t, serving)
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	probes, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	probeAddress := probes.Addr().String()
	probes.Close()
	address := startRun(t, Options{Kubeconfig: unreachableKubeconfig(t), DriverName: driver, Resync: time.Minute,
		TLSCertFile: files.Cert, TLSKeyFile: files.Key, ClientCAFile: caFile, HealthListen: probeAddress})
	scheduler, intruder := certstest.NewClient(t, ca, "kube-scheduler").Certificate(t), certstest.NewClient(t, otherCA, "intruder").Certificate(t)
	post := func(client *tls.Certificate) (int, error) {
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(serving.CertPEM)
		config := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		if client != nil {
			config.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return client, nil }
		}
		httpClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: config, DisableKeepAlives: true}}
		response, err := httpClient.Post("https://"+address+"/filter", "application/json",
			strings.NewReader(`{"pod":{"metadata":{"name":"p","namespace":"default"}},"nodenames":["node1"]}`))
		if err != nil {
			return 0, err
		}
		response.Body.Close()
		return response.StatusCode, nil
	}
	// Serving at all: retried until the listener is up.
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, err := post(&scheduler)
		if err == nil && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the scheduler's certificate: %d, %v; want 200", code, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, tt := range []struct {
		name    string
		client  *tls.Certificate
		refusal string
	}{
		{"no client certificate", nil, "certificate required"},
		{"a certificate of another CA", &intruder, "unknown certificate authority"},
	} {
		if code, err := post(tt.client); err == nil || !strings.Contains(err.Error(), tt.refusal) {
			t.Errorf("%s: %d, %v; want the handshake refused (%s)", tt.name, code, err, tt.refusal)
		}
	}
	// The kubelet's probes present no certificate: they have a port of
	// their own, which serves nothing else.
	client := &http.Client{Timeout: 5 * time.Second}
	if code, body := get(t, client, "http://"+probeAddress+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for the caches") {
		t.Errorf("/readyz on the probe port = %d %q, want 503 saying what it waits for", code, body)
	}
	response, err := client.Post("http://"+probeAddress+"/filter", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	response.Body.Close()
	if response.StatusCode != http.StatusNotFound {
		t.Errorf("/filter on the probe port = %d, want 404", response.StatusCode)
	}
}

func TestRunRefusesAClientCAWithoutTLS(t *testing.T) {
	err := Run(context.Background(), Options{ClientCAFile: "ca.crt"})
	if err == nil || !strings.Contains(err.Error(), "--client-ca-file needs --tls-cert-file") {
		t.Fatalf("Run with a client CA and plain HTTP: %v", err)
	}
}
