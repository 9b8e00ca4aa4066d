package cluster

import (
	"os"
	"testing"
)

func TestIsServeCommand(t *testing.T) {
	const dir = "/home/u/.cache/toposnap/cluster"
	tests := []struct {
		name string
		args []string
		want bool
	}{
		{"serve with --dir=DIR", []string{"/bin/toposnap-cluster", "serve", "--dir=" + dir}, true},
		{"serve with --dir DIR", []string{"/bin/toposnap-cluster", "serve", "--dir", dir}, true},
		{"serve of another directory", []string{"/bin/toposnap-cluster", "serve", "--dir=/tmp/other"}, false},
		{"serve of a directory below", []string{"/bin/toposnap-cluster", "serve", "--dir=" + dir + "/x"}, false},
		{"an unrelated process that recycled the pid", []string{"/usr/bin/vim", dir}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := isServeCommand(tt.args, dir); got != tt.want {
				t.Errorf("isServeCommand(%q) = %v, want %v", tt.args, got, tt.want)
			}
		})
	}
}

func TestProcessAlive(t *testing.T) {
	if !processAlive(os.Getpid()) {
		t.Error("this test process is reported dead")
	}
	if processAlive(1 << 30) {
		t.Error("a pid beyond pid_max is reported alive")
	}
}
