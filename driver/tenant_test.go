package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/toposnap/toposnap/driver/store/btrfs"
	"github.com/toposnap/toposnap/internal/tenantops"
)

// Issue 19 items 1-3, through the CSI socket on a real btrfs node pool,
// with every attack made by a tenant: a pod's process, uid 1000 without
// capabilities, in its volume through the target path the driver
// published. The tenant's side is this test binary re-executed with
// tenantEnv naming the action.
const (
	tenantEnv = "TOPOSNAP_DRIVER_TENANT"
	tenantUID = 1000
	// pastLimit is how far past its size a tenant's write may get before
	// EDQUOT: the watcher's window (0 measured with fanotify).
	pastLimit = 8 << 20
)

func TestMain(m *testing.M) {
	os.Exit(tenantops.ServeOr(tenantEnv, map[string]tenantops.Action{
		"flatten":    func(req tenantops.Request) (int64, error) { return 0, flatten(req.Path) },
		"copy-range": func(req tenantops.Request) (int64, error) { return copyRange(req.Path, req.Source) },
	}, m.Run))
}

// copyRange is what `cp --reflink=auto` does between two of a tenant's
// volumes: copy_file_range, which btrfs answers with a reflink.
func copyRange(dst, src string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	var copied int64
	for {
		n, err := unix.CopyFileRange(int(in.Fd()), nil, int(out.Fd()), nil, 1<<30, 0)
		copied += int64(n)
		if err != nil {
			return copied, fmt.Errorf("copy_file_range: %w", err)
		}
		if n == 0 {
			return copied, out.Sync()
		}
	}
}

// flatten is what a tenant told that its nested subvolume blocks snapshots
// does: it turns the subvolume at path into a plain directory holding the
// same files (copied: a rename across subvolumes is EXDEV), removing the
// emptied subvolume with rmdir, which its owner may.
func flatten(path string) error {
	plain := path + ".plain"
	if err := os.Mkdir(plain, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return err
	}
	for _, entry := range entries {
		if err := moveFile(filepath.Join(path, entry.Name()), filepath.Join(plain, entry.Name())); err != nil {
			return err
		}
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("rmdir the emptied subvolume: %w", err)
	}
	return os.Rename(plain, path)
}

func moveFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Remove(from)
}

// tenantBinary is a copy of this test binary that uid 1000 may execute.
func tenantBinary(t *testing.T) string {
	t.Helper()
	bin, err := tenantops.CopyExecutable(worldReadableDir(t, "toposnap-tenant-"))
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// worldReadableDir is a temporary directory uid 1000 may enter (t.TempDir's
// are root's only), removed at cleanup.
func worldReadableDir(t *testing.T, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// pod is a tenant's view of one volume: staged and published by the
// driver, as the kubelet asks, at a target path uid 1000 can reach.
type pod struct {
	t                 *testing.T
	h                 *harness
	bin               string
	volumeID          string
	staging, target   string
	published, staged bool
}

// runPod stages and publishes volumeID for a tenant; the pod leaves
// (unpublish, unstage) at cleanup unless it left before.
func runPod(t *testing.T, h *harness, bin, volumeID string) *pod {
	t.Helper()
	base := worldReadableDir(t, "toposnap-pod-")
	p := &pod{t: t, h: h, bin: bin, volumeID: volumeID,
		staging: filepath.Join(base, "staging"), target: filepath.Join(base, "target")}
	ctx := ctxT(t)
	if _, err := h.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: volumeID,
		StagingTargetPath: p.staging, VolumeCapability: mountCap()}); err != nil {
		t.Fatalf("stage %s: %v", volumeID, err)
	}
	p.staged = true
	t.Cleanup(p.leave) // before the directory's removal: cleanups run last first
	if _, err := h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: volumeID,
		StagingTargetPath: p.staging, TargetPath: p.target, VolumeCapability: mountCap()}); err != nil {
		t.Fatalf("publish %s: %v", volumeID, err)
	}
	p.published = true
	return p
}

