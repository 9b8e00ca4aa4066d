package webhook

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// keyPair is a self-signed serving certificate for 127.0.0.1 and its key, in PEM.
type keyPair struct {
	name            string
	certPEM, keyPEM []byte
}

func newKeyPair(t testing.TB, name string) keyPair {
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
	return keyPair{
		name:    name,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
}

// pairFiles are where a test's reloader reads its pair.
type pairFiles struct{ cert, key string }

func newPairFiles(t *testing.T) pairFiles {
	dir := t.TempDir()
	return pairFiles{cert: filepath.Join(dir, "tls.crt"), key: filepath.Join(dir, "tls.key")}
}

// writeInPlace overwrites the files, as a tool rewriting them would.
func (f pairFiles) writeInPlace(t *testing.T, pair keyPair) {
	t.Helper()
	for path, data := range map[string][]byte{f.cert: pair.certPEM, f.key: pair.keyPEM} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// swap replaces the files by renaming new ones over them, as the kubelet
// updates a Secret volume (new inodes).
func (f pairFiles) swap(t *testing.T, pair keyPair) {
	t.Helper()
	for path, data := range map[string][]byte{f.cert: pair.certPEM, f.key: pair.keyPEM} {
		if err := os.WriteFile(path+".new", data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".new", path); err != nil {
			t.Fatal(err)
		}
	}
}

// touch sets both files' mtime.
func (f pairFiles) touch(t *testing.T, when time.Time) {
	t.Helper()
	for _, path := range []string{f.cert, f.key} {
		if err := os.Chtimes(path, when, when); err != nil {
			t.Fatal(err)
		}
	}
}

// served is the common name of the certificate the reloader serves now.
func served(t *testing.T, r *certReloader) string {
	t.Helper()
	cert, err := r.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.Subject.CommonName
}

func TestCertReloader(t *testing.T) {
	first, second := newKeyPair(t, "first"), newKeyPair(t, "second")
	t.Run("pair rewritten in place is served after the rewrite", func(t *testing.T) {
		files := newPairFiles(t)
		files.writeInPlace(t, first)
		reloader, err := newCertReloader(files.cert, files.key)
		if err != nil {
			t.Fatal(err)
		}
		if got := served(t, reloader); got != "first" {
			t.Fatalf("serves %s, want first", got)
		}
		files.writeInPlace(t, second)
		files.touch(t, time.Now().Add(time.Second))
		if got := served(t, reloader); got != "second" {
			t.Fatalf("after rewrite serves %s, want second", got)
		}
	})
	t.Run("pair swapped by rename is served after the swap", func(t *testing.T) {
		files := newPairFiles(t)
		files.writeInPlace(t, first)
		reloader, err := newCertReloader(files.cert, files.key)
		if err != nil {
			t.Fatal(err)
		}
		files.swap(t, second)
		if got := served(t, reloader); got != "second" {
			t.Fatalf("after swap serves %s, want second", got)
		}
	})
	t.Run("half-written rotation keeps the previous pair until the key follows", func(t *testing.T) {
		files := newPairFiles(t)
		files.writeInPlace(t, first)
		reloader, err := newCertReloader(files.cert, files.key)
		if err != nil {
			t.Fatal(err)
		}
		files.swap(t, keyPair{certPEM: second.certPEM, keyPEM: first.keyPEM})
		if got := served(t, reloader); got != "first" {
			t.Fatalf("with mismatched files serves %s, want first", got)
		}
		files.swap(t, second)
		if got := served(t, reloader); got != "second" {
			t.Fatalf("once the key follows serves %s, want second", got)
		}
	})
	t.Run("content changed behind unchanged stats is found by the recheck", func(t *testing.T) {
		same := sameSizePair(t, first)
		files := newPairFiles(t)
		files.writeInPlace(t, first)
		mtime := time.Now().Add(-time.Hour).Truncate(time.Second)
		files.touch(t, mtime)
		now := time.Now()
		reloader, err := newCertReloader(files.cert, files.key)
		if err != nil {
			t.Fatal(err)
		}
		reloader.now = func() time.Time { return now }
		files.writeInPlace(t, same)
		files.touch(t, mtime)
		if got := served(t, reloader); got != "first" {
			t.Fatalf("before the recheck serves %s, want first (stats unchanged)", got)
		}
		now = now.Add(certRecheckInterval + time.Second)
		if got := served(t, reloader); got != same.name {
			t.Fatalf("after the recheck serves %s, want %s", got, same.name)
		}
	})
	t.Run("missing or invalid files fail at start", func(t *testing.T) {
		files := newPairFiles(t)
		if _, err := newCertReloader(files.cert, files.key); err == nil || !strings.Contains(err.Error(), "serving certificate") {
			t.Fatalf("err = %v, want one naming the serving certificate", err)
		}
		files.writeInPlace(t, keyPair{certPEM: []byte("not a certificate"), keyPEM: first.keyPEM})
		if _, err := newCertReloader(files.cert, files.key); err == nil || !strings.Contains(err.Error(), "load serving certificate") {
			t.Fatalf("err = %v, want a load error", err)
		}
	})
}

// sameSizePair is a new pair whose PEM files are as long as like's, so
// that rewriting like's files with it leaves their size unchanged.
func sameSizePair(t *testing.T, like keyPair) keyPair {
	t.Helper()
	for range 200 {
		pair := newKeyPair(t, "third")
		if len(pair.certPEM) == len(like.certPEM) && len(pair.keyPEM) == len(like.keyPEM) && !bytes.Equal(pair.certPEM, like.certPEM) {
			return pair
		}
	}
	t.Fatal("no pair of the same size found")
	return keyPair{}
}
