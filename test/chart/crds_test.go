package chart

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/yaml"
)

// snapshotCRDsDir holds the committed copies of the upstream snapshot CRDs.
const snapshotCRDsDir = "charts/toposnap/files/snapshot-crds"

// TestCommittedSnapshotCRDsMatchTheGenerator runs hack/gen-snapshot-crds.sh
// into a temporary directory and compares every file, byte for byte, with
// the committed copies: the copies come from the module version in go.mod
// and nobody edited them.
func TestCommittedSnapshotCRDsMatchTheGenerator(t *testing.T) {
	generated := t.TempDir()
	cmd := exec.CommandContext(ctxFor(t, 2*time.Minute), filepath.Join(repoRoot, "hack", "gen-snapshot-crds.sh"), generated)
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/gen-snapshot-crds.sh: %v\n%s", err, out)
	}
	committed := filepath.Join(repoRoot, snapshotCRDsDir)
	want, got := fileNames(t, generated), fileNames(t, committed)
	if !slices.Equal(want, got) {
		t.Fatalf("%s holds %v, the generator writes %v: run hack/gen-snapshot-crds.sh", snapshotCRDsDir, got, want)
	}
	for _, name := range want {
		generatedData, _ := os.ReadFile(filepath.Join(generated, name))
		committedData, _ := os.ReadFile(filepath.Join(committed, name))
		if !bytes.Equal(generatedData, committedData) {
			t.Errorf("%s/%s differs from what hack/gen-snapshot-crds.sh generates: run it, never edit the copy", snapshotCRDsDir, name)
		}
	}
}

// TestRenderedSnapshotCRDsAreTheUpstreamFiles: the chart installs the
// copies unchanged but for helm's keep annotation.
func TestRenderedSnapshotCRDsAreTheUpstreamFiles(t *testing.T) {
	objects := render(t, ctxFor(t, time.Minute), valueSets()[3])
	files, err := filepath.Glob(filepath.Join(repoRoot, snapshotCRDsDir, "*.yaml"))
	if err != nil || len(files) != 3 {
		t.Fatalf("want 3 CRD files in %s, found %v (%v)", snapshotCRDsDir, files, err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var upstream map[string]any
		if err := yaml.Unmarshal(data, &upstream); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		name := upstream["metadata"].(map[string]any)["name"].(string)
		rendered := find(t, objects, "CustomResourceDefinition", name).DeepCopy()
		annotations := rendered.GetAnnotations()
		if annotations["helm.sh/resource-policy"] != "keep" {
			t.Errorf("CRD %s lacks helm.sh/resource-policy: keep", name)
		}
		delete(annotations, "helm.sh/resource-policy")
		rendered.SetAnnotations(annotations)
		if !equality.Semantic.DeepEqual(upstream, rendered.Object) {
			t.Errorf("rendered CRD %s differs from %s beyond the keep annotation", name, filepath.Base(file))
		}
	}
}

// fileNames lists the regular files in dir, sorted.
func fileNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, entry := range entries {
		if entry.Type().IsRegular() {
			names = append(names, entry.Name())
		}
	}
	return names
}