// leave unpublishes and unstages the volume, as the kubelet does when the
// pod is gone.
func (p *pod) leave() {
	p.t.Helper()
	ctx := ctxT(p.t)
	if p.published {
		if _, err := p.h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: p.volumeID, TargetPath: p.target}); err != nil {
			p.t.Errorf("unpublish %s: %v", p.volumeID, err)
		}
		p.published = false
	}
	if p.staged {
		if _, err := p.h.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: p.volumeID, StagingTargetPath: p.staging}); err != nil {
			p.t.Errorf("unstage %s: %v", p.volumeID, err)
		}
		p.staged = false
	}
}

// do runs action as uid 1000 on rel, a path relative to the volume.
func (p *pod) do(action, rel string, req tenantops.Request) tenantops.Result {
	p.t.Helper()
	return p.tenant().Do(p.t, action, filepath.Join(p.target, rel), req)
}

// must runs action and fails the test if the tenant's call failed.
func (p *pod) must(action, rel string, req tenantops.Request) tenantops.Result {
	p.t.Helper()
	return p.tenant().Must(p.t, action, filepath.Join(p.target, rel), req)
}

func (p *pod) tenant() tenantops.Tenant {
	return tenantops.Tenant{Bin: p.bin, Env: tenantEnv, UID: tenantUID}
}

// usage is the volume's used bytes as NodeGetVolumeStats reports them.
func (p *pod) usage() int64 {
	p.t.Helper()
	resp, err := p.h.node.NodeGetVolumeStats(ctxT(p.t), &csi.NodeGetVolumeStatsRequest{VolumeId: p.volumeID, VolumePath: p.target})
	if err != nil {
		p.t.Fatalf("stats of %s: %v", p.volumeID, err)
	}
	for _, u := range resp.GetUsage() {
		if u.GetUnit() == csi.VolumeUsage_BYTES {
			return u.GetUsed()
		}
	}
	p.t.Fatalf("stats of %s report no bytes: %v", p.volumeID, resp)
	return 0
}

