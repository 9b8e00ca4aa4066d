package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// fakeBinaries writes a file per binary into a temporary directory, each
// with its name as content and the given mode.
func fakeBinaries(t *testing.T, mode os.FileMode) string {
	t.Helper()
	dir := t.TempDir()
	for _, binary := range Binaries {
		if err := os.WriteFile(filepath.Join(dir, binary), []byte("#!fake "+binary+"\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func testOptions(binaryDir string) Options {
	return Options{
		BinaryDir: binaryDir, Arch: "arm64", Version: "1.2.3", Revision: "0123abcd",
		Source: "https://github.com/toposnap/toposnap", Epoch: time.Unix(1700000000, 0),
	}
}

// buildTarball builds opts into a tarball in a fresh directory and reads
// it back as `crane push` would.
func buildTarball(t *testing.T, opts Options) (v1.Image, v1.Hash) {
	t.Helper()
	reference, err := name.NewTag("ghcr.io/toposnap/toposnap:" + opts.Version)
	if err != nil {
		t.Fatal(err)
	}
	built, err := Build(opts, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "image.tar")
	if err := Write(out, reference, built); err != nil {
		t.Fatal(err)
	}
	written, err := built.Digest()
	if err != nil {
		t.Fatal(err)
	}
	image, err := tarball.ImageFromPath(out, &reference)
	if err != nil {
		t.Fatalf("read back %s: %v", out, err)
	}
	read, err := image.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if read != written {
		t.Fatalf("tarball reads back as %s, but the tool reported %s", read, written)
	}
	return image, read
}

// layerFiles lists the image's files: name -> header.
func layerFiles(t *testing.T, image v1.Image) map[string]*tar.Header {
	t.Helper()
	layers, err := image.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1 on an empty base", len(layers))
	}
	contents, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = contents.Close() }()
	files := map[string]*tar.Header{}
	reader := tar.NewReader(contents)
	for {
		header, err := reader.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		files["/"+strings.TrimSuffix(header.Name, "/")] = header
	}
}

func TestImageHoldsTheBinariesRunnableAsNonRoot(t *testing.T) {
	// 0700 on disk: the image still makes them 0755, runnable by 65532.
	image, _ := buildTarball(t, testOptions(fakeBinaries(t, 0o700)))
	files := layerFiles(t, image)
	for _, binary := range Binaries {
		path := BinDir + "/" + binary
		header, ok := files[path]
		switch {
		case !ok:
			t.Errorf("%s missing from the layer", path)
		case header.Typeflag != tar.TypeReg || header.Mode != 0o755 || header.Uid != 0 || header.Gid != 0:
			t.Errorf("%s: type %c, mode %o, owner %d:%d; want a regular file 0755 owned by root", path, header.Typeflag, header.Mode, header.Uid, header.Gid)
		case !header.ModTime.Equal(time.Unix(1700000000, 0)):
			t.Errorf("%s: mtime %s, want the epoch", path, header.ModTime)
		}
	}
	if tmp, ok := files["/tmp"]; !ok || tmp.Typeflag != tar.TypeDir || tmp.Mode != 0o1777 {
		t.Errorf("/tmp: %+v, want a directory with mode 1777", tmp)
	}

	config, err := image.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	wantLabels := map[string]string{
		"org.opencontainers.image.source":   "https://github.com/toposnap/toposnap",
		"org.opencontainers.image.version":  "1.2.3",
		"org.opencontainers.image.revision": "0123abcd",
	}
	if config.RootFS.Type != "layers" || len(config.RootFS.DiffIDs) != 1 {
		t.Errorf("rootfs %+v, want type layers with one diff_id, as docker load needs", config.RootFS)
	}
	if config.Config.User != "65532:65532" || config.OS != "linux" || config.Architecture != "arm64" ||
		len(config.Config.Entrypoint) != 0 || len(config.Config.Cmd) != 0 {
		t.Errorf("config: user %q, platform %s/%s, entrypoint %q, cmd %q; want 65532:65532, linux/arm64, none",
			config.Config.User, config.OS, config.Architecture, config.Config.Entrypoint, config.Config.Cmd)
	}
	for key, want := range wantLabels {
		if got := config.Config.Labels[key]; got != want {
			t.Errorf("label %s = %q, want %q", key, got, want)
		}
	}
}

func TestImageDigestDependsOnlyOnTheInputs(t *testing.T) {
	opts := testOptions(fakeBinaries(t, 0o755))
	_, first := buildTarball(t, opts)
	// Same content, other directory, other file mtimes and modes.
	again := fakeBinaries(t, 0o700)
	if err := os.Chtimes(filepath.Join(again, Binaries[0]), time.Now(), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	opts.BinaryDir = again
	if _, second := buildTarball(t, opts); second != first {
		t.Fatalf("identical binaries gave digests %s and %s", first, second)
	}
	if err := os.WriteFile(filepath.Join(again, Binaries[0]), []byte("changed"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, changed := buildTarball(t, opts); changed == first {
		t.Fatalf("a changed binary kept digest %s", first)
	}
}

func TestBuildNamesAMissingBinary(t *testing.T) {
	dir := fakeBinaries(t, 0o755)
	if err := os.Remove(filepath.Join(dir, "toposnap-webhook")); err != nil {
		t.Fatal(err)
	}
	_, err := Build(testOptions(dir), t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "toposnap-webhook") {
		t.Fatalf("error %v, want one naming toposnap-webhook", err)
	}
}

// TestOCIArchiveKeepsTheManifest: the OCI layout archive holds an index
// naming the reference and the very manifest the tool built (OCI media
// types, same digest), and two builds give the same archive bytes.
func TestOCIArchiveKeepsTheManifest(t *testing.T) {
	opts := testOptions(fakeBinaries(t, 0o755))
	opts.OCI = true
	reference, err := name.NewTag("ghcr.io/toposnap/toposnap:" + opts.Version)
	if err != nil {
		t.Fatal(err)
	}
	var archives [2][]byte
	for i := range archives {
		built, err := Build(opts, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), "image.oci.tar")
		if err := WriteOCI(out, reference, built, opts.Epoch); err != nil {
			t.Fatal(err)
		}
		if archives[i], err = os.ReadFile(out); err != nil {
			t.Fatal(err)
		}
		want, err := built.Digest()
		if err != nil {
			t.Fatal(err)
		}
		dir := untar(t, out)
		index, err := layout.ImageIndexFromPath(dir)
		if err != nil {
			t.Fatalf("read OCI layout: %v", err)
		}
		manifest, err := index.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		if len(manifest.Manifests) != 1 || manifest.Manifests[0].Digest != want ||
			manifest.Manifests[0].MediaType != types.OCIManifestSchema1 ||
			manifest.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != reference.String() {
			t.Fatalf("index %+v, want one OCI manifest %s named %s", manifest.Manifests, want, reference)
		}
		image, err := index.Image(want)
		if err != nil {
			t.Fatal(err)
		}
		if files := layerFiles(t, image); files["/usr/local/bin/toposnap-driver"] == nil {
			t.Fatalf("layer holds %v, want the binaries", files)
		}
	}
	if !bytes.Equal(archives[0], archives[1]) {
		t.Fatal("two builds of the same input gave different OCI archives")
	}
}

// untar unpacks a tar into a fresh directory.
func untar(t *testing.T, archive string) string {
	t.Helper()
	file, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	dir := t.TempDir()
	reader := tar.NewReader(file)
	for {
		header, err := reader.Next()
		if errors.Is(err, io.EOF) {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		target := filepath.Join(dir, filepath.FromSlash(header.Name))
		if header.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(target, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			t.Fatal(err)
		}
		content, err := io.ReadAll(reader)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(target, content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
