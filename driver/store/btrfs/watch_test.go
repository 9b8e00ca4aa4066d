package btrfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/toposnap/toposnap/internal/tenantops"
)

// seenCorrection is a Correction and when the watcher reported it.
type seenCorrection struct {
	Correction
	at time.Time
}

// startWatch runs the watcher on volumesDir until the test ends and
// returns once its first full pass is done.
func startWatch(t *testing.T, b *Backend, volumesDir string, opts watchOptions) <-chan seenCorrection {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	seen := make(chan seenCorrection, 1024)
	started := make(chan struct{})
	opts.started = func() { close(started) }
	done := make(chan error, 1)
	go func() {
		done <- b.watch(ctx, volumesDir, func(c Correction) { seen <- seenCorrection{c, time.Now()} }, opts)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	select {
	case <-started:
	case err := <-done:
		t.Fatalf("Watch returned before its first pass: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no first pass after 10s")
	}
	return seen
}

// awaitCorrection waits for the watcher's report on the subvolume id.
func awaitCorrection(t *testing.T, seen <-chan seenCorrection, id uint64, within time.Duration) seenCorrection {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case c := <-seen:
			if c.ID == id {
				return c
			}
		case <-deadline:
			t.Fatalf("no correction of subvolume %d within %v", id, within)
		}
	}
}

var (
	notified = watchOptions{notify: true, interval: time.Second, minInterval: minPassInterval, passLimit: maxPassLinks}
	polled   = watchOptions{interval: time.Second}
)

// Every way of nesting a subvolume outside its volume's limit group is
// found and corrected, with fanotify and by the poll alone: a subvolume
// nested while the watcher was not running, a zeroed inheritance list, a
// neighbour's group, a subvolume nested in a nested one, a snapshot with
// an inheritance list, in a volume that is a restore. Afterwards each one
// is a member of exactly its volume's limit group.
func TestWatchCorrectsNestedSubvolumes(t *testing.T) {
	for _, mode := range []struct {
		name string
		opts watchOptions
	}{{"fanotify", notified}, {"poll", polled}} {
		t.Run(mode.name, func(t *testing.T) {
			b, dir := openTestBackend(t)
			volumes := filepath.Join(dir, "volumes")
			if err := os.Mkdir(volumes, 0o755); err != nil {
				t.Fatal(err)
			}
			vol, neighbour, restore := filepath.Join(volumes, "vol"), filepath.Join(volumes, "neighbour"), filepath.Join(volumes, "restore")
			for _, path := range []string{vol, neighbour} {
				if err := b.Create("", path, 32<<20); err != nil {
					t.Fatal(err)
				}
			}
			neighbourID := mustSubvolumeID(t, neighbour)
			if err := tenantops.CreateSubvolumeInheriting(filepath.Join(vol, "before"), []uint64{}); err != nil {
				t.Fatal(err)
			}
			seen := startWatch(t, b, volumes, mode.opts)
			if c := awaitCorrection(t, seen, mustSubvolumeID(t, filepath.Join(vol, "before")), 5*time.Second); c.Nested != "before" || !c.Joined {
				t.Errorf("nested before the watcher started: %+v", c)
			}
			if err := os.Mkdir(filepath.Join(vol, "dir"), 0o755); err != nil {
				t.Fatal(err)
			}

			for _, tt := range []struct {
				name, volume, nested string
				create               func(path string) error
				detached             []string
			}{
				{name: "zeroed inheritance list", volume: vol, nested: "escape",
					create: func(path string) error { return tenantops.CreateSubvolumeInheriting(path, []uint64{}) }},
				{name: "neighbour's limit group", volume: vol, nested: "charge",
					create: func(path string) error {
						return tenantops.CreateSubvolumeInheriting(path, []uint64{qgroupID(1, neighbourID)})
					},
					detached: []string{qgroupName(qgroupID(1, neighbourID))}},
				{name: "nested in a nested subvolume", volume: vol, nested: "escape/deeper",
					create: func(path string) error { return tenantops.CreateSubvolumeInheriting(path, []uint64{}) }},
				{name: "snapshot with an inheritance list", volume: vol, nested: "dir/snap",
					create: func(path string) error {
						return tenantops.SnapshotInheriting(path, filepath.Join(vol, "escape"), []uint64{})
					}},
				{name: "in a restore", volume: restore, nested: "escape",
					create: func(path string) error {
						if err := b.Clone(context.Background(), vol+"/escape/deeper", "", restore, 32<<20, nil); err != nil {
							return err
						}
						return tenantops.CreateSubvolumeInheriting(path, []uint64{})
					}},
			} {
				path := filepath.Join(tt.volume, tt.nested)
				start := time.Now()
				if err := tt.create(path); err != nil {
					t.Fatalf("%s: %v", tt.name, err)
				}
				created := time.Now()
				c := awaitCorrection(t, seen, mustSubvolumeID(t, path), 5*time.Second)
				t.Logf("%s: corrected %v after the create ioctl returned (it took %v)", tt.name, c.at.Sub(created), created.Sub(start))
				if c.Volume != tt.volume || c.Nested != tt.nested || !c.Joined || !slices.Equal(c.Detached, tt.detached) {
					t.Errorf("%s: reported %+v, want volume %s, nested %s, joined, detached %v", tt.name, c.Correction, tt.volume, tt.nested, tt.detached)
				}
				parents, err := qgroupParents(b.root, qgroupID(0, c.ID))
				if want := []uint64{qgroupID(1, mustSubvolumeID(t, tt.volume))}; err != nil || !slices.Equal(parents, want) {
					t.Errorf("%s: member of %v (%v), want exactly %v", tt.name, parents, err, want)
				}
			}
		})
	}
}

