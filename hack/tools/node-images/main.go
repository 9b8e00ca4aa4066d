// Command node-images packs the container images a real test node needs
// (test/node) into `docker save` tarballs that `ctr images import` loads,
// with no Docker engine and nothing pulled: each image is an empty base plus
// one layer of files from this machine or from binaries built by
// hack/build-node-bins.sh and hack/node-images.sh. The images carry the
// exact names the kubelet, the chart and Kubernetes' e2e suite ask for,
// except the registrar, which is this project's own (see registrar/).
//
// It writes one tarball per image into -out and an index, images.json,
// mapping each image reference to its tarball.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

func main() {
	var in Inputs
	out := flag.String("out", "", "directory to write the image tarballs and images.json into")
	flag.StringVar(&in.Busybox, "busybox", "/bin/busybox", "a static busybox binary")
	flag.StringVar(&in.Pause, "pause", "", "the pause binary (hack/tools/node-images/pause)")
	flag.StringVar(&in.Registrar, "registrar", "", "the registrar binary (hack/tools/node-images/registrar)")
	flag.StringVar(&in.Agnhost, "agnhost", "", "agnhost, built by hack/build-node-bins.sh")
	flag.StringVar(&in.KubeScheduler, "kube-scheduler", "", "kube-scheduler, built by hack/build-cluster-bins.sh")
	flag.StringVar(&in.PauseRef, "pause-ref", "registry.k8s.io/pause:3.10.2", "reference of the pause image")
	flag.StringVar(&in.BusyboxRef, "busybox-ref", "registry.k8s.io/e2e-test-images/busybox:1.37.0-2", "reference of the busybox image")
	flag.StringVar(&in.AgnhostRef, "agnhost-ref", "registry.k8s.io/e2e-test-images/agnhost:2.66.1", "reference of the agnhost image")
	flag.StringVar(&in.RegistrarRef, "registrar-ref", "toposnap.test/node-driver-registrar:dev", "reference of the registrar image")
	flag.StringVar(&in.KubeSchedulerRef, "kube-scheduler-ref", "registry.k8s.io/kube-scheduler:v1.37.2", "reference of the kube-scheduler image")
	shellRefs := flag.String("shell-refs", "registry.k8s.io/e2e-test-images/nginx:1.27.0-2",
		"comma-separated references that get busybox's file system (images the e2e suite only runs shell commands in)")
	flag.StringVar(&in.GlibcRef, "glibc-ref", "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1",
		"reference of the glibc image: busybox's file system with -glibc-tools from this machine")
	glibcTools := flag.String("glibc-tools", "sh=/bin/dash,dd=/bin/dd",
		"comma-separated name=binary: host binaries (with their libraries) that replace busybox's applets of that name in the glibc image")
	flag.Parse()
	if *shellRefs != "" {
		in.ShellRefs = strings.Split(*shellRefs, ",")
	}
	if *glibcTools != "" {
		in.GlibcTools = map[string]string{}
		for _, tool := range strings.Split(*glibcTools, ",") {
			name, binary, ok := strings.Cut(tool, "=")
			if !ok || name == "" || binary == "" {
				fmt.Fprintf(os.Stderr, "node-images: -glibc-tools: %q is not name=binary\n", tool)
				os.Exit(2)
			}
			in.GlibcTools[name] = binary
		}
	}
	if err := run(*out, in); err != nil {
		fmt.Fprintln(os.Stderr, "node-images:", err)
		os.Exit(1)
	}
}

func run(out string, in Inputs) error {
	if out == "" {
		return fmt.Errorf("-out is required")
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	specs, err := in.Specs()
	if err != nil {
		return err
	}
	index := map[string]string{}
	for _, spec := range specs {
		start := time.Now()
		file := filepath.Join(out, spec.FileName())
		if err := spec.WriteTarball(file); err != nil {
			return fmt.Errorf("image %s: %w", spec.Reference, err)
		}
		index[spec.Reference] = file
		fmt.Fprintf(os.Stderr, "wrote %s (%s) in %s\n", spec.Reference, file, time.Since(start).Round(time.Millisecond))
	}
	data, err := json.MarshalIndent(index, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, "images.json"), append(data, '\n'), 0o644)
}
