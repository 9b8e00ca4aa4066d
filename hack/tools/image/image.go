package main

import (
	"archive/tar"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Binaries are the six commands the image holds, under BinDir.
var Binaries = []string{
	"toposnap-driver",
	"toposnap-provisioner",
	"toposnap-controller",
	"toposnap-snapshotter",
	"toposnap-extender",
	"toposnap-webhook",
}

const (
	// BinDir is where the binaries are in the image; the chart runs each
	// container with command: [BinDir/<binary>], so the image has no
	// entrypoint.
	BinDir = "/usr/local/bin"
	// User runs the components unless a pod says otherwise (the node
	// plugin runs as root through its securityContext): distroless's
	// "nonroot", by number, so no /etc/passwd is needed.
	User = "65532:65532"
)

// Options say what goes into the image and how it is labelled.
type Options struct {
	// BinaryDir holds the six binaries, built for OS linux and Arch.
	BinaryDir string
	// Arch is the image's architecture (GOARCH), e.g. amd64 or arm64.
	Arch string
	// Version, Revision and Source become the OCI labels
	// org.opencontainers.image.{version,revision,source}; an empty
	// Revision is left out.
	Version, Revision, Source string
	// Epoch is every file's mtime and the image's creation time, so that
	// the same binaries always give the same digest (SOURCE_DATE_EPOCH).
	Epoch time.Time
	// OCI gives the manifest, config and layer OCI media types (for the OCI
	// layout archive) instead of Docker's (for the docker-save tarball,
	// which stores no manifest: readers rebuild a Docker one).
	OCI bool
}

// Build returns the image: an empty base plus one layer holding /tmp
// (1777) and the binaries under BinDir (0755), all owned by root, every
// timestamp at opts.Epoch. scratchDir holds the layer's uncompressed tar
// until the image is written.
func Build(opts Options, scratchDir string) (v1.Image, error) {
	layerPath := filepath.Join(scratchDir, "layer.tar")
	if err := writeLayer(layerPath, opts.BinaryDir, opts.Epoch); err != nil {
		return nil, err
	}
	// Default rather than BestSpeed: a third smaller for about a second
	// more, and output as stable as Go's compress/gzip.
	layerOptions := []tarball.LayerOption{tarball.WithCompressionLevel(gzip.DefaultCompression), tarball.WithCompressedCaching}
	base := empty.Image
	if opts.OCI {
		layerOptions = append(layerOptions, tarball.WithMediaType(types.OCILayer))
		base = mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	}
	layer, err := tarball.LayerFromFile(layerPath, layerOptions...)
	if err != nil {
		return nil, fmt.Errorf("read layer %s: %w", layerPath, err)
	}
	labels := map[string]string{
		"org.opencontainers.image.source":  opts.Source,
		"org.opencontainers.image.version": opts.Version,
	}
	if opts.Revision != "" {
		labels["org.opencontainers.image.revision"] = opts.Revision
	}
	created := v1.Time{Time: opts.Epoch.UTC()}
	image, err := mutate.ConfigFile(base, &v1.ConfigFile{
		Architecture: opts.Arch,
		OS:           "linux",
		Created:      created,
		// Docker refuses to load an image whose rootfs type is not "layers".
		RootFS: v1.RootFS{Type: "layers"},
		Config: v1.Config{
			User:       User,
			Env:        []string{"PATH=" + BinDir},
			WorkingDir: "/",
			Labels:     labels,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("set image config: %w", err)
	}
	image, err = mutate.Append(image, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: created, CreatedBy: "hack/tools/image: " + BinDir + "/toposnap-*, /tmp"},
	})
	if err != nil {
		return nil, fmt.Errorf("add layer: %w", err)
	}
	return image, nil
}

// Write writes image to out as a `docker save` tarball tagged reference,
// which `docker load`, `crane push`, `skopeo copy docker-archive:`, `ctr
// image import` and `kind load image-archive` all read.
func Write(out string, reference name.Tag, image v1.Image) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(out), err)
	}
	// Written beside out and renamed, so a failed build leaves no half tarball.
	partial := out + ".partial"
	if err := tarball.WriteToFile(partial, reference, image); err != nil {
		_ = os.Remove(partial)
		return fmt.Errorf("write %s: %w", out, err)
	}
	if err := os.Rename(partial, out); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return nil
}

