package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/toposnap/toposnap/test/cluster"
)

// hostLockPath serialises real nodes on one machine.
const hostLockPath = "/run/lock/toposnap-node.lock"

// netnsDir is where containerd's CRI keeps pods' network namespaces.
const netnsDir = "/var/run/netns"

// hostLock is an exclusive flock held while a node runs.
type hostLock struct{ file *os.File }

// acquireHostLock waits, polling within ctx, for the machine's node lock.
func acquireHostLock(ctx context.Context) (*hostLock, error) {
	if err := os.MkdirAll(filepath.Dir(hostLockPath), 0o755); err != nil {
		return nil, err
	}
	file, err := os.OpenFile(hostLockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open node lock: %w", err)
	}
	err = cluster.Poll(ctx, time.Second, 30*time.Minute, func() (bool, error) {
		err := syscall.Flock(int(file.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		_ = file.Close()
		return nil, fmt.Errorf("wait for another real node on this machine to stop (%s): %w", hostLockPath, err)
	}
	return &hostLock{file: file}, nil
}

func (l *hostLock) release() {
	_ = syscall.Flock(int(l.file.Fd()), syscall.LOCK_UN)
	_ = l.file.Close()
}

// unmountUnder detaches every mount at or below dir, deepest first: the
// kubelet's volumes and tokens, the driver's bind mounts, containers'
// root file systems.
func unmountUnder(dir string) error {
	mounts, err := mountPointsUnder(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, mount := range mounts {
		if err := syscall.Unmount(mount, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mount, err))
		}
	}
	return errors.Join(errs...)
}

// mountPointsUnder lists mount points at or below dir, deepest first.
func mountPointsUnder(dir string) ([]string, error) {
	file, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer func() { _ = file.Close() }()
	var mounts []string
	scanner := bufio.NewScanner(file)
	scanner.Buffer(make([]byte, 64<<10), 1<<20)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) < 5 {
			continue
		}
		point := unescapeMountPath(fields[4])
		if point == dir || strings.HasPrefix(point, dir+"/") {
			mounts = append(mounts, point)
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	return mounts, scanner.Err()
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(path string) string {
	var b strings.Builder
	for i := 0; i < len(path); i++ {
		if path[i] == '\\' && i+3 < len(path) {
			var value int
			if _, err := fmt.Sscanf(path[i+1:i+4], "%03o", &value); err == nil {
				b.WriteByte(byte(value))
				i += 3
				continue
			}
		}
		b.WriteByte(path[i])
	}
	return b.String()
}

// listNetns names the network namespaces containerd has made so far.
func listNetns() map[string]bool {
	seen := map[string]bool{}
	entries, _ := os.ReadDir(netnsDir)
	for _, entry := range entries {
		seen[entry.Name()] = true
	}
	return seen
}

// removeNewNetns unmounts and removes the CNI network namespaces made since
// seen was listed: those of this node's pods, whose sandboxes were killed
// without the CNI teardown that the kubelet would have asked for.
func removeNewNetns(seen map[string]bool) error {
	var errs []error
	for name := range listNetns() {
		if seen[name] || !strings.HasPrefix(name, "cni-") {
			continue
		}
		path := filepath.Join(netnsDir, name)
		if err := syscall.Unmount(path, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", path, err))
			continue
		}
		if err := os.Remove(path); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
