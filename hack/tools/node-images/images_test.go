package main

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"strings"
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

// ldd's answer gives the libraries and the loader, not the vDSO.
func TestSharedLibraries(t *testing.T) {
	ldd := "\tlinux-vdso.so.1 (0x00007ffd)\n" +
		"\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f12)\n" +
		"\tlibacl.so.1 => /lib/x86_64-linux-gnu/libacl.so.1 (0x00007f13)\n" +
		"\t/lib64/ld-linux-x86-64.so.2 (0x00007f14)\n"
	got := sharedLibraries(ldd)
	want := []string{"/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libacl.so.1", "/lib64/ld-linux-x86-64.so.2"}
	if len(got) != len(want) {
		t.Fatalf("sharedLibraries = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("sharedLibraries = %v, want %v", got, want)
		}
	}
}

// In the glibc image the host's dd and dash replace busybox's dd and sh
// (the suite writes there with oflag=nocache, and busybox's sh would run
// its own dd whatever PATH says), with the libraries they load; every other
// applet stays busybox's.
func TestHostToolsReplaceApplets(t *testing.T) {
	for _, binary := range []string{"/bin/dd", "/bin/dash"} {
		if _, err := os.Stat(binary); err != nil {
			t.Skipf("no %s on this machine", binary)
		}
	}
	shell := []File{
		{Path: "bin/busybox", Source: "/bin/sh", Mode: 0o755},
		{Path: "bin/dd", Linkname: "/bin/busybox"},
		{Path: "bin/sh", Linkname: "/bin/busybox"},
		{Path: "bin/tar", Linkname: "/bin/busybox"},
	}
	files, err := withHostTools(shell, map[string]string{"dd": "/bin/dd", "sh": "/bin/dash"})
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string]File{}
	for _, f := range files {
		if _, twice := byPath[f.Path]; twice {
			t.Fatalf("%s is in the image twice", f.Path)
		}
		byPath[f.Path] = f
	}
	if dd := byPath["bin/dd"]; dd.Source != "/bin/dd" || dd.Linkname != "" {
		t.Errorf("bin/dd = %+v, want the host's /bin/dd", dd)
	}
	if sh := byPath["bin/sh"]; sh.Source != "/bin/dash" || sh.Linkname != "" {
		t.Errorf("bin/sh = %+v, want the host's dash", sh)
	}
	if tar := byPath["bin/tar"]; tar.Linkname != "/bin/busybox" {
		t.Errorf("bin/tar = %+v, want busybox's applet", tar)
	}
	loader := false
	for p := range byPath {
		if strings.Contains(p, "ld-linux") {
			loader = true
		}
	}
	if !loader {
		t.Errorf("no dynamic loader among %v", files)
	}
}
