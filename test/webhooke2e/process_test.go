package webhooke2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func (e *environment) logPath() string { return filepath.Join(e.dir, "toposnap-webhook.log") }

// startWebhook runs the webhook binary, logging to logPath.
func (e *environment) startWebhook(binary string) error {
	logFile, err := os.Create(e.logPath())
	if err != nil {
		return err
	}
	cmd := exec.Command(binary, "--listen", e.address, "--tls-cert-file", e.pki.CertFile, "--tls-key-file", e.pki.KeyFile,
		"--kubeconfig", e.cluster.Kubeconfig, "--scheduler-name", schedulerName,
		"--volume-resource", string(podOptions.VolumeResource), "--volume-resource-schedulers", strings.Join(podOptions.ResourceSchedulers, ","), "--v", "2")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start toposnap-webhook: %w", err)
	}
	e.webhook, e.exited = cmd, make(chan struct{})
	go func() {
		e.exitErr = cmd.Wait()
		logFile.Close()
		close(e.exited)
	}()
	return nil
}

// waitHealthy waits until the webhook answers /healthz over TLS with the
// test CA, which it does once its caches are filled.
func (e *environment) waitHealthy(ctx context.Context) error {
	client := e.httpClient()
	err := poll(ctx, 200*time.Millisecond, 2*time.Minute, func() (bool, error) {
		select {
		case <-e.exited:
			return false, fmt.Errorf("toposnap-webhook exited: %w", e.exitErr)
		default:
		}
		response, err := client.Get("https://" + e.address + "/healthz")
		if err != nil {
			return false, nil
		}
		response.Body.Close()
		return response.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("webhook not healthy: %w\n%s", err, tail(e.logPath(), 20))
	}
	return nil
}

// httpClient trusts the test CA only.
func (e *environment) httpClient() *http.Client {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(e.pki.CAPEM)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
	}}
}

// stopWebhook sends SIGTERM and expects a clean exit within the grace period.
func (e *environment) stopWebhook() error {
	if e.webhook == nil {
		return nil
	}
	if err := e.webhook.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal toposnap-webhook: %w", err)
	}
	select {
	case <-e.exited:
		if e.exitErr != nil {
			return fmt.Errorf("toposnap-webhook did not exit cleanly on SIGTERM: %w\n%s", e.exitErr, tail(e.logPath(), 20))
		}
		return nil
	case <-time.After(15 * time.Second):
		_ = e.webhook.Process.Kill()
		<-e.exited
		return errors.New("toposnap-webhook did not exit within 15s of SIGTERM")
	}
}

// freePort returns a loopback port nothing listens on right now.
func freePort() (int, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port, nil
}

// tail returns the last n lines of the file at path, for error messages.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
