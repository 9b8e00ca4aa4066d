package webhook

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// certRecheckInterval bounds how long a change to the files' content that
// left their size, mtime and inode alone (a rewrite within the filesystem's
// mtime granularity) can go unnoticed.
const certRecheckInterval = time.Minute

// certReloader serves the key pair in certFile and keyFile and re-reads
// them when they change: cert-manager and the kubelet rotate a Secret's
// files in place, and a webhook must not need a restart for that. On each
// TLS handshake it stats both files; when either differs from what was
// loaded (mtime, size, or a new inode as after a symlink swap), or the
// recheck interval has passed, it reads them and, if their content
// changed, parses the new pair. A pair that does not load (a half-written
// rotation) leaves the previous one in service and is retried on the next
// handshake.
type certReloader struct {
	certFile, keyFile string
	recheck           time.Duration
	now               func() time.Time

	mu                sync.Mutex
	current           *tls.Certificate
	certPEM, keyPEM   []byte
	certInfo, keyInfo os.FileInfo
	checked           time.Time
	lastError         string
}

// newCertReloader loads the pair once; it fails when the files do not
// hold a valid certificate and key.
func newCertReloader(certFile, keyFile string) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, recheck: certRecheckInterval, now: time.Now}
	if err := r.refresh(); err != nil {
		return nil, err
	}
	return r, nil
}

// GetCertificate is tls.Config.GetCertificate: the current pair, reloaded
// first if the files changed.
func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.refreshLocked(); err != nil {
		if r.current == nil {
			return nil, err
		}
		if err.Error() != r.lastError {
			klog.ErrorS(err, "Keeping the previous serving certificate")
		}
		r.lastError = err.Error()
	}
	return r.current, nil
}

// refresh is refreshLocked under the lock.
func (r *certReloader) refresh() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.refreshLocked()
}

// refreshLocked reloads the pair if the files changed; r.mu must be held.
func (r *certReloader) refreshLocked() error {
	certInfo, err := os.Stat(r.certFile)
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	keyInfo, err := os.Stat(r.keyFile)
	if err != nil {
		return fmt.Errorf("serving key: %w", err)
	}
	now := r.now()
	if r.current != nil && sameFile(r.certInfo, certInfo) && sameFile(r.keyInfo, keyInfo) && now.Sub(r.checked) < r.recheck {
		return nil
	}
	certPEM, err := os.ReadFile(r.certFile)
	if err != nil {
		return fmt.Errorf("read serving certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(r.keyFile)
	if err != nil {
		return fmt.Errorf("read serving key: %w", err)
	}
	if r.current == nil || !bytes.Equal(certPEM, r.certPEM) || !bytes.Equal(keyPEM, r.keyPEM) {
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return fmt.Errorf("load serving certificate %s and key %s: %w", r.certFile, r.keyFile, err)
		}
		r.current, r.certPEM, r.keyPEM = &pair, certPEM, keyPEM
		r.lastError = ""
		details := []any{"cert", r.certFile, "key", r.keyFile}
		if pair.Leaf != nil {
			details = append(details, "subject", pair.Leaf.Subject.String(), "notAfter", pair.Leaf.NotAfter)
		}
		klog.InfoS("Loaded serving certificate", details...)
	}
	r.certInfo, r.keyInfo, r.checked = certInfo, keyInfo, now
	return nil
}

// sameFile reports whether two stats describe the same, unchanged file.
func sameFile(a, b os.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}
