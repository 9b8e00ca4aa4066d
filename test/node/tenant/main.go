// Command tenant is a hostile tenant for test/node's TestHostileTenant: run
// in an unprivileged pod (uid 1000, no capabilities, the runtime's default
// seccomp profile), it tries from inside its volume what any user may do on
// btrfs to escape its size limit or to leave a hole in its snapshots, and
// prints one JSON line per step saying what it did and what the kernel
// answered. Of the project's it imports only internal/tenantops, which
// knows no component, so that it proves what a pod could do, not what our
// code allows.
//
//	tenant '<steps as a JSON list>'
//
// Each step is {"action": ..., "path": ..., "inherit": [...], "size": ...}:
//
//   - "subvolume-id": the id of the subvolume holding path (the volume's own,
//     which names its limit group 1/id).
//   - "escape": create a subvolume at path passing the inheritance list
//     inherit (empty: a zeroed btrfs_qgroup_inherit, no group at all), then
//     write up to size bytes into path/data.bin at once.
//   - "nest": create a plain subvolume at path and a small file in it.
//   - "fill": write up to size bytes into the file path.
//
// A write stops at its first error (EDQUOT, hopefully); the step reports
// how much was written before it.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/toposnap/toposnap/internal/tenantops"
)

// step is one thing to try.
type step struct {
	Action  string   `json:"action"`
	Path    string   `json:"path"`
	Inherit []uint64 `json:"inherit,omitempty"`
	Size    int64    `json:"size,omitempty"`
}

// outcome is what one step did: the test reads these from the pod's log.
type outcome struct {
	step
	// Subvolume is the id "subvolume-id" found.
	Subvolume uint64 `json:"subvolume,omitempty"`
	// Written is how many bytes reached the file before the first error.
	Written int64 `json:"written"`
	// Errno is the failed call's errno by name ("EDQUOT"), Error the whole
	// message; both empty when every call succeeded.
	Errno string `json:"errno,omitempty"`
	Error string `json:"error,omitempty"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: tenant '<steps as a JSON list>'")
		os.Exit(2)
	}
	var steps []step
	if err := json.Unmarshal([]byte(os.Args[1]), &steps); err != nil {
		fmt.Fprintf(os.Stderr, "tenant: parse steps: %v\n", err)
		os.Exit(2)
	}
	out := json.NewEncoder(os.Stdout)
	for _, s := range steps {
		if err := out.Encode(run(s)); err != nil {
			os.Exit(1)
		}
	}
}

// run does one step.
func run(s step) outcome {
	result := outcome{step: s}
	var err error
	switch s.Action {
	case "subvolume-id":
		result.Subvolume, err = tenantops.SubvolumeID(s.Path)
	case "escape":
		if err = tenantops.CreateSubvolumeInheriting(s.Path, s.Inherit); err == nil {
			result.Written, err = tenantops.Fill(s.Path+"/data.bin", s.Size)
		}
	case "nest":
		if err = tenantops.CreateSubvolume(s.Path); err == nil {
			err = os.WriteFile(s.Path+"/data.txt", []byte("written by the tenant inside a nested subvolume\n"), 0o644)
		}
	case "fill":
		result.Written, err = tenantops.Fill(s.Path, s.Size)
	default:
		err = fmt.Errorf("unknown action %q", s.Action)
	}
	if err != nil {
		result.Error = err.Error()
		result.Errno = errnoName(err)
	}
	return result
}

// errnoName names the errno err carries ("EDQUOT"), or is empty.
func errnoName(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return ""
}