func mustSubvolumeID(t *testing.T, path string) uint64 {
	t.Helper()
	id, err := SubvolumeID(path)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// syncedUsage commits, then reads the volume's usage.
func syncedUsage(t *testing.T, b *Backend, volume string) int64 {
	t.Helper()
	if err := unix.Syncfs(int(b.root.Fd())); err != nil {
		t.Fatal(err)
	}
	used, err := b.Usage(volume)
	if err != nil {
		t.Fatal(err)
	}
	return used
}

// maxOvershoot bounds what a tenant writes past its limit through a
// subvolume nested with its own inheritance list while the watcher runs
// with fanotify. Measured on Linux 6.18, 2 busy cores: 0 MiB in every
// trial (the watcher moves the subvolume ~0.1-2 ms after the create
// ioctl returns, before the tenant's first 1 MiB write is reserved); the
// bound leaves room for a loaded node. Polling alone (once a second) lets
// the tenant write all of escapeSize: 96 MiB past a 32 MiB limit.
const maxOvershoot = 8 << 20

// escapeSize is what the hostile tenant tries to write: four times its
// limit.
const escapeSize = 128 << 20

// A hostile tenant (uid 1000) nests a subvolume with its own inheritance
// list and writes into it at once, as fast as it can. With the watcher
// running it gets at most maxOvershoot past its limit before its writes
// fail with EDQUOT, and a neighbour it named (whose limit is larger, so
// that the window's writes are not cut short by it) gets its charge back
// and can write its full size. Fails without the watcher: the tenant
// writes all of escapeSize with a zeroed list, the neighbour's 64 MiB
// with its group, and nothing is corrected.
func TestWatchBoundsInheritanceEscape(t *testing.T) {
	const limit, neighbourLimit, trials = 32 << 20, 64 << 20, 3
	for _, tt := range []struct {
		name  string
		named bool // the list names the neighbour's limit group
	}{{"zeroed inheritance list", false}, {"neighbour's limit group", true}} {
		t.Run(tt.name, func(t *testing.T) {
			b, dir := openTestBackend(t)
			volumes := filepath.Join(dir, "volumes")
			if err := os.Mkdir(volumes, 0o755); err != nil {
				t.Fatal(err)
			}
			seen := startWatch(t, b, volumes, notified)
			for trial := range trials {
				vol := filepath.Join(volumes, fmt.Sprintf("vol%d", trial))
				neighbour := filepath.Join(volumes, fmt.Sprintf("neighbour%d", trial))
				if err := b.Create("", vol, limit); err != nil {
					t.Fatal(err)
				}
				if err := b.Create("", neighbour, neighbourLimit); err != nil {
					t.Fatal(err)
				}
				inherit := []uint64{}
				if tt.named {
					inherit = append(inherit, qgroupID(1, mustSubvolumeID(t, neighbour)))
				}
				room := limit - syncedUsage(t, b, vol)

				res := newTenant(t, vol).do("escape", "escape", tenantops.Request{Size: escapeSize, Inherit: inherit})
				overshoot := res.Written - room
				c := awaitCorrection(t, seen, mustSubvolumeID(t, filepath.Join(vol, "escape")), 5*time.Second)
				t.Logf("trial %d: tenant wrote %d MiB into a %d MiB volume (%v): %.1f MiB past its limit; moved %d committed bytes from %v",
					trial, res.Written>>20, limit>>20, res.Failure(), float64(overshoot)/(1<<20), c.Bytes, c.Detached)
				if overshoot > maxOvershoot || !isQuotaError(res.Failure()) {
					t.Errorf("tenant wrote %.1f MiB past its limit (%v), want at most %d MiB, then EDQUOT",
						float64(overshoot)/(1<<20), res.Failure(), maxOvershoot>>20)
				}
				if used := syncedUsage(t, b, vol); used < res.Written {
					t.Errorf("volume charged %d bytes, want all %d the tenant wrote", used, res.Written)
				}
				if used := syncedUsage(t, b, neighbour); used > 1<<20 {
					t.Errorf("neighbour still charged %d bytes", used)
				}
				mine := newTenant(t, neighbour).do("fill", "mine.bin", tenantops.Request{Size: neighbourLimit - 1<<20})
				if err := mine.Failure(); err != nil {
					t.Errorf("neighbour could write %d MiB of its %d MiB: %v", mine.Written>>20, neighbourLimit>>20, err)
				}
			}
		})
	}
}

// A tenant creating directories as fast as it can (or any busy directory
// creation on the filesystem, which the fanotify mark covers whole) does
// not keep the watcher busy: passes are spaced, and the watcher uses a
// small share of one core.
func TestWatchStaysIdleUnderDirectoryChurn(t *testing.T) {
	b, dir := openTestBackend(t)
	volumes := filepath.Join(dir, "volumes")
	if err := os.Mkdir(volumes, 0o755); err != nil {
		t.Fatal(err)
	}
	vol := filepath.Join(volumes, "vol")
	if err := b.Create("", vol, 32<<20); err != nil {
		t.Fatal(err)
	}
	startWatch(t, b, volumes, notified)
	pod := newTenant(t, vol)
	const churnFor = 2 * time.Second
	before := cpuTime(t)
	res := pod.must("churn", "", tenantops.Request{Size: churnFor.Milliseconds()})
	used := cpuTime(t) - before
	t.Logf("%d directories created in %v; the watcher used %v of CPU", res.Written, churnFor, used)
	if limit := churnFor / 10; used > limit {
		t.Errorf("the watcher used %v of CPU during %v of directory churn, want at most %v", used, churnFor, limit)
	}
}

// cpuTime is the CPU time this process (the watcher, here) has used.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var usage unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &usage); err != nil {
		t.Fatal(err)
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
}

