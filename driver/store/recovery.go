package store

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Recovery never stops a pool from opening. Work a crash left that cannot
// be finished now (a delete that meets an immutable file or the open-file
// limit, a subdirectory or metadata file the pool did not write) is
// logged, listed by Unrecovered, reported to Config.OnUnrecovered, and
// retried in the background with exponential backoff until it succeeds or
// the pool is closed; every other object is served meanwhile. One
// undeletable volume must not take a node's CSI service down, nor, on a
// zone pool, every node's of the zone.
//
// Nor may one that takes long: Open waits for the first attempts of
// recovery for at most recoveryOpenWait, all together. Work still running
// then (a delete of a huge tree, or one a writer keeps filling) goes on in
// the background, listed by Unrecovered with ErrRecovering until it ends,
// and is retried with backoff if it fails; Open returns and the pool
// serves meanwhile. Tests of what Open finishes rely on it finishing
// within the wait, which work of test size does.

// recoveryOpenWait bounds how long Open waits for recovery's first
// attempts before leaving them to the background (a variable for tests).
var recoveryOpenWait = 10 * time.Second

// ErrRecovering is the Err of an Unrecovered entry whose first attempt
// was still running when Open stopped waiting for it.
var ErrRecovering = errors.New("first recovery attempt still running in the background")

// Backoff bounds the waits between retries: Initial, doubling up to Max.
type Backoff struct {
	Initial, Max time.Duration
}

// Unrecovered is work a crash left that the pool could not finish yet.
type Unrecovered struct {
	// Object is the object's ID, or a pool subdirectory ("tmp/", "meta/",
	// ...) for work on the whole pool.
	Object string
	// Err is the last attempt's error.
	Err error
	// Attempts counts the attempts so far; Since is when the first failed.
	Attempts int
	Since    time.Time
}

type recovery struct {
	backoff Backoff
	mu      sync.Mutex
	stuck   map[string]*Unrecovered
	stop    chan struct{}
	retries sync.WaitGroup
	// openDeadline is when Open stops waiting for first attempts; zero
	// once Open has returned (attempts then run where they are called,
	// in a retry's goroutine).
	openDeadline time.Time
}

func (r *recovery) init(backoff Backoff) {
	if backoff.Initial <= 0 {
		backoff.Initial = time.Second
	}
	if backoff.Max < backoff.Initial {
		backoff.Max = max(5*time.Minute, backoff.Initial)
	}
	r.backoff = backoff
	r.stuck = map[string]*Unrecovered{}
	r.stop = make(chan struct{})
}

// Unrecovered lists the work the pool has not been able to finish, sorted
// by object: the driver exports its length as a gauge and each entry as an
// event on the object's PV or content.
func (p *Pool) Unrecovered() []Unrecovered {
	p.recovery.mu.Lock()
	defer p.recovery.mu.Unlock()
	out := make([]Unrecovered, 0, len(p.recovery.stuck))
	for _, u := range p.recovery.stuck {
		out = append(out, *u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Object < out[j].Object })
	return out
}

// recover finishes or undoes what crashed operations left: every pool
// subdirectory is checked to be the pool's own, temporary work and metadata
// temporaries nobody holds a lock for are removed, and deletes that had
// begun are completed (the caller asked for them; the files may be half
// gone). Volumes left in StateCreating stay: they hold their capacity and
// are listed, and the CO's retry of CreateVolume completes them, as
// external-provisioner retries a create whose outcome it did not learn.
func (p *Pool) recover() {
	p.recovery.mu.Lock()
	p.recovery.openDeadline = time.Now().Add(recoveryOpenWait)
	p.recovery.mu.Unlock()
	defer func() {
		p.recovery.mu.Lock()
		p.recovery.openDeadline = time.Time{}
		p.recovery.mu.Unlock()
	}()
	for _, sub := range poolDirs {
		step := func() error { return p.checkDir(sub) }
		switch sub {
		case "tmp":
			step = p.cleanTemp
		case "meta":
			// A metadata temporary that cannot be removed (behind a
			// lock another node of the zone replaced with a symlink,
			// say) is reported, but must not hold up every delete
			// that had begun: both run, and both failures are told.
			step = func() error { return errors.Join(p.cleanMetaTemps(), p.finishDeletes()) }
		}
		p.attempt(sub+"/", step)
	}
}

// checkDir checks that the pool subdirectory sub is a real directory.
func (p *Pool) checkDir(sub string) error {
	dir, err := p.openDir(sub)
	if err != nil {
		return err
	}
	return dir.Close()
}

// finishDeletes starts finishing every delete that had begun, each on its
// own: one that cannot be finished is retried alone.
func (p *Pool) finishDeletes() error {
	for _, kind := range []Kind{KindVolume, KindSnapshot} {
		ids, err := p.metaIDs(kind)
		if err != nil {
			return err
		}
		for _, id := range ids {
			p.attempt(id, func() error { return p.finishDelete(kind, id) })
		}
	}
	return nil
}