// eventually polls check, committing the pool's filesystem between polls
// (usage is as of the last commit; a commit wakes the cleaner), until it
// holds or the deadline passes; it returns whether it held.
func eventually(t *testing.T, pool string, deadline time.Duration, check func() bool) bool {
	t.Helper()
	dir, err := os.Open(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	for end := time.Now().Add(deadline); ; {
		if check() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		_ = unix.Syncfs(int(dir.Fd()))
		time.Sleep(50 * time.Millisecond)
	}
}

// nestedCorrections reads toposnap_driver_nested_subvolume_corrections_total
// for the node pool.
func nestedCorrections(t *testing.T, h *harness) float64 {
	t.Helper()
	families, err := h.driver.metrics.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, family := range families {
		if family.GetName() != "toposnap_driver_nested_subvolume_corrections_total" {
			continue
		}
		for _, metric := range family.GetMetric() {
			for _, label := range metric.GetLabel() {
				if label.GetName() == "pool" && label.GetValue() == "node" {
					return metric.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// gauge reads a driver gauge for one pool.
func gauge(t *testing.T, h *harness, name, pool string) float64 {
	t.Helper()
	families, err := h.driver.metrics.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, family := range families {
		if family.GetName() != name {
			continue
		}
		for _, metric := range family.GetMetric() {
			for _, label := range metric.GetLabel() {
				if label.GetName() == "pool" && label.GetValue() == pool {
					return metric.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{pool=%q}", name, pool)
	return 0
}

func isQuotaError(err error) bool { return errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.ENOSPC) }

// allowNested makes req a volume of a class with nestedSubvolumes "allow":
// the pod sees its btrfs subvolume, as every volume did before sealing.
func allowNested(req *csi.CreateVolumeRequest) *csi.CreateVolumeRequest {
	req.Parameters["nestedSubvolumes"] = "allow"
	return req
}

// TestSealedVolumeShowsThePodNoBtrfs (item 1, closed): in a volume of the
// default class the pod's btrfs ioctls never reach the pool. A subvolume
// create with a zeroed inheritance list, one naming the neighbour's limit
// group, one naming a group that does not exist (the probe), a plain
// create and a snapshot all answer ENOTTY, so nothing is left to put back
// and no snapshot has a hole. What a pod does with files still works
// (reflinks included), and its writes stop at its size.
func TestSealedVolumeShowsThePodNoBtrfs(t *testing.T) {
	h, pool := startBtrfsDriver(t, 2<<30, 100<<30)
	bin := tenantBinary(t)
	const size = 32 << 20
	neighbourID := mustCreate(t, h, volumeRequest("sealed-neighbour", "node", size, nil, nil))
	neighbourSubvolume, err := btrfs.SubvolumeID(h.driver.nodePool.VolumeDir(neighbourID))
	if err != nil {
		t.Fatal(err)
	}
	volume := mustCreate(t, h, volumeRequest("sealed", "node", size, nil, nil))
	tenant := runPod(t, h, bin, volume)
	corrections := nestedCorrections(t, h)
	for _, attack := range []struct {
		action  string
		inherit []uint64
		source  string
	}{
		{"subvolume-inherit", []uint64{}, ""},
		{"subvolume-inherit", []uint64{1<<48 | neighbourSubvolume}, ""},
		{"subvolume-inherit", []uint64{1<<48 | 999999}, ""},
		{"subvolume", nil, ""},
		{"snapshot-inherit", nil, tenant.target},
	} {
		res := tenant.do(attack.action, "nested", tenantops.Request{Inherit: attack.inherit, Source: attack.source})
		if !errors.Is(res.Failure(), unix.ENOTTY) {
			t.Errorf("tenant %s (inheriting %v) in a sealed volume: %v; want ENOTTY (no btrfs ioctl reaches the pool)",
				attack.action, attack.inherit, res.Failure())
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(tenant.target, &st); err != nil {
		t.Fatal(err)
	}
	if st.Flags&unix.ST_NOSUID == 0 || st.Flags&unix.ST_NODEV == 0 {
		t.Errorf("the sealed volume is mounted with flags %#x; want nosuid and nodev (a setuid file or device node planted in a zone volume must not work)", st.Flags)
	}
	tenant.must("fill", "data.bin", tenantops.Request{Size: 4 << 20})
	if err := tenantops.Reflink(filepath.Join(tenant.target, "copy.bin"), filepath.Join(tenant.target, "data.bin")); err != nil {
		t.Errorf("a reflink inside the sealed volume: %v", err)
	}
	res := tenant.do("fill", "big.bin", tenantops.Request{Size: 3 * size})
	if !isQuotaError(res.Failure()) || res.Written > size {
		t.Errorf("a 32 MiB sealed volume took %.1f MiB (err %v); want EDQUOT within its size", float64(res.Written)/(1<<20), res.Failure())
	}
	if !eventually(t, pool, 30*time.Second, func() bool { return tenant.usage() >= res.Written }) {
		t.Errorf("NodeGetVolumeStats reports %d bytes used; the tenant wrote %d", tenant.usage(), res.Written)
	}
	if got := nestedCorrections(t, h); got != corrections {
		t.Errorf("%v nested-subvolume corrections: nothing should have needed one", got-corrections)
	}
	// The snapshot holds what the pod saw, restored the same way.
	want := hashFile(t, filepath.Join(tenant.target, "data.bin"))
	restored := mustCreate(t, h, restoreRequest("sealed-restored", size, mustSnapshot(t, h, "sealed-snap", volume)))
	if got := hashFile(t, filepath.Join(publish(t, h, restored, true), "data.bin")); got != want {
		t.Error("the restore's data.bin differs from what the tenant wrote")
	}
}

// TestFullSealedVolumeIsStagedWritable: the overlay recreates its work
// directory at each mount, which the limit of a full volume refuses (the
// kernel then mounts the overlay read-only, and the pod could not even
// delete a file to make room). A tenant fills its volume, its pod leaves,
// and the next pod can delete and write again.
func TestFullSealedVolumeIsStagedWritable(t *testing.T) {
	h, _ := startBtrfsDriver(t, 2<<30, 100<<30)
	bin := tenantBinary(t)
	const size = 32 << 20
	volume := mustCreate(t, h, volumeRequest("full-sealed", "node", size, nil, nil))
	first := runPod(t, h, bin, volume)
	if res := first.do("fill", "fill.bin", tenantops.Request{Size: 2 * size}); !isQuotaError(res.Failure()) {
		t.Fatalf("filling a 32 MiB volume: %.1f MiB written, %v; want EDQUOT", float64(res.Written)/(1<<20), res.Failure())
	}
	first.leave()
	second := runPod(t, h, bin, volume)
	if err := os.Remove(filepath.Join(second.target, "fill.bin")); err != nil {
		t.Fatalf("the next pod of a full sealed volume cannot delete a file: %v", err)
	}
	second.must("fill", "again.bin", tenantops.Request{Size: 1 << 20})
}

// TestReflinkedDataOfADeletedVolumeStaysCounted (item 1): a tenant copies
// 24 MiB from its volume A into its volume B with copy_file_range, which
// btrfs answers with a reflink (through both overlays), so the bytes stay
// charged to A, outside B's limit; then A is deleted. The bytes are still
// on the disk, charged to A's deleted subvolume: the pool keeps counting
// them as promised, so its capacity grows by A's size minus them, not by
// A's size (repeated, the tenant would otherwise fill the pool past every
// promise).
func TestReflinkedDataOfADeletedVolumeStaysCounted(t *testing.T) {
	h, pool := startBtrfsDriver(t, 2<<30, 256<<20)
	bin := tenantBinary(t)
	ctx := ctxT(t)
	const size, data, slack = 32 << 20, 24 << 20, 2 << 20
	capacity := func() int64 {
		committed, err := os.Open(pool)
		if err != nil {
			t.Fatal(err)
		}
		defer committed.Close()
		if err := unix.Syncfs(int(committed.Fd())); err != nil { // the quota tree is read as committed
			t.Fatal(err)
		}
		resp, err := h.controller.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"scope": "node"}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetAvailableCapacity()
	}
	a := mustCreate(t, h, volumeRequest("reflink-a", "node", size, nil, nil))
	b := mustCreate(t, h, volumeRequest("reflink-b", "node", size, nil, nil))
	podA, podB := runPod(t, h, bin, a), runPod(t, h, bin, b)
	podA.must("fill", "data.bin", tenantops.Request{Size: data})
	podB.tenant().Must(t, "copy-range", filepath.Join(podB.target, "copy.bin"), tenantops.Request{Source: filepath.Join(podA.target, "data.bin")})
	if !eventually(t, pool, 10*time.Second, func() bool { return podB.usage() < slack }) {
		t.Fatalf("volume B is charged %d bytes for the copy: it was not a reflink, so this test proves nothing", podB.usage())
	}
	podA.leave()
	before := capacity()
	if _, err := h.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: a}); err != nil {
		t.Fatal(err)
	}
	after := capacity()
	t.Logf("capacity %d MiB before deleting A, %d MiB after", before>>20, after>>20)
	if lingering := gauge(t, h, "toposnap_driver_lingering_bytes", "node"); lingering < data {
		t.Errorf("toposnap_driver_lingering_bytes{pool=\"node\"} = %v; want at least the %d bytes B holds of A", lingering, data)
	}
	if after-before > size-data+slack {
		t.Errorf("deleting A freed %d MiB of capacity, but %d MiB of its data is still on the disk in B, charged to no limit; want at most %d MiB freed",
			(after-before)>>20, data>>20, (size-data+slack)>>20)
	}
	// Once B drops the copy, the blocks go and so does the count.
	if err := os.Remove(filepath.Join(podB.target, "copy.bin")); err != nil {
		t.Fatal(err)
	}
	if !eventually(t, pool, time.Minute, func() bool { return capacity() >= before+size-slack }) {
		t.Errorf("capacity %d MiB after the copy was removed; want about %d MiB", capacity()>>20, (before+size)>>20)
	}
}

// TestNestedSubvolumeInheritanceListCannotEscapeTheVolume (item 1): a
// tenant creates a subvolume in its 32 MiB volume with its own qgroup
// inheritance list and writes 96 MiB into it at once. Whatever list it
// passes, its writes stop at its size, its usage shows them, the
// correction is counted, and its 64 MiB neighbour can still write its own
// size.
func TestNestedSubvolumeInheritanceListCannotEscapeTheVolume(t *testing.T) {
	h, pool := startBtrfsDriver(t, 2<<30, 100<<30)
	bin := tenantBinary(t)
	const tenantSize, neighbourSize, attack = 32 << 20, 64 << 20, 96 << 20
	for i, tt := range []struct {
		name string
		// inherit is the tenant's list, given the neighbour's subvolume id
		// (which a tenant learns by probing: a qgroup that does not exist
		// answers ENOENT).
		inherit func(neighbour uint64) []uint64
	}{
		{"no qgroup at all is held to the volume's size", func(uint64) []uint64 { return nil }},
		{"the neighbour's qgroup is held to the volume's size and spares the neighbour",
			func(neighbour uint64) []uint64 { return []uint64{1<<48 | neighbour} }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			suffix := strconv.Itoa(i)
			tenant := runPod(t, h, bin, mustCreate(t, h, allowNested(volumeRequest("tenant-"+suffix, "node", tenantSize, nil, nil))))
			neighbourID := mustCreate(t, h, volumeRequest("neighbour-"+suffix, "node", neighbourSize, nil, nil))
			neighbour := runPod(t, h, bin, neighbourID)
			neighbourSubvolume, err := btrfs.SubvolumeID(h.driver.nodePool.VolumeDir(neighbourID))
			if err != nil {
				t.Fatal(err)
			}
			corrections := nestedCorrections(t, h)

			res := tenant.do("escape", "escape", tenantops.Request{Size: attack, Inherit: tt.inherit(neighbourSubvolume)})
			t.Logf("the tenant wrote %.1f MiB into its nested subvolume: %v", float64(res.Written)/(1<<20), res.Failure())
			if !isQuotaError(res.Failure()) || res.Written > tenantSize+pastLimit {
				t.Errorf("a 32 MiB volume took %.1f MiB through a nested subvolume (err %v); want EDQUOT within %d MiB past its size",
					float64(res.Written)/(1<<20), res.Failure(), pastLimit>>20)
			}
			if !eventually(t, pool, 30*time.Second, func() bool { return tenant.usage() >= res.Written }) {
				t.Errorf("NodeGetVolumeStats reports %d bytes used; the tenant wrote %d", tenant.usage(), res.Written)
			}
			if !eventually(t, pool, 10*time.Second, func() bool { return nestedCorrections(t, h) > corrections }) {
				t.Error("toposnap_driver_nested_subvolume_corrections_total{pool=\"node\"} did not count the correction")
			}
			own := neighbour.do("fill", "own.bin", tenantops.Request{Size: neighbourSize})
			if own.Written < neighbourSize-pastLimit {
				t.Errorf("the 64 MiB neighbour could write only %.1f MiB (%v)", float64(own.Written)/(1<<20), own.Failure())
			}
		})
	}
}

// TestNestedSubvolumeRefusesCopiesUntilFlattened (item 2): a tenant nests
// a plain subvolume holding 4 MiB in its volume. A snapshot or a clone of
// the volume, which would show an empty directory in its place, is refused
// with FAILED_PRECONDITION naming it; once the tenant made it a plain
// directory, the same call succeeds and the copy holds the data.
func TestNestedSubvolumeRefusesCopiesUntilFlattened(t *testing.T) {
	h, _ := startBtrfsDriver(t, 2<<30, 100<<30)
	bin := tenantBinary(t)
	const size, nested = 64 << 20, "containers"
	for _, tt := range []struct {
		name string
		// copyOf makes the copy named name of source and returns its
		// volume: the first error is the call that may refuse.
		copyOf func(ctx context.Context, source, name string) (string, error)
	}{
		{"snapshot, then restore", func(ctx context.Context, source, name string) (string, error) {
			snapshot, err := h.controller.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: source})
			if err != nil {
				return "", err
			}
			restored := mustCreate(t, h, restoreRequest(name+"-restored", size, snapshot.GetSnapshot().GetSnapshotId()))
			return restored, nil
		}},
		{"clone", func(ctx context.Context, source, name string) (string, error) {
			req := volumeRequest(name, "node", size, nil, nil)
			req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
				Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: source}}}
			resp, err := h.controller.CreateVolume(ctx, req)
			return resp.GetVolume().GetVolumeId(), err
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			name := strings.ReplaceAll(tt.name, ", ", "-")
			name = strings.ReplaceAll(name, " ", "-")
			source := mustCreate(t, h, allowNested(volumeRequest(name+"-source", "node", size, nil, nil)))
			tenant := runPod(t, h, bin, source)
			tenant.must("subvolume", nested, tenantops.Request{})
			tenant.must("fill", filepath.Join(nested, "data.bin"), tenantops.Request{Size: 4 << 20})
			want := hashFile(t, filepath.Join(tenant.target, nested, "data.bin"))

			_, err := tt.copyOf(ctxT(t), source, name)
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), strconv.Quote(nested)) {
				t.Fatalf("a copy of a volume holding the nested subvolume %q: %v; want FAILED_PRECONDITION naming it", nested, err)
			}
			t.Logf("refused: %v", status.Convert(err).Message())

			tenant.must("flatten", nested, tenantops.Request{})
			copied, err := tt.copyOf(ctxT(t), source, name)
			if err != nil {
				t.Fatalf("the same copy once the subvolume is a plain directory: %v", err)
			}
			if got := hashFile(t, filepath.Join(publish(t, h, copied, true), nested, "data.bin")); got != want {
				t.Fatalf("the copy's %s/data.bin differs from what the tenant wrote", nested)
			}
		})
	}
}