// A pass bounded to a few links leaves a cursor, and the next passes
// continue from it: every nested subvolume is corrected however many
// appear at once.
func TestWatchPassResumesAfterItsLimit(t *testing.T) {
	b, dir := openTestBackend(t)
	volumes := filepath.Join(dir, "volumes")
	if err := os.Mkdir(volumes, 0o755); err != nil {
		t.Fatal(err)
	}
	vol := filepath.Join(volumes, "vol")
	if err := b.Create("", vol, 32<<20); err != nil {
		t.Fatal(err)
	}
	opts := notified
	opts.passLimit = 2
	seen := startWatch(t, b, volumes, opts)
	pending := map[uint64]bool{}
	for i := range 7 {
		path := filepath.Join(vol, fmt.Sprintf("escape%d", i))
		if err := tenantops.CreateSubvolumeInheriting(path, []uint64{}); err != nil {
			t.Fatal(err)
		}
		pending[mustSubvolumeID(t, path)] = true
	}
	deadline := time.After(10 * time.Second)
	for len(pending) > 0 {
		select {
		case c := <-seen:
			delete(pending, c.ID)
		case <-deadline:
			t.Fatalf("subvolumes %v never corrected", pending)
		}
	}
}

// The escape Watch cannot undo: a tenant that nests a subvolume in no
// limit group, writes into it, reflinks the data into its volume and
// removes the subvolume, all before a pass, leaves the data charged to a
// qgroup no limit holds. The watcher reports that charge (it cannot name
// the volume); the volume's usage does not hold it.
func TestWatchReportsChargeOrphanedByReflinkAndRemove(t *testing.T) {
	b, dir := openTestBackend(t)
	volumes := filepath.Join(dir, "volumes")
	if err := os.Mkdir(volumes, 0o755); err != nil {
		t.Fatal(err)
	}
	vol := filepath.Join(volumes, "vol")
	if err := b.Create("", vol, 32<<20); err != nil {
		t.Fatal(err)
	}
	// Polled only, and seldom: the tenant wins the race every time.
	orphans := make(chan OrphanedCharge, 16)
	opts := watchOptions{interval: 2 * time.Second, orphaned: func(o OrphanedCharge) { orphans <- o }}
	startWatch(t, b, volumes, opts)
	const size = 64 << 20
	newTenant(t, vol).must("reflink-escape", "escape", tenantops.Request{Size: size})
	if err := unix.Syncfs(int(b.root.Fd())); err != nil {
		t.Fatal(err)
	}
	select {
	case o := <-orphans:
		if o.Bytes < size {
			t.Errorf("reported %+v, want at least %d bytes", o, size)
		}
		t.Logf("orphaned charge reported: qgroup 0/%d, %d bytes; the volume's usage: %d bytes", o.ID, o.Bytes, syncedUsage(t, b, vol))
	case <-time.After(10 * time.Second):
		t.Fatal("no orphaned charge reported")
	}
}

