package cluster

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLastLine(t *testing.T) {
	tests := []struct {
		name, out, want string
	}{
		{"single line", "/bin/dir\n", "/bin/dir"},
		{"progress before the directory", "building etcd\n/bin/dir\n", "/bin/dir"},
		{"trailing blank lines", "/bin/dir\n\n  \n", "/bin/dir"},
		{"nothing printed", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := lastLine([]byte(tt.out)); got != tt.want {
				t.Errorf("lastLine(%q) = %q, want %q", tt.out, got, tt.want)
			}
		})
	}
}

func TestFindModuleRootSkipsOtherModules(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "go.mod"), "module "+modulePath+"\n\ngo 1.26\n")
	writeFile(t, filepath.Join(root, "hack", "tools", "go.mod"), "module tools\n")
	tests := []struct {
		name, start, want string
		wantErr           bool
	}{
		{"from the root", root, root, false},
		{"from a package below", filepath.Join(root, "test", "cluster"), root, false},
		{"through a nested tools module", filepath.Join(root, "hack", "tools", "kwok"), root, false},
		{"outside the repository", filepath.Dir(root), "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := findModuleRoot(tt.start, modulePath)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("findModuleRoot(%s) = %q, %v; want %q, error: %v", tt.start, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestKwokStageFilesLeaveOutKustomizations(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"node/fast/node-initialize.yaml", "node/fast/kustomization.yaml", "pod/fast/pod-ready.yaml"} {
		writeFile(t, filepath.Join(dir, kwokStagesDir, name), "kind: Stage\n")
	}
	got, err := kwokStageFiles(dir)
	if err != nil {
		t.Fatalf("kwokStageFiles: %v", err)
	}
	want := []string{
		filepath.Join(dir, kwokStagesDir, "node/fast/node-initialize.yaml"),
		filepath.Join(dir, kwokStagesDir, "pod/fast/pod-ready.yaml"),
	}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("kwokStageFiles() = %v, want %v", got, want)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
