package main

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"
)

// A layer lists every parent directory before its entries, keeps symlinks
// as links, and is the same bytes for the same files.
func TestLayerTar(t *testing.T) {
	files := []File{
		{Path: "usr/local/bin/tool", Content: []byte("#!/bin/sh\n"), Mode: 0o755},
		{Path: "bin/sh", Linkname: "/bin/busybox"},
		{Path: "tmp", Dir: true, Mode: 0o1777},
	}
	first, err := layerTar(files)
	if err != nil {
		t.Fatal(err)
	}
	second, _ := layerTar(files)
	if !bytes.Equal(first, second) {
		t.Fatal("the same files gave different layers")
	}
	reader := tar.NewReader(bytes.NewReader(first))
	var names []string
	links := map[string]string{}
	for {
		header, err := reader.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, header.Name)
		if header.Typeflag == tar.TypeSymlink {
			links[header.Name] = header.Linkname
		}
	}
	want := []string{"bin/", "bin/sh", "tmp/", "usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/tool"}
	if len(names) != len(want) {
		t.Fatalf("entries %v, want %v", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("entries %v, want %v", names, want)
		}
	}
	if links["bin/sh"] != "/bin/busybox" {
		t.Errorf("bin/sh links to %q, want /bin/busybox", links["bin/sh"])
	}
}

// Image file names are the references made safe for a file system.
func TestFileName(t *testing.T) {
	if got := (Spec{Reference: "registry.k8s.io/pause:3.10.2"}).FileName(); got != "registry.k8s.io_pause_3.10.2.tar" {
		t.Fatalf("FileName = %q", got)
	}
}
