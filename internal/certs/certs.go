// Package certs serves a TLS key pair from files that are rotated while the
// process runs (cert-manager, the kubelet updating a Secret volume), for the
// extender and the webhook alike. Watching the files is
// k8s.io/apiserver's dynamiccertificates, the code kube-apiserver reloads
// its own serving certificate with (fsnotify, re-armed after a symlink
// swap, a pair that does not match kept out until it does); this package
// only turns the current pair into what crypto/tls asks for.
package certs

import (
	"context"
	"crypto/tls"
	"fmt"
	"sync/atomic"

	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/klog/v2"
)

// Serving is a serving key pair kept in step with its files.
type Serving struct {
	content *dynamiccertificates.DynamicCertKeyPairContent
	current atomic.Pointer[tls.Certificate]
}

// NewServing loads certFile and keyFile (PEM) and fails when they do not
// hold a matching certificate and key. Call Run to follow later changes.
func NewServing(certFile, keyFile string) (*Serving, error) {
	content, err := dynamiccertificates.NewDynamicServingContentFromFiles("serving", certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load serving certificate %s and key %s: %w", certFile, keyFile, err)
	}
	s := &Serving{content: content}
	if err := s.load(); err != nil {
		return nil, err
	}
	content.AddListener(s)
	return s, nil
}

// Run follows the files until ctx ends.
func (s *Serving) Run(ctx context.Context) {
	s.content.Run(ctx, 1)
}

// Enqueue is dynamiccertificates.Listener: the files hold a new valid
// pair, which is parsed once here rather than on every handshake.
func (s *Serving) Enqueue() {
	if err := s.load(); err != nil {
		klog.ErrorS(err, "Keeping the previous serving certificate")
	}
}

// load parses the content's current pair and serves it.
func (s *Serving) load() error {
	certPEM, keyPEM := s.content.CurrentCertKeyContent()
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("parse serving certificate of %s: %w", s.content.Name(), err)
	}
	s.current.Store(&pair)
	details := []any{"files", s.content.Name()}
	if pair.Leaf != nil {
		details = append(details, "subject", pair.Leaf.Subject.String(), "notAfter", pair.Leaf.NotAfter)
	}
	klog.InfoS("Serving certificate loaded", details...)
	return nil
}

// GetCertificate is tls.Config.GetCertificate: the pair the files hold now.
func (s *Serving) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.current.Load(), nil
}

// TLSConfig serves the current pair with TLS 1.2 or newer.
func (s *Serving) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: s.GetCertificate, NextProtos: httpOneOnly}
}

// httpOneOnly offers HTTP/1.1 alone: an HTTP/2 connection holds up to its
// flow-control window (1 MiB in Go) of request data whether or not a
// handler reads it, outside the servers' in-flight bound, and opens the
// rapid-reset class of attacks (CVE-2023-44487); controller-runtime's
// webhook server turns HTTP/2 off for the same reasons. kube-scheduler
// and the API server speak HTTP/1.1 to extenders and webhooks alike.
var httpOneOnly = []string{"http/1.1"}
