package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/toposnap/toposnap/internal/certs/certstest"
)

// reloadDeadline bounds how long a rotation may take to be served: the
// files are watched, so it is milliseconds unless the machine is loaded.
const reloadDeadline = 20 * time.Second

// served is the common name of the certificate s serves now.
func served(t *testing.T, s *Serving) string {
	t.Helper()
	certificate, err := s.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	return certstest.Leaf(t, certificate)
}

// eventuallyServes waits until s serves the pair named want.
func eventuallyServes(t *testing.T, s *Serving, want string) {
	t.Helper()
	deadline := time.Now().Add(reloadDeadline)
	for {
		got := served(t, s)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("serves %s %s after the rotation, want %s", got, reloadDeadline, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// running starts following files and stops when the test ends.
func running(t *testing.T, files certstest.Files) *Serving {
	t.Helper()
	s, err := NewServing(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go s.Run(ctx)
	return s
}

func TestServingFollowsRotations(t *testing.T) {
	first, second := certstest.NewPair(t, "first"), certstest.NewPair(t, "second")
	tests := []struct {
		name string
		// rotate changes the files and says which pair they hold now.
		rotate func(t *testing.T, files certstest.Files) string
	}{
		{"pair rewritten in place", func(t *testing.T, files certstest.Files) string {
			files.WriteInPlace(t, second)
			return second.Name
		}},
		{"pair renamed over the old files", func(t *testing.T, files certstest.Files) string {
			files.Swap(t, second)
			return second.Name
		}},
		{"content changed with size and mtime unchanged", func(t *testing.T, files certstest.Files) string {
			same := sameSizePair(t, first)
			info, err := os.Stat(files.Cert)
			if err != nil {
				t.Fatal(err)
			}
			files.WriteInPlace(t, same)
			for _, path := range []string{files.Cert, files.Key} {
				if err := os.Chtimes(path, info.ModTime(), info.ModTime()); err != nil {
					t.Fatal(err)
				}
			}
			return same.Name
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is served after the rotation", func(t *testing.T) {
			files := certstest.NewFiles(t)
			files.WriteInPlace(t, first)
			s := running(t, files)
			if got := served(t, s); got != "first" {
				t.Fatalf("serves %s, want first", got)
			}
			eventuallyServes(t, s, tt.rotate(t, files))
		})
	}
}

func TestServingFollowsASecretVolume(t *testing.T) {
	first, second, third := certstest.NewPair(t, "first"), certstest.NewPair(t, "second"), certstest.NewPair(t, "third")
	volume := certstest.NewSecretVolume(t, first)
	s := running(t, volume.Files)
	if got := served(t, s); got != "first" {
		t.Fatalf("serves %s, want first", got)
	}
	// Twice: the watch must be re-armed on the new files after each swap.
	volume.Update(t, second)
	eventuallyServes(t, s, "second")
	volume.Update(t, third)
	eventuallyServes(t, s, "third")
}

func TestServingKeepsThePreviousPairUntilTheKeyFollows(t *testing.T) {
	first, second := certstest.NewPair(t, "first"), certstest.NewPair(t, "second")
	files := certstest.NewFiles(t)
	files.WriteInPlace(t, first)
	s := running(t, files)
	// The certificate alone changes: the files do not match, so nothing
	// changes while they stay so.
	files.Swap(t, certstest.Pair{Name: "mismatch", CertPEM: second.CertPEM, KeyPEM: first.KeyPEM})
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if got := served(t, s); got != "first" {
			t.Fatalf("with mismatched files serves %s, want first", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	files.Swap(t, second)
	eventuallyServes(t, s, "second")
}

func TestNewServingRefusesMissingOrInvalidFiles(t *testing.T) {
	first := certstest.NewPair(t, "first")
	tests := []struct {
		name  string
		write func(files certstest.Files)
	}{
		{"missing files", func(certstest.Files) {}},
		{"certificate not PEM", func(files certstest.Files) {
			files.WriteInPlace(t, certstest.Pair{CertPEM: []byte("not a certificate"), KeyPEM: first.KeyPEM})
		}},
		{"key of another pair", func(files certstest.Files) {
			files.WriteInPlace(t, certstest.Pair{CertPEM: first.CertPEM, KeyPEM: certstest.NewPair(t, "other").KeyPEM})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := certstest.NewFiles(t)
			tt.write(files)
			if _, err := NewServing(files.Cert, files.Key); err == nil || !strings.Contains(err.Error(), files.Cert) {
				t.Fatalf("err = %v, want one naming %s", err, files.Cert)
			}
		})
	}
}

// sameSizePair is a new pair named third whose PEM files are as long as
// like's, so that rewriting like's files with it leaves their size alone.
func sameSizePair(t *testing.T, like certstest.Pair) certstest.Pair {
	t.Helper()
	for range 200 {
		pair := certstest.NewPair(t, "third")
		if len(pair.CertPEM) == len(like.CertPEM) && len(pair.KeyPEM) == len(like.KeyPEM) && !bytes.Equal(pair.CertPEM, like.CertPEM) {
			return pair
		}
	}
	t.Fatal("no pair of the same size found")
	return certstest.Pair{}
}
