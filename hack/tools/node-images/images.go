package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Inputs are the binaries the images are made of and the references they
// are stored under.
type Inputs struct {
	Busybox, Pause, Registrar, Agnhost, KubeScheduler                string
	PauseRef, BusyboxRef, AgnhostRef, RegistrarRef, KubeSchedulerRef string
	// ShellRefs are further references given busybox's file system: images
	// the e2e suite runs only shell commands in (nginx), which cannot be
	// built here as they are upstream.
	ShellRefs []string
	// GlibcRef is the suite's glibc (Debian) image, glibc-dns-testing: it
	// gets busybox's file system with GlibcTools, host binaries of this
	// (Debian) machine by the command name they answer to, in place of
	// busybox's applets of that name, with the shared libraries they load.
	// The suite writes block volumes there with GNU dd's oflag=nocache,
	// which busybox's dd does not know; and its sh must not be busybox's,
	// which runs its own applets before anything on PATH.
	GlibcRef   string
	GlibcTools map[string]string // command name -> host binary
}

// File is one regular file, symlink or directory of an image's layer.
type File struct {
	Path     string // inside the image, without a leading slash
	Source   string // host file to copy (regular files)
	Content  []byte // literal content (regular files without Source)
	Linkname string // symlink target
	Dir      bool
	Mode     int64
}

// Spec is one image: its files, entrypoint and user.
type Spec struct {
	Reference  string
	Files      []File
	Entrypoint []string
	Cmd        []string
	Env        []string
}

const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Specs lists the images: the sandbox, busybox (the suite's default test
// image), agnhost, the registrar and kube-scheduler (the chart's second
// scheduler). Every image but pause gets busybox's shell and tools, which
// the suite's exec checks and operators' `kubectl exec` rely on.
func (in Inputs) Specs() ([]Spec, error) {
	for flagName, file := range map[string]string{"busybox": in.Busybox, "pause": in.Pause, "registrar": in.Registrar, "agnhost": in.Agnhost, "kube-scheduler": in.KubeScheduler} {
		if file == "" {
			return nil, fmt.Errorf("-%s is required", flagName)
		}
		if _, err := os.Stat(file); err != nil {
			return nil, fmt.Errorf("-%s: %w", flagName, err)
		}
	}
	shell, err := busyboxFiles(in.Busybox)
	if err != nil {
		return nil, err
	}
	specs := []Spec{
		{Reference: in.PauseRef, Files: []File{{Path: "pause", Source: in.Pause, Mode: 0o755}}, Entrypoint: []string{"/pause"}},
		{Reference: in.BusyboxRef, Files: shell, Cmd: []string{"sh"}},
		{
			Reference:  in.AgnhostRef,
			Files:      append(slicesClone(shell), File{Path: "agnhost", Source: in.Agnhost, Mode: 0o755}, File{Path: "agnhost-2", Linkname: "agnhost"}, File{Path: "uploads", Dir: true, Mode: 0o777}),
			Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"},
		},
		{Reference: in.RegistrarRef, Files: append(slicesClone(shell), File{Path: "usr/local/bin/csi-node-driver-registrar", Source: in.Registrar, Mode: 0o755}), Entrypoint: []string{"/usr/local/bin/csi-node-driver-registrar"}},
		{Reference: in.KubeSchedulerRef, Files: append(slicesClone(shell), File{Path: "usr/local/bin/kube-scheduler", Source: in.KubeScheduler, Mode: 0o755})},
	}
	for _, reference := range in.ShellRefs {
		specs = append(specs, Spec{Reference: reference, Files: shell, Cmd: []string{"sh"}})
	}
	if in.GlibcRef != "" {
		files, err := withHostTools(shell, in.GlibcTools)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", in.GlibcRef, err)
		}
		specs = append(specs, Spec{Reference: in.GlibcRef, Files: files, Cmd: []string{"sh"}})
	}
	return specs, nil
}

// withHostTools is files with each host binary of tools (by command name)
// at bin/<name>, replacing the busybox applet of that name wherever busybox
// put it, plus the shared libraries and the loader it needs, at their host
// paths.
func withHostTools(files []File, tools map[string]string) ([]File, error) {
	var out []File
	for _, f := range files {
		if _, replaced := tools[path.Base(f.Path)]; replaced && f.Linkname == "/bin/busybox" {
			continue
		}
		out = append(out, f)
	}
	names := make([]string, 0, len(tools))
	for name := range tools {
		names = append(names, name)
	}
	sort.Strings(names)
	libraries := map[string]bool{}
	for _, name := range names {
		tool := tools[name]
		out = append(out, File{Path: "bin/" + name, Source: tool, Mode: 0o755})
		ldd, err := exec.Command("ldd", tool).Output()
		if err != nil {
			return nil, fmt.Errorf("ldd %s: %w", tool, err)
		}
		for _, library := range sharedLibraries(string(ldd)) {
			libraries[library] = true
		}
	}
	var sorted []string
	for library := range libraries {
		sorted = append(sorted, library)
	}
	sort.Strings(sorted)
	for _, library := range sorted {
		// Read through symlinks: the image has no merged /usr to follow them.
		out = append(out, File{Path: strings.TrimPrefix(library, "/"), Source: library, Mode: 0o755})
	}
	return out, nil
}

