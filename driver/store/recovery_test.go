package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/toposnap/toposnap/driver/store/dirfs"
	"github.com/toposnap/toposnap/internal/topology"
)

// stubbornBackend cannot delete the object named stuck (an immutable file,
// a tree deeper than the open-file limit...) until it is cleared.
type stubbornBackend struct {
	dirfs.Backend
	mu    sync.Mutex
	stuck string
}

func (b *stubbornBackend) set(id string) {
	b.mu.Lock()
	b.stuck = id
	b.mu.Unlock()
}

func (b *stubbornBackend) Delete(path string) error {
	b.mu.Lock()
	stuck := b.stuck
	b.mu.Unlock()
	if stuck != "" && filepath.Base(path) == stuck {
		return fmt.Errorf("remove %s: %w", path, unix.EPERM)
	}
	return b.Backend.Delete(path)
}

// recorder collects OnUnrecovered reports.
type recorder struct {
	mu      sync.Mutex
	reports map[string][]error
}

func (r *recorder) report(object string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reports == nil {
		r.reports = map[string][]error{}
	}
	r.reports[object] = append(r.reports[object], err)
}

func (r *recorder) last(object string) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	reports := r.reports[object]
	if len(reports) == 0 {
		return 0, nil
	}
	return len(reports), reports[len(reports)-1]
}

func openStubborn(t *testing.T, dir string, backend Backend, rec *recorder) (*Pool, error) {
	t.Helper()
	return Open(Config{Scope: topology.ScopeZone, Dir: dir, Owner: "r/b", Capacity: 100,
		Segment: topology.Segment{topology.ZoneKey: "b"}, Holder: "node1", Backend: backend,
		RecoveryBackoff: Backoff{Initial: time.Millisecond, Max: 5 * time.Millisecond},
		OnUnrecovered:   rec.report})
}

