package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"slices"
	"testing"
	"time"
)

func TestIssuedCertificatesVerifyOnlyAsIntended(t *testing.T) {
	now := time.Now()
	ca := mustAuthority(t, "test-ca", now)
	otherCA := mustAuthority(t, "other-ca", now)
	tests := []struct {
		name    string
		spec    certSpec
		roots   *authority
		host    string
		usage   x509.ExtKeyUsage
		wantErr bool
	}{
		{"API server certificate is valid for 127.0.0.1", apiserverServingSpec(), ca, "127.0.0.1", x509.ExtKeyUsageServerAuth, false},
		{"API server certificate is valid for the kubernetes Service name", apiserverServingSpec(), ca, "kubernetes.default.svc", x509.ExtKeyUsageServerAuth, false},
		{"API server certificate is valid for the kubernetes Service IP", apiserverServingSpec(), ca, kubernetesServiceIP, x509.ExtKeyUsageServerAuth, false},
		{"API server certificate is not valid for another host", apiserverServingSpec(), ca, "example.com", x509.ExtKeyUsageServerAuth, true},
		{"loopback serving certificate is valid for 127.0.0.1", loopbackServingSpec(), ca, "127.0.0.1", x509.ExtKeyUsageServerAuth, false},
		{"admin certificate authenticates a client", clientSpec(adminUser, mastersGroup), ca, "", x509.ExtKeyUsageClientAuth, false},
		{"client certificate cannot serve", clientSpec(schedulerUser), ca, "127.0.0.1", x509.ExtKeyUsageServerAuth, true},
		{"certificate does not verify against another CA", apiserverServingSpec(), otherCA, "127.0.0.1", x509.ExtKeyUsageServerAuth, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pair, err := ca.issue(tt.spec, now)
			if err != nil {
				t.Fatalf("issue: %v", err)
			}
			roots := x509.NewCertPool()
			roots.AddCert(tt.roots.cert)
			_, err = parseLeaf(t, pair).Verify(x509.VerifyOptions{
				DNSName: tt.host, Roots: roots, KeyUsages: []x509.ExtKeyUsage{tt.usage},
			})
			if (err != nil) != tt.wantErr {
				t.Errorf("Verify() error = %v, want error: %v", err, tt.wantErr)
			}
		})
	}
}

func TestAdminCertificateIsInSystemMasters(t *testing.T) {
	creds, err := newCredentials(time.Now())
	if err != nil {
		t.Fatalf("newCredentials: %v", err)
	}
	leaf := parseLeaf(t, creds.admin)
	if leaf.Subject.CommonName != adminUser || !slices.Contains(leaf.Subject.Organization, mastersGroup) {
		t.Errorf("admin subject = %v, want CN=%s in O=%s", leaf.Subject, adminUser, mastersGroup)
	}
}

func mustAuthority(t *testing.T, name string, now time.Time) *authority {
	t.Helper()
	ca, err := newAuthority(name, now)
	if err != nil {
		t.Fatalf("newAuthority(%s): %v", name, err)
	}
	return ca
}

// parseLeaf checks that the pair's key matches its certificate and returns the certificate.
func parseLeaf(t *testing.T, pair keyPair) *x509.Certificate {
	t.Helper()
	if _, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM); err != nil {
		t.Fatalf("key does not match certificate: %v", err)
	}
	block, _ := pem.Decode(pair.CertPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("parse certificate: %v", err)
	}
	return cert
}
