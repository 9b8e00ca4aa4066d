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

// serve answers HTTPS on listener with handler until ctx ends, then shuts
// down gracefully: it stops accepting, lets requests in flight finish for
// up to grace, and returns nil. It returns an error if serving fails.
func serve(ctx context.Context, listener net.Listener, handler http.Handler, tlsConfig *tls.Config, grace time.Duration) error {
	server := &http.Server{
		Handler:           handler,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
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
