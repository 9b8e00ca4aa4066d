package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"k8s.io/klog/v2"
)

// How long a caller may take: to send its request headers, its whole
// request (the TLS handshake included), to be answered, and between
// requests on a kept-alive connection. The API server sends an
// AdmissionReview at once and waits at most the hook's timeoutSeconds (30
// at most), so these only cut off callers who stall; a stalled body keeps
// its in-flight slot (maxInFlight) no longer than readTimeout.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second // from the end of the headers: reading the body, deciding, answering
	idleTimeout       = 2 * time.Minute
)

// serve answers HTTPS on listener with handler until ctx ends, then shuts
// down gracefully: it stops accepting, lets requests in flight finish for
// up to grace, and returns nil. It returns an error if serving fails.
func serve(ctx context.Context, listener net.Listener, handler http.Handler, tlsConfig *tls.Config, grace time.Duration) error {
	server := &http.Server{
		Handler:   handler,
		TLSConfig: tlsConfig,
		// HTTP/1.1 only (see internal/certs): a non-nil empty map keeps
		// net/http from adding HTTP/2.
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          klog.NewStandardLogger("INFO"),
	}
	served := make(chan error, 1)
	go func() { served <- server.ServeTLS(listener, "", "") }()
	select {
	case err := <-served:
		return fmt.Errorf("serve HTTPS on %s: %w", listener.Addr(), err)
	case <-ctx.Done():
	}
	klog.InfoS("Shutting down", "grace", grace)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := server.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shut down HTTPS server: %w", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve HTTPS on %s: %w", listener.Addr(), err)
	}
	return nil
}

// servePlain answers plain HTTP on listener with handler until ctx ends
// (the probe port: what it serves is not worth a graceful shutdown).
func servePlain(ctx context.Context, listener net.Listener, handler http.Handler) {
	server := &http.Server{Handler: handler, ReadHeaderTimeout: readHeaderTimeout, ReadTimeout: readTimeout,
		WriteTimeout: writeTimeout, IdleTimeout: idleTimeout, ErrorLog: klog.NewStandardLogger("INFO")}
	go func() {
		<-ctx.Done()
		_ = server.Close()
	}()
	klog.InfoS("Serving probes and metrics", "address", listener.Addr().String())
	if err := server.Serve(listener); !errors.Is(err, http.ErrServerClosed) {
		klog.ErrorS(err, "Probe port stopped", "address", listener.Addr().String())
	}
}

// probesOnly lets through to handler the GETs of /healthz, /readyz and
// /metrics, and nothing else: the port it serves needs no client
// certificate.
func probesOnly(handler http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case PathHealthz, PathReadyz, PathMetrics:
			if r.Method == http.MethodGet {
				handler.ServeHTTP(w, r)
				return
			}
		}
		http.Error(w, r.URL.Path+" is not served on the probe port", http.StatusNotFound)
	})
}
