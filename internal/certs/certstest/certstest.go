// Package certstest makes serving key pairs and writes them the ways
// rotations do, for tests of processes that reload their certificates.
package certstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Pair is a self-signed serving certificate for 127.0.0.1 and its key, in
// PEM; its common name tells pairs apart.
type Pair struct {
	Name            string
	CertPEM, KeyPEM []byte
}

// NewPair makes a pair named name.
func NewPair(t testing.TB, name string) Pair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return Pair{
		Name:    name,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
}

// NewCA makes a self-signed CA named name that may sign certificates for
// any use (no extended key usage of its own to narrow its leaves').
func NewCA(t testing.TB, name string) Pair {
	t.Helper()
	return newCertificate(t, name, nil, nil)
}

// NewClient makes a client certificate (extended key usage client auth)
// named name, signed by ca (a pair made by NewCA).
func NewClient(t testing.TB, ca Pair, name string) Pair {
	t.Helper()
	signer, err := tls.X509KeyPair(ca.CertPEM, ca.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return newCertificate(t, name, &signer, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
}

// newCertificate makes a certificate named name with usages, signed by
// signer, or a self-signed CA when signer is nil.
func newCertificate(t testing.TB, name string, signer *tls.Certificate, usages []x509.ExtKeyUsage) Pair {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usages, BasicConstraintsValid: true,
	}
	parent, signingKey := template, any(key)
	if signer == nil {
		template.IsCA, template.KeyUsage = true, template.KeyUsage|x509.KeyUsageCertSign
	} else {
		if parent, err = x509.ParseCertificate(signer.Certificate[0]); err != nil {
			t.Fatal(err)
		}
		signingKey = signer.PrivateKey
	}
	der, err := x509.CreateCertificate(rand.Reader, template, parent, &key.PublicKey, signingKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return Pair{
		Name:    name,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
}

// Certificate is the pair as crypto/tls presents it.
func (p Pair) Certificate(t testing.TB) tls.Certificate {
	t.Helper()
	certificate, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return certificate
}

// Files are where a process reads its pair.
type Files struct{ Cert, Key string }

// NewFiles names tls.crt and tls.key in a new temporary directory.
func NewFiles(t testing.TB) Files {
	dir := t.TempDir()
	return Files{Cert: filepath.Join(dir, "tls.crt"), Key: filepath.Join(dir, "tls.key")}
}

// WriteInPlace overwrites the files, as a tool rewriting them would.
func (f Files) WriteInPlace(t testing.TB, pair Pair) {
	t.Helper()
	for path, data := range map[string][]byte{f.Cert: pair.CertPEM, f.Key: pair.KeyPEM} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// Swap renames new files over the old ones (new inodes), certificate
// first: between the two renames the files do not match.
func (f Files) Swap(t testing.TB, pair Pair) {
	t.Helper()
	for _, file := range []struct {
		path string
		data []byte
	}{{f.Cert, pair.CertPEM}, {f.Key, pair.KeyPEM}} {
		if err := os.WriteFile(file.path+".new", file.data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(file.path+".new", file.path); err != nil {
			t.Fatal(err)
		}
	}
}

// SecretVolume lays the pair out as the kubelet does in a Secret volume:
// tls.crt and tls.key are symlinks through ..data to a timestamped
// directory, and an update writes a new directory, swaps ..data to it
// atomically and removes the old one.
type SecretVolume struct {
	Files
	dir     string
	current string
	serial  int
}

// NewSecretVolume writes pair into a new Secret-volume layout.
func NewSecretVolume(t testing.TB, pair Pair) *SecretVolume {
	t.Helper()
	dir := t.TempDir()
	v := &SecretVolume{Files: Files{Cert: filepath.Join(dir, "tls.crt"), Key: filepath.Join(dir, "tls.key")}, dir: dir}
	v.Update(t, pair)
	for _, name := range []string{"tls.crt", "tls.key"} {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

// Update publishes pair as the kubelet publishes a changed Secret.
func (v *SecretVolume) Update(t testing.TB, pair Pair) {
	t.Helper()
	v.serial++
	next := fmt.Sprintf("..%d", v.serial)
	if err := os.Mkdir(filepath.Join(v.dir, next), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"tls.crt": pair.CertPEM, "tls.key": pair.KeyPEM} {
		if err := os.WriteFile(filepath.Join(v.dir, next, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(next, filepath.Join(v.dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(v.dir, "..data_tmp"), filepath.Join(v.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if v.current != "" {
		if err := os.RemoveAll(filepath.Join(v.dir, v.current)); err != nil {
			t.Fatal(err)
		}
	}
	v.current = next
}

// ServedName is the common name of the certificate a TLS server at address
// presents, or an error if the handshake fails.
func ServedName(address string) (string, error) {
	conn, err := tls.Dial("tcp", address, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only the presented name is read
	if err != nil {
		return "", err
	}
	defer func() { _ = conn.Close() }()
	certificates := conn.ConnectionState().PeerCertificates
	if len(certificates) == 0 {
		return "", fmt.Errorf("%s presented no certificate", address)
	}
	return certificates[0].Subject.CommonName, nil
}

// Leaf is the common name of a served certificate.
func Leaf(t testing.TB, certificate *tls.Certificate) string {
	t.Helper()
	if certificate == nil || len(certificate.Certificate) == 0 {
		t.Fatal("no certificate served")
	}
	leaf, err := x509.ParseCertificate(certificate.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.Subject.CommonName
}