// sharedLibraries reads ldd's answer: the absolute paths of the libraries
// and of the loader (the vDSO has none).
func sharedLibraries(ldd string) []string {
	var paths []string
	for _, line := range strings.Split(ldd, "\n") {
		fields := strings.Fields(line)
		switch {
		case len(fields) >= 3 && fields[1] == "=>" && strings.HasPrefix(fields[2], "/"):
			paths = append(paths, fields[2])
		case len(fields) >= 1 && strings.HasPrefix(fields[0], "/"):
			paths = append(paths, fields[0])
		}
	}
	return paths
}

func slicesClone(files []File) []File { return append([]File(nil), files...) }

// busyboxFiles is a root file system of busybox: the binary, a link per
// applet at the path busybox itself lists, /tmp, and passwd/group files
// naming root and nobody.
func busyboxFiles(busybox string) ([]File, error) {
	out, err := exec.Command(busybox, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list-full: %w", busybox, err)
	}
	files := []File{
		{Path: "bin/busybox", Source: busybox, Mode: 0o755},
		{Path: "tmp", Dir: true, Mode: 0o1777},
		{Path: "etc/passwd", Content: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"), Mode: 0o644},
		{Path: "etc/group", Content: []byte("root:x:0:\nnobody:x:65534:\n"), Mode: 0o644},
		{Path: "root", Dir: true, Mode: 0o700},
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "bin/busybox" {
			continue
		}
		files = append(files, File{Path: applet, Linkname: "/bin/busybox"})
	}
	return files, nil
}

// FileName is the tarball's name for the image: its reference made safe
// for a file name.
func (s Spec) FileName() string {
	return strings.NewReplacer("/", "_", ":", "_").Replace(s.Reference) + ".tar"
}

// WriteTarball writes the image as a `docker save` tarball.
func (s Spec) WriteTarball(file string) error {
	reference, err := name.NewTag(s.Reference)
	if err != nil {
		return fmt.Errorf("reference: %w", err)
	}
	layerData, err := layerTar(s.Files)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerData)), nil
	})
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	image, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return fmt.Errorf("append layer: %w", err)
	}
	config, err := image.ConfigFile()
	if err != nil {
		return err
	}
	config = config.DeepCopy()
	config.OS, config.Architecture = "linux", goarch()
	config.Config.Entrypoint, config.Config.Cmd = s.Entrypoint, s.Cmd
	config.Config.Env = append([]string{defaultPath}, s.Env...)
	image, err = mutate.ConfigFile(image, config)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	tmp := file + ".tmp"
	if err := tarball.WriteToFile(tmp, reference, image); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	return os.Rename(tmp, file)
}

// layerTar is an uncompressed tar of files, parents created as needed,
// with fixed times so that the same inputs give the same layer.
func layerTar(files []File) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0)
	dirs := map[string]bool{}
	var addParents func(p string) error
	addParents = func(p string) error {
		dir := path.Dir(p)
		if dir == "." || dirs[dir] {
			return nil
		}
		if err := addParents(dir); err != nil {
			return err
		}
		dirs[dir] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755, ModTime: epoch})
	}
	sorted := slicesClone(files)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	for _, f := range sorted {
		if err := addParents(f.Path); err != nil {
			return nil, err
		}
		switch {
		case f.Dir:
			if dirs[f.Path] {
				continue
			}
			dirs[f.Path] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: f.Path + "/", Mode: f.Mode, ModTime: epoch}); err != nil {
				return nil, err
			}
		case f.Linkname != "":
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: f.Path, Linkname: f.Linkname, Mode: 0o777, ModTime: epoch}); err != nil {
				return nil, err
			}
		default:
			content := f.Content
			if f.Source != "" {
				var err error
				if content, err = os.ReadFile(f.Source); err != nil {
					return nil, err
				}
			}
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.Path, Mode: f.Mode, Size: int64(len(content)), ModTime: epoch}); err != nil {
				return nil, err
			}
			if _, err := tw.Write(content); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, errors.Join(errors.New("close layer"), err)
	}
	return buf.Bytes(), nil
}
