package store

import (
	"context"
	"sync/atomic"
	"time"
)

// job is a copy running in the background: a snapshot being cut, or a
// restore or clone being filled. It holds the object's lock and its
// source's read lease for its whole life, so no other goroutine or process
// can touch the object, or delete the source, until it ends.
type job struct {
	id     string
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	copied atomic.Int64
	total  atomic.Int64
	err    error // set before done closes
	// What the first call answered (a Volume or Snapshot), for calls
	// repeated while the job runs.
	answer any
}

// Progress is how far a background copy has got.
type Progress struct {
	CopiedBytes, TotalBytes int64
}

func (j *job) progress(copied, total int64) {
	j.copied.Store(copied)
	j.total.Store(total)
}

// runningJob returns the job of this process working on id, if any.
func (p *Pool) runningJob(id string) *job {
	p.jobsMu.Lock()
	defer p.jobsMu.Unlock()
	return p.jobs[id]
}

// startJob registers a job for id (the caller holds id's lock). jobsMu is
// held for the map operation only, never across I/O.
func (p *Pool) startJob(id string, answer any) *job {
	ctx, cancel := context.WithCancel(context.Background())
	j := &job{id: id, ctx: ctx, cancel: cancel, done: make(chan struct{}), answer: answer}
	p.jobsMu.Lock()
	p.jobs[id] = j
	p.jobsMu.Unlock()
	return j
}

// endJob removes a job and announces its end.
func (p *Pool) endJob(j *job, err error) {
	p.jobsMu.Lock()
	delete(p.jobs, j.id)
	j.err = err
	p.jobsMu.Unlock()
	j.cancel()
	close(j.done)
}

// Progress reports a background copy's progress, if one runs here.
func (p *Pool) Progress(id string) (Progress, bool) {
	j := p.runningJob(id)
	if j == nil {
		return Progress{}, false
	}
	return Progress{CopiedBytes: j.copied.Load(), TotalBytes: j.total.Load()}, true
}

// awaitJob waits for j to end, until ctx ends or, when ctx has a deadline,
// a little before it, so the caller still gets an answer in time. It
// reports whether the job ended, and its error.
func awaitJob(ctx context.Context, j *job) (bool, error) {
	var early <-chan time.Time
	if deadline, ok := ctx.Deadline(); ok {
		remaining := time.Until(deadline)
		wait := remaining - min(time.Second, remaining/10)
		timer := time.NewTimer(max(wait, 0))
		defer timer.Stop()
		early = timer.C
	}
	select {
	case <-j.done:
		return true, j.err
	case <-ctx.Done():
	case <-early:
	}
	return false, nil
}

// stopJob cancels the job on id, if one runs here, and waits for it to end.
func (p *Pool) stopJob(ctx context.Context, id string) error {
	j := p.runningJob(id)
	if j == nil {
		return nil
	}
	j.cancel()
	select {
	case <-j.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops the retries of unrecovered work and cancels running copies,
// waiting for both to stop, then releases the pool directory. Interrupted
// fills and snapshots stay "creating": a repeated create restarts them.
// Close may be called more than once; no other call may be made during or
// after it.
func (p *Pool) Close() {
	p.closeOnce.Do(func() {
		p.recovery.stopRetries()
		p.stopNestedWatch()
		p.jobsMu.Lock()
		jobs := make([]*job, 0, len(p.jobs))
		for _, j := range p.jobs {
			jobs = append(jobs, j)
		}
		p.jobsMu.Unlock()
		for _, j := range jobs {
			j.cancel()
			<-j.done
		}
		if closer, ok := p.backend.(interface{ Close() error }); ok {
			_ = closer.Close()
		}
		p.root.Close()
	})
}