// finishDelete completes id's delete if one had begun. Metadata the pool
// did not write is reported here too.
func (p *Pool) finishDelete(kind Kind, id string) error {
	state, err := p.metaState(id)
	if errors.Is(err, ErrNotFound) || (err == nil && state != StateDeleting) {
		return nil
	}
	if err != nil {
		return err
	}
	klog.InfoS("Finishing an interrupted delete", "pool", p.cfg.Dir, "id", id)
	if kind == KindVolume {
		err = p.DeleteVolume(context.Background(), id)
	} else {
		err = p.DeleteSnapshot(context.Background(), id)
	}
	if errors.Is(err, ErrInFlight) {
		return nil // whoever holds it (another node of the zone) finishes it
	}
	if err != nil {
		return fmt.Errorf("finish deleting %s: %w", id, err)
	}
	return nil
}

// attempt runs step for object; if it fails, the object is reported and
// step retried in the background (unless a retry of it already runs).
// While Open waits, a step still running at its deadline is left to run
// in the background instead, listed as ErrRecovering (see
// recoveryOpenWait).
func (p *Pool) attempt(object string, step func() error) {
	r := &p.recovery
	r.mu.Lock()
	_, retrying := r.stuck[object]
	deadline := r.openDeadline
	r.mu.Unlock()
	if retrying {
		return
	}
	if deadline.IsZero() {
		p.attempted(object, step, step())
		return
	}
	result := make(chan error, 1)
	go func() { result <- step() }()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case err := <-result:
		p.attempted(object, step, err)
		return
	case <-timer.C:
	}
	since := time.Now()
	r.mu.Lock()
	if _, retrying := r.stuck[object]; retrying {
		r.mu.Unlock()
		return
	}
	r.stuck[object] = &Unrecovered{Object: object, Err: ErrRecovering, Since: since}
	r.retries.Add(1)
	r.mu.Unlock()
	klog.InfoS("Recovery is taking long; serving the pool while it runs", "pool", p.cfg.Dir, "object", object)
	p.reportRecovery(object, ErrRecovering)
	go func() {
		err := <-result
		r.mu.Lock()
		if err == nil {
			delete(r.stuck, object)
		} else {
			r.stuck[object].Err = err
			r.stuck[object].Attempts = 1
		}
		r.mu.Unlock()
		p.reportRecovery(object, err)
		if err == nil {
			klog.InfoS("Finished what a crash left", "pool", p.cfg.Dir, "object", object)
			r.retries.Done()
			return
		}
		klog.ErrorS(err, "Cannot finish what a crash left; serving the rest of the pool and retrying",
			"pool", p.cfg.Dir, "object", object, "retryIn", r.backoff.Initial)
		p.retry(object, step) // its Done is this goroutine's
	}()
}

// attempted records the outcome of a first attempt of step for object:
// if it failed, the object is reported and step retried
// in the background (unless a retry of it already runs).
func (p *Pool) attempted(object string, step func() error, err error) {
	if err == nil {
		return
	}
	r := &p.recovery
	r.mu.Lock()
	if _, retrying := r.stuck[object]; retrying {
		r.mu.Unlock()
		return
	}
	r.stuck[object] = &Unrecovered{Object: object, Err: err, Attempts: 1, Since: time.Now()}
	r.retries.Add(1)
	r.mu.Unlock()
	klog.ErrorS(err, "Cannot finish what a crash left; serving the rest of the pool and retrying",
		"pool", p.cfg.Dir, "object", object, "retryIn", r.backoff.Initial)
	p.reportRecovery(object, err)
	go p.retry(object, step)
}

// retry repeats step with exponential backoff until it succeeds or the
// pool is closed.
func (p *Pool) retry(object string, step func() error) {
	r := &p.recovery
	defer r.retries.Done()
	wait := r.backoff.Initial
	for {
		timer := time.NewTimer(wait)
		select {
		case <-r.stop:
			timer.Stop()
			return
		case <-timer.C:
		}
		select {
		case <-r.stop:
			return
		default:
		}
		err := step()
		r.mu.Lock()
		if err == nil {
			delete(r.stuck, object)
		} else {
			r.stuck[object].Err = err
			r.stuck[object].Attempts++
		}
		r.mu.Unlock()
		p.reportRecovery(object, err)
		if err == nil {
			klog.InfoS("Finished what a crash left", "pool", p.cfg.Dir, "object", object)
			return
		}
		wait = min(2*wait, r.backoff.Max)
		klog.ErrorS(err, "Still cannot finish what a crash left", "pool", p.cfg.Dir, "object", object, "retryIn", wait)
	}
}

func (p *Pool) reportRecovery(object string, err error) {
	if p.cfg.OnUnrecovered != nil {
		p.cfg.OnUnrecovered(object, err)
	}
}

// stopRetries stops the retries and waits for a running attempt to end.
func (r *recovery) stopRetries() {
	close(r.stop)
	r.retries.Wait()
}
