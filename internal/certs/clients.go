package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"k8s.io/apiserver/pkg/server/dynamiccertificates"
)

// ClientCAs is a bundle of CA certificates (PEM) that a caller's client
// certificate must chain to, kept in step with its file the way
// kube-apiserver follows its --client-ca-file (dynamiccertificates: the
// file is watched, re-read after a swap, and a file that does not parse
// leaves the previous bundle in place).
type ClientCAs struct {
	content *dynamiccertificates.DynamicFileCAContent
}

// NewClientCAs loads file and fails when it holds no CA certificate. Call
// Run to follow later changes.
func NewClientCAs(file string) (*ClientCAs, error) {
	content, err := dynamiccertificates.NewDynamicCAContentFromFile("client-ca", file)
	if err != nil {
		return nil, fmt.Errorf("load client CA bundle %s: %w", file, err)
	}
	return &ClientCAs{content: content}, nil
}

// Run follows the file until ctx ends.
func (c *ClientCAs) Run(ctx context.Context) {
	c.content.Run(ctx, 1)
}

// pool is the CAs the file holds now.
func (c *ClientCAs) pool() *x509.CertPool {
	options, _ := c.content.VerifyOptions() // loaded by NewClientCAs, never unset
	return options.Roots
}

// TLSConfigRequiring serves the current pair to callers that present a
// client certificate for client auth signed by one of clients' CAs (as they
// are at the handshake); any other caller is refused during the handshake,
// before a byte of its request is read.
func (s *Serving) TLSConfigRequiring(clients *ClientCAs) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ClientAuth: tls.RequireAndVerifyClientCert,
		// Only the per-connection configuration below is used; this one
		// says the same so that nothing reading it is misled.
		GetCertificate: s.GetCertificate,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return &tls.Config{
				MinVersion:     tls.VersionTLS12,
				ClientAuth:     tls.RequireAndVerifyClientCert,
				ClientCAs:      clients.pool(),
				GetCertificate: s.GetCertificate,
				NextProtos:     httpOneOnly,
			}, nil
		},
	}
}
