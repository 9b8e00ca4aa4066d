package fscopy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/toposnap/toposnap/internal/fscopy/treetest"
)

func TestTreeKeepsEverything(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the fixture sets file owners and needs root")
	}
	src := filepath.Join(t.TempDir(), "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := treetest.Tricky(src); err != nil {
		t.Fatal(err)
	}
	want, err := treetest.Describe(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "dst")
	stats, err := Tree(context.Background(), src, dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := treetest.Describe(dst)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range treetest.Diff(want, got, false) {
		t.Error(d)
	}
	if stats.Symlinks != 2 || stats.Others != 1 {
		t.Errorf("stats = %+v, want 2 symlinks and 1 fifo", stats)
	}
}

func TestTreeRefusesExistingDestinationAndFiles(t *testing.T) {
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		src, dst string
	}{
		{"destination exists", src, t.TempDir()},
		{"source is a file", filepath.Join(src, "f"), filepath.Join(t.TempDir(), "d")},
		{"source missing", filepath.Join(src, "missing"), filepath.Join(t.TempDir(), "d")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Tree(context.Background(), tt.src, tt.dst, Options{}); err == nil {
				t.Fatal("copy succeeded, want an error")
			}
		})
	}
}

func TestTreeStopsWhenCancelled(t *testing.T) {
	src := t.TempDir()
	if err := treetest.Bench(src, 1<<20, 500); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Tree(ctx, src, filepath.Join(t.TempDir(), "dst"), Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestProgressReachesSize(t *testing.T) {
	src := t.TempDir()
	if err := treetest.Bench(src, 3<<20, 50); err != nil {
		t.Fatal(err)
	}
	total, err := Size(src)
	if err != nil {
		t.Fatal(err)
	}
	var last int64
	_, err = Tree(context.Background(), src, filepath.Join(t.TempDir(), "dst"), Options{
		Workers:  1,
		Progress: func(copied int64) { last = copied },
	})
	if err != nil {
		t.Fatal(err)
	}
	if last != total {
		t.Fatalf("progress ended at %d, want %d", last, total)
	}
}