// WriteOCI writes image to out as a tar of an OCI image layout (index.json
// naming reference, oci-layout, blobs/), which `skopeo copy oci-archive:`,
// `ctr image import`, `podman load` and `docker load` (25+) read with the
// manifest, and so the digest, unchanged. Entries are sorted and stamped
// with epoch, so the archive is as reproducible as the image.
func WriteOCI(out string, reference name.Tag, image v1.Image, epoch time.Time) error {
	dir, err := os.MkdirTemp("", "toposnap-oci-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	path, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("create OCI layout: %w", err)
	}
	if err := path.AppendImage(image, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": reference.String()})); err != nil {
		return fmt.Errorf("write OCI layout: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	partial := out + ".partial"
	if err := tarDir(partial, dir, epoch); err != nil {
		_ = os.Remove(partial)
		return fmt.Errorf("write %s: %w", out, err)
	}
	return os.Rename(partial, out)
}

// tarDir archives dir's files (relative names, sorted, root-owned, mtime
// epoch) into out.
func tarDir(out, dir string, epoch time.Time) (err error) {
	file, err := os.Create(out)
	if err != nil {
		return err
	}
	defer func() {
		if closeErr := file.Close(); err == nil {
			err = closeErr
		}
	}()
	writer := tar.NewWriter(file)
	var names []string
	if err := filepath.WalkDir(dir, func(p string, entry fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		names = append(names, p)
		return nil
	}); err != nil {
		return err
	}
	sort.Strings(names)
	for _, p := range names {
		info, err := os.Stat(p)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		header := &tar.Header{Name: filepath.ToSlash(rel), ModTime: epoch, Format: tar.FormatPAX, Mode: 0o644, Typeflag: tar.TypeReg, Size: info.Size()}
		if info.IsDir() {
			header.Name, header.Mode, header.Typeflag, header.Size = header.Name+"/", 0o755, tar.TypeDir, 0
			if err := writer.WriteHeader(header); err != nil {
				return err
			}
			continue
		}
		if err := addFile(writer, p, func(int64) *tar.Header { return header }); err != nil {
			return err
		}
	}
	return writer.Close()
}

// writeLayer writes the layer's uncompressed tar to layerPath: the
// directories down to BinDir, /tmp, then the binaries in Binaries' order.
func writeLayer(layerPath, binaryDir string, epoch time.Time) (err error) {
	file, err := os.Create(layerPath)
	if err != nil {
		return fmt.Errorf("create layer: %w", err)
	}
	defer func() {
		if closeErr := file.Close(); err == nil && closeErr != nil {
			err = fmt.Errorf("write layer: %w", closeErr)
		}
	}()
	writer := tar.NewWriter(file)
	header := func(name string, typeflag byte, mode, size int64) *tar.Header {
		return &tar.Header{
			Name: name, Typeflag: typeflag, Mode: mode, Size: size,
			Uid: 0, Gid: 0, Uname: "root", Gname: "root",
			ModTime: epoch.UTC(),
		}
	}
	for _, dir := range []string{"usr/", "usr/local/", "usr/local/bin/"} {
		if err := writer.WriteHeader(header(dir, tar.TypeDir, 0o755, 0)); err != nil {
			return fmt.Errorf("write layer: %w", err)
		}
	}
	if err := writer.WriteHeader(header("tmp/", tar.TypeDir, 0o1777, 0)); err != nil {
		return fmt.Errorf("write layer: %w", err)
	}
	for _, binary := range Binaries {
		if err := addFile(writer, filepath.Join(binaryDir, binary), func(size int64) *tar.Header {
			return header(path.Join(BinDir[1:], binary), tar.TypeReg, 0o755, size)
		}); err != nil {
			return err
		}
	}
	if err := writer.Close(); err != nil {
		return fmt.Errorf("write layer: %w", err)
	}
	return nil
}

// addFile copies the regular file source into the layer under the header
// that header returns for its size.
func addFile(writer *tar.Writer, source string, header func(size int64) *tar.Header) error {
	file, err := os.Open(source)
	if err != nil {
		return fmt.Errorf("binary %s: %w (build the six commands first, see hack/image.sh)", source, err)
	}
	defer func() { _ = file.Close() }()
	info, err := file.Stat()
	if err != nil {
		return fmt.Errorf("binary %s: %w", source, err)
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("binary %s is not a regular file", source)
	}
	if err := writer.WriteHeader(header(info.Size())); err != nil {
		return fmt.Errorf("add %s to layer: %w", source, err)
	}
	if _, err := io.Copy(writer, file); err != nil {
		return fmt.Errorf("add %s to layer: %w", source, err)
	}
	return nil
}