// TestFullVolumeWithNestedSubvolumeIsDeleted (item 3): a tenant fills a
// nested subvolume of its volume until EDQUOT; once the pod is gone,
// DeleteVolume succeeds and the pool's capacity is what it was before the
// volume.
func TestFullVolumeWithNestedSubvolumeIsDeleted(t *testing.T) {
	h, pool := startBtrfsDriver(t, 2<<30, 100<<30)
	bin := tenantBinary(t)
	ctx := ctxT(t)
	capacity := func() int64 {
		resp, err := h.controller.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"scope": "node"}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetAvailableCapacity()
	}
	before := capacity()
	volume := mustCreate(t, h, allowNested(volumeRequest("full", "node", 64<<20, nil, nil)))
	tenant := runPod(t, h, bin, volume)
	tenant.must("subvolume", "nested", tenantops.Request{})
	if res := tenant.do("fill", "nested/fill.bin", tenantops.Request{Size: 256 << 20}); !isQuotaError(res.Failure()) {
		t.Fatalf("filling the nested subvolume of a 64 MiB volume: %.1f MiB written, %v; want EDQUOT", float64(res.Written)/(1<<20), res.Failure())
	}
	tenant.leave()
	if _, err := h.controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: volume}); err != nil {
		t.Fatalf("delete the full volume: %v", err)
	}
	// The space comes back once the cleaner dropped the subvolumes.
	const slack = 1 << 20
	if !eventually(t, pool, time.Minute, func() bool { return capacity() >= before-slack }) {
		t.Fatalf("capacity after the delete: %d bytes, %d before the volume", capacity(), before)
	}
	t.Logf("capacity %d before the volume, %d after its delete", before, capacity())
}
