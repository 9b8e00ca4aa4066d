package storagee2e

import (
	"os"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The summary is read from ginkgo's closing lines, the last ones when a
// log holds several.
func TestParseSummary(t *testing.T) {
	tests := []struct {
		name   string
		output string
		want   Summary
		ok     bool
	}{
		{
			name:   "success",
			output: "...\nRan 12 of 7000 Specs in 300.1 seconds\nSUCCESS! -- 12 Passed | 0 Failed | 0 Pending | 6988 Skipped\nPASS\n",
			want:   Summary{Ran: 12, Total: 7000, Passed: 12, Skipped: 6988, Succeeded: true},
			ok:     true,
		},
		{
			name:   "failures",
			output: "Ran 3 of 10 Specs in 1.0 seconds\nFAIL! -- 2 Passed | 1 Failed | 0 Pending | 7 Skipped\n",
			want:   Summary{Ran: 3, Total: 10, Passed: 2, Failed: 1, Skipped: 7},
			ok:     true,
		},
		{
			name:   "interrupted",
			output: "Ran 66 of 3336 Specs in 2001.766 seconds\nFAIL! - Interrupted by User -- 19 Passed | 47 Failed | 0 Pending | 3270 Skipped\n",
			want:   Summary{Ran: 66, Total: 3336, Passed: 19, Failed: 47, Skipped: 3270},
			ok:     true,
		},
		{
			name:   "crashed before the end",
			output: "Running Suite: Kubernetes e2e suite\npanic: boom\n",
			ok:     false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseSummary([]byte(tt.output))
			if ok != tt.ok || got != tt.want {
				t.Fatalf("parseSummary = %+v, %v; want %+v, %v", got, ok, tt.want, tt.ok)
			}
		})
	}
}

// e2e.test is given the driver file and the focus.
func TestRunArgsNameTheDriverFileAndFocus(t *testing.T) {
	args := strings.Join(RunOptions{TestDriver: "testdriver.yaml", Focus: DefaultFocus}.args(), " ")
	for _, want := range []string{"--storage.testdriver=testdriver.yaml", "--ginkgo.focus=" + DefaultFocus, "--provider=local"} {
		if !strings.Contains(args, want) {
			t.Errorf("e2e.test args %q lack %q", args, want)
		}
	}
}

// The driver file names the driver and classes that charts/toposnap
// installs by default, so the suite tests what the chart deploys.
func TestTestDriverUsesTheChartsClasses(t *testing.T) {
	var driver struct {
		StorageClass  struct{ FromExistingClassName string }
		SnapshotClass struct{ FromExistingClassName string }
		DriverInfo    struct{ Name string }
	}
	readYAML(t, "testdriver.yaml", &driver)
	var values struct {
		StorageClasses []struct {
			Name    string
			Enabled bool
		} `json:"storageClasses"`
		VolumeSnapshotClasses []struct {
			Name    string
			Enabled bool
		} `json:"volumeSnapshotClasses"`
	}
	readYAML(t, "../../charts/toposnap/values.yaml", &values)
	if driver.DriverInfo.Name != "csi.toposnap.io" {
		t.Errorf("driver name %q, want csi.toposnap.io", driver.DriverInfo.Name)
	}
	storageClassEnabled := false
	for _, class := range values.StorageClasses {
		storageClassEnabled = storageClassEnabled || (class.Name == driver.StorageClass.FromExistingClassName && class.Enabled)
	}
	snapshotClassEnabled := false
	for _, class := range values.VolumeSnapshotClasses {
		snapshotClassEnabled = snapshotClassEnabled || (class.Name == driver.SnapshotClass.FromExistingClassName && class.Enabled)
	}
	if !storageClassEnabled || !snapshotClassEnabled {
		t.Fatalf("the chart does not enable StorageClass %q (%v) or VolumeSnapshotClass %q (%v) by default",
			driver.StorageClass.FromExistingClassName, storageClassEnabled, driver.SnapshotClass.FromExistingClassName, snapshotClassEnabled)
	}
}

func readYAML(t *testing.T, file string, into any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		t.Fatalf("parse %s: %v", file, err)
	}
}

// make conformance skips exactly what the default run skips: one list of
// specs that cannot run here, documented in docs/conformance.md.
func TestMakefileSkipsWhatTheDefaultSkips(t *testing.T) {
	makefile, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(makefile), "\n") {
		if value, ok := strings.CutPrefix(line, "CONFORMANCE_SKIP ?= "); ok {
			if value != DefaultSkip {
				t.Fatalf("Makefile CONFORMANCE_SKIP = %q, DefaultSkip = %q", value, DefaultSkip)
			}
			return
		}
	}
	t.Fatal("the Makefile sets no CONFORMANCE_SKIP")
}