// await polls cond until it holds or the deadline passes.
func await(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// A volume whose interrupted delete cannot be finished does not stop the
// pool from opening: it is reported, the rest is served, and the delete is
// retried until the obstacle is gone.
func TestUndeletableVolumeDoesNotStopThePool(t *testing.T) {
	dir := t.TempDir()
	backend := &stubbornBackend{}
	rec := &recorder{}
	p, err := openStubborn(t, dir, backend, rec)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	stuck, err := p.CreateVolume(ctx, VolumeRequest{Name: "stuck", CapacityBytes: 60})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateVolume(ctx, VolumeRequest{Name: "fine", CapacityBytes: 10}); err != nil {
		t.Fatal(err)
	}
	// What DeleteVolume leaves when its files cannot be removed.
	stuck.State = StateDeleting
	if err := p.writeMeta(stuck.ID, stuck); err != nil {
		t.Fatal(err)
	}
	p.Close()

	backend.set(stuck.ID)
	reopened, err := openStubborn(t, dir, backend, rec)
	if err != nil {
		t.Fatalf("one undeletable volume stopped the pool from opening: %v", err)
	}
	t.Cleanup(reopened.Close)
	if !reported(reopened, stuck.ID) {
		t.Fatalf("the undeletable volume is not listed: Unrecovered() = %+v", reopened.Unrecovered())
	}
	if _, err := rec.last(stuck.ID); !errors.Is(err, unix.EPERM) {
		t.Fatalf("OnUnrecovered got %v for the stuck volume, want its EPERM", err)
	}
	if _, err := reopened.LookupVolume(reopened.VolumeID("fine")); err != nil {
		t.Fatalf("the other volume is not served: %v", err)
	}
	if _, err := reopened.CreateVolume(ctx, VolumeRequest{Name: "new", CapacityBytes: 30}); err != nil {
		t.Fatalf("the pool does not serve new volumes: %v", err)
	}
	await(t, "the delete has been retried", func() bool { n, _ := rec.last(stuck.ID); return n >= 3 })

	backend.set("")
	await(t, "the stuck volume is recovered", func() bool { return !reported(reopened, stuck.ID) })
	if _, err := reopened.LookupVolume(stuck.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the stuck volume after its retried delete: %v, want ErrNotFound", err)
	}
	if _, err := rec.last(stuck.ID); err != nil {
		t.Fatalf("the last report of the recovered volume is %v, want nil (recovered)", err)
	}
	if avail, _ := reopened.Available(); avail != 60 {
		t.Fatalf("available = %d, want 60 (the stuck volume's 60 freed)", avail)
	}
}

// Close stops the retries, and may be called twice.
func TestCloseStopsRecoveryRetries(t *testing.T) {
	dir := t.TempDir()
	backend := &stubbornBackend{}
	p := openPool(t, dir, "node1", 100)
	vol, err := p.CreateVolume(context.Background(), VolumeRequest{Name: "stuck", CapacityBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	vol.State = StateDeleting
	if err := p.writeMeta(vol.ID, vol); err != nil {
		t.Fatal(err)
	}
	backend.set(vol.ID)
	reopened, err := openStubborn(t, dir, backend, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	await(t, "the delete is being retried", func() bool {
		u := reopened.Unrecovered()
		return len(u) == 1 && u[0].Attempts >= 2
	})
	done := make(chan struct{})
	go func() {
		reopened.Close()
		reopened.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not stop the retries")
	}
}

// A metadata temporary behind a lock the pool did not write (a symlink a
// compromised node of the zone planted) is reported, and does not keep
// the interrupted deletes of the pool from being finished.
func TestForeignMetadataTemporaryDoesNotBlockInterruptedDeletes(t *testing.T) {
	dir := t.TempDir()
	p := openPool(t, dir, "node1", 100)
	deleting, err := p.CreateVolume(context.Background(), VolumeRequest{Name: "deleting", CapacityBytes: 10})
	if err != nil {
		t.Fatal(err)
	}
	deleting.State = StateDeleting
	if err := p.writeMeta(deleting.ID, deleting); err != nil {
		t.Fatal(err)
	}
	planted := p.VolumeID("planted")
	writeFile(t, filepath.Join(dir, "meta", "."+planted+".json.tmp-x"), "{}")
	symlink(t, filepath.Join(t.TempDir(), "elsewhere"), filepath.Join(dir, "locks", planted))
	p.Close()

	reopened := openPool(t, dir, "node1", 100)
	if !reported(reopened, "meta/") {
		t.Fatalf("a metadata temporary behind a foreign lock is not reported: %+v", reopened.Unrecovered())
	}
	await(t, "the interrupted delete is finished", func() bool {
		_, err := reopened.LookupVolume(deleting.ID)
		return errors.Is(err, ErrNotFound)
	})
}

// slowDeleteBackend's Delete of the object named slow (a huge tree, or one a
// writer keeps filling) runs until released.
type slowDeleteBackend struct {
	dirfs.Backend
	slow     string
	released chan struct{}
}

func (b *slowDeleteBackend) Delete(path string) error {
	if filepath.Base(path) == b.slow {
		<-b.released
	}
	return b.Backend.Delete(path)
}

// An interrupted delete that takes long does not keep the pool from
// opening: Open stops waiting for it, it is listed as still recovering,
// the rest is served, and it is finished in the background.
func TestSlowInterruptedDeleteDoesNotDelayOpen(t *testing.T) {
	defer func(wait time.Duration) { recoveryOpenWait = wait }(recoveryOpenWait)
	recoveryOpenWait = 50 * time.Millisecond
	dir := t.TempDir()
	backend := &slowDeleteBackend{released: make(chan struct{})}
	rec := &recorder{}
	p, err := openStubborn(t, dir, backend, rec)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	slow, err := p.CreateVolume(ctx, VolumeRequest{Name: "slow", CapacityBytes: 60})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateVolume(ctx, VolumeRequest{Name: "fine", CapacityBytes: 10}); err != nil {
		t.Fatal(err)
	}
	slow.State = StateDeleting
	if err := p.writeMeta(slow.ID, slow); err != nil {
		t.Fatal(err)
	}
	p.Close()

	backend.slow = slow.ID
	opened := make(chan *Pool, 1)
	go func() {
		reopened, err := openStubborn(t, dir, backend, rec)
		if err != nil {
			t.Error(err)
		}
		opened <- reopened
	}()
	var reopened *Pool
	select {
	case reopened = <-opened:
	case <-time.After(10 * time.Second):
		close(backend.released) // let Open return, to end the test
		if reopened = <-opened; reopened != nil {
			reopened.Close()
		}
		t.Fatal("Open waited for an interrupted delete that takes long")
	}
	if reopened == nil {
		t.FailNow()
	}
	t.Cleanup(reopened.Close)
	// Cleanups run last first: a failure below releases the slow delete
	// before Close waits for it.
	var release sync.Once
	releaseSlow := func() { release.Do(func() { close(backend.released) }) }
	t.Cleanup(releaseSlow)
	// The interrupted delete is attempted from within the pool-wide step
	// that lists deletes, which may itself be what Open stopped waiting
	// for: the object is listed a moment after Open returns.
	await(t, "the delete still running is listed as recovering", func() bool {
		for _, u := range reopened.Unrecovered() {
			if u.Object == slow.ID {
				return errors.Is(u.Err, ErrRecovering)
			}
		}
		return false
	})
	if _, err := reopened.LookupVolume(reopened.VolumeID("fine")); err != nil {
		t.Fatalf("the other volume is not served: %v", err)
	}
	releaseSlow()
	await(t, "the slow delete is finished", func() bool { return !reported(reopened, slow.ID) })
	if _, err := reopened.LookupVolume(slow.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the slow volume after its delete finished: %v, want ErrNotFound", err)
	}
}
