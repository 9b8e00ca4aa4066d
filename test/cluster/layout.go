package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Names of what a cluster keeps in its work directory.
const (
	pkiDirName          = "pki"
	etcdDirName         = "etcd"
	logDirName          = "logs"
	kwokDirName         = "kwok"
	adminKubeconfigName = "kubeconfig"
	schedulerConfigName = "scheduler-config.yaml"
	pidFileName         = "pid"
	readyFileName       = "ready"
)

// generatedEntries lists everything Start and Serve create in a work
// directory: cleaning removes exactly these and never anything else.
var generatedEntries = []string{
	pkiDirName, etcdDirName, logDirName, kwokDirName,
	adminKubeconfigName, schedulerConfigName, pidFileName, readyFileName,
}

// layout names the files of a cluster inside its work directory.
type layout struct{ dir string }

func (l layout) pki(name string) string { return filepath.Join(l.dir, pkiDirName, name) }
func (l layout) logs() string           { return filepath.Join(l.dir, logDirName) }
func (l layout) etcdData() string       { return filepath.Join(l.dir, etcdDirName) }
func (l layout) kwokWorkDir() string    { return filepath.Join(l.dir, kwokDirName) }
func (l layout) adminKubeconfig() string {
	return filepath.Join(l.dir, adminKubeconfigName)
}
func (l layout) schedulerConfig() string { return filepath.Join(l.dir, schedulerConfigName) }
func (l layout) pidFile() string         { return filepath.Join(l.dir, pidFileName) }
func (l layout) readyFile() string       { return filepath.Join(l.dir, readyFileName) }

// componentKubeconfig is where the kubeconfig of a control-plane component's
// own identity lives.
func (l layout) componentKubeconfig(component string) string {
	return l.pki(component + ".kubeconfig")
}

// prepare creates the directories Start writes to. It refuses a directory
// that still holds another cluster's etcd data: reusing it with fresh
// credentials would fail in confusing ways.
func (l layout) prepare() error {
	if _, err := os.Stat(l.etcdData()); err == nil {
		return fmt.Errorf("%s holds a previous cluster's etcd data: stop that cluster and remove its files first", l.dir)
	}
	for _, dir := range []string{l.dir, filepath.Join(l.dir, pkiDirName), l.logs(), l.kwokWorkDir()} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
	}
	return nil
}

// clean removes the generated entries and then the directory itself if it
// is left empty; anything else a user put there stays.
func (l layout) clean() error {
	var errs []error
	for _, name := range generatedEntries {
		if err := os.RemoveAll(filepath.Join(l.dir, name)); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", name, err))
		}
	}
	if entries, err := os.ReadDir(l.dir); err == nil && len(entries) == 0 {
		if err := os.Remove(l.dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", l.dir, err))
		}
	}
	return errors.Join(errs...)
}
