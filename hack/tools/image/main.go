// Command image packs toposnap's six static binaries into a container
// image without a Docker engine: an empty base, one layer with the
// binaries under /usr/local/bin, written twice: as an OCI image layout
// archive (OCI media types, manifest kept) and as a `docker save` tarball
// (what `crane push` and older Docker read), each with a digest that
// depends only on the binaries and the flags. hack/image.sh builds
// the binaries and runs it (make image).
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
)

func main() {
	opts := Options{Arch: os.Getenv("GOARCH")}
	if opts.Arch == "" {
		opts.Arch = runtime.GOARCH
	}
	repository := flag.String("repository", "ghcr.io/toposnap/toposnap", "image repository; the tag is --version")
	out := flag.String("out", "bin/toposnap-image.tar", "where to write the docker-save tarball")
	ociOut := flag.String("oci-out", "bin/toposnap-image.oci.tar", "where to write the OCI image layout archive (empty: not written)")
	flag.StringVar(&opts.BinaryDir, "bin-dir", "bin", "directory holding the six linux binaries")
	flag.StringVar(&opts.Arch, "arch", opts.Arch, "image architecture, as GOARCH (default $GOARCH, else this machine's)")
	flag.StringVar(&opts.Version, "version", "0.1.0", "image tag and org.opencontainers.image.version label")
	flag.StringVar(&opts.Revision, "revision", "", "org.opencontainers.image.revision label, e.g. $(git rev-parse HEAD)")
	flag.StringVar(&opts.Source, "source", "https://github.com/toposnap/toposnap", "org.opencontainers.image.source label")
	epoch := flag.Int64("epoch", sourceDateEpoch(), "Unix time of every file and of the image's creation (default $SOURCE_DATE_EPOCH, else 0)")
	flag.Parse()
	opts.Epoch = time.Unix(*epoch, 0)
	if err := run(opts, *repository, *out, *ociOut); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(opts Options, repository, out, ociOut string) error {
	reference, err := name.NewTag(repository + ":" + opts.Version)
	if err != nil {
		return fmt.Errorf("image reference: %w", err)
	}
	scratch, err := os.MkdirTemp("", "toposnap-image-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(scratch) }()
	image, err := Build(opts, scratch)
	if err != nil {
		return err
	}
	if err := Write(out, reference, image); err != nil {
		return err
	}
	digest, err := image.Digest()
	if err != nil {
		return fmt.Errorf("image digest: %w", err)
	}
	info, err := os.Stat(out)
	if err != nil {
		return err
	}
	fmt.Printf("%s@%s\nwrote %s (docker save, %.1f MiB, linux/%s)\n", reference, digest, out, float64(info.Size())/(1<<20), opts.Arch)
	if ociOut == "" {
		return nil
	}
	opts.OCI = true
	ociImage, err := Build(opts, scratch)
	if err != nil {
		return err
	}
	if err := WriteOCI(ociOut, reference, ociImage, opts.Epoch); err != nil {
		return err
	}
	ociDigest, err := ociImage.Digest()
	if err != nil {
		return fmt.Errorf("image digest: %w", err)
	}
	fmt.Printf("%s@%s\nwrote %s (OCI image layout)\n", reference, ociDigest, ociOut)
	return nil
}

// sourceDateEpoch is $SOURCE_DATE_EPOCH (reproducible-builds.org), or 0.
func sourceDateEpoch() int64 {
	epoch, err := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64)
	if err != nil {
		return 0
	}
	return epoch
}