// What Delete leaves charged is no escape and is not reported (a deleted
// volume's qgroup keeps the charge of the blocks its snapshot still holds;
// a deleted volume's nested subvolumes), nor is a subvolume a tenant
// removed with nothing of it referenced elsewhere.
func TestWatchDoesNotReportWhatDeleteLeftCharged(t *testing.T) {
	b, dir := openTestBackend(t)
	volumes := filepath.Join(dir, "volumes")
	if err := os.Mkdir(volumes, 0o755); err != nil {
		t.Fatal(err)
	}
	orphans := make(chan OrphanedCharge, 16)
	startWatch(t, b, volumes, watchOptions{interval: 100 * time.Millisecond, orphaned: func(o OrphanedCharge) { orphans <- o }})
	vol := filepath.Join(volumes, "vol")
	if err := b.Create("", vol, 32<<20); err != nil {
		t.Fatal(err)
	}
	pod := newTenant(t, vol)
	pod.must("subvolume", "nested", tenantops.Request{})
	pod.must("fill", "nested/data.bin", tenantops.Request{Size: 8 << 20})
	pod.must("fill", "data.bin", tenantops.Request{Size: 8 << 20})
	pod.must("subvolume", "gone", tenantops.Request{})
	pod.leave()
	if err := os.Remove(filepath.Join(vol, "gone")); err != nil { // no data: nothing reported
		t.Fatal(err)
	}
	// A volume whose snapshot keeps its blocks charged to it after Delete.
	plain := filepath.Join(volumes, "plain")
	if err := b.Create("", plain, 32<<20); err != nil {
		t.Fatal(err)
	}
	plainPod := newTenant(t, plain)
	plainPod.must("fill", "data.bin", tenantops.Request{Size: 8 << 20})
	plainPod.leave()
	if err := b.Snapshot(context.Background(), plain, filepath.Join(dir, "snap-tmp"), filepath.Join(dir, "snap"), nil); err != nil {
		t.Fatal(err)
	}
	ids := []uint64{mustSubvolumeID(t, vol), mustSubvolumeID(t, filepath.Join(vol, "nested")), mustSubvolumeID(t, plain)}
	for _, path := range []string{vol, plain} {
		if err := b.Delete(path); err != nil {
			t.Fatal(err)
		}
	}
	waitCleaned(t, b, ids...)
	for range 3 {
		if err := unix.Syncfs(int(b.root.Fd())); err != nil {
			t.Fatal(err)
		}
		select {
		case o := <-orphans:
			t.Fatalf("reported %+v, which Delete left", o)
		case <-time.After(300 * time.Millisecond):
		}
	}
}
