// Package inflighttest attacks a server the way issue 19 found the
// extender could be knocked over: many connections each send a large
// request body and stall before its end. Tests of the extender and the
// webhook use it to check that the server's memory stays bounded, that it
// still answers, and that it closes the stalled connections.
package inflighttest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"
)

// Attack is a set of connections, each stalled inside a request body.
type Attack struct {
	conns   []net.Conn
	written sync.WaitGroup
}

// StallBodies opens connections with dial and on each sends a POST to path
// whose chunked body has size bytes and no end, then stalls. All the
// connections share one body buffer, so the attack's own memory does not
// count in the server's.
func StallBodies(t *testing.T, dial func() (net.Conn, error), path string, connections, size int) *Attack {
	t.Helper()
	header := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: attacker\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n", path, size+1)
	body := bytes.Repeat([]byte("a"), size)
	a := &Attack{}
	for range connections {
		conn, err := dial()
		if err != nil {
			t.Fatalf("attacker connection %d: %v", len(a.conns), err)
		}
		a.conns = append(a.conns, conn)
		a.written.Add(1)
		go func() {
			defer a.written.Done()
			// The chunk declared one byte more than is sent: the server
			// waits for it. Errors mean the server closed the connection.
			if _, err := conn.Write([]byte(header)); err == nil {
				_, _ = conn.Write(body)
			}
		}()
	}
	t.Cleanup(a.close)
	return a
}

// WaitWritten waits until every connection has sent its body (into the
// server or the kernel's buffers) or failed to, at most until deadline.
func (a *Attack) WaitWritten(t *testing.T, deadline time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() { a.written.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(deadline):
		t.Logf("attackers still writing after %s", deadline)
	}
}

// StillOpen is how many connections the server has not closed within d:
// each is read to its end (whatever the server answered first) until d.
func (a *Attack) StillOpen(d time.Duration) int {
	deadline := time.Now().Add(d)
	var open sync.WaitGroup
	var mu sync.Mutex
	stillOpen := 0
	for _, conn := range a.conns {
		open.Add(1)
		go func() {
			defer open.Done()
			_ = conn.SetReadDeadline(deadline)
			_, err := io.Copy(io.Discard, conn)
			var netErr net.Error
			if errors.As(err, &netErr) && netErr.Timeout() {
				mu.Lock()
				stillOpen++
				mu.Unlock()
			}
		}()
	}
	open.Wait()
	return stillOpen
}

func (a *Attack) close() {
	for _, conn := range a.conns {
		_ = conn.Close()
	}
}

// LiveHeap is the bytes of heap in use after a collection.
func LiveHeap() uint64 {
	runtime.GC()
	var stats runtime.MemStats
	runtime.ReadMemStats(&stats)
	return stats.HeapAlloc
}

// PeakGrowth samples the live heap until window passes and returns the
// most it grew over baseline; it returns early once growth passes limit.
func PeakGrowth(baseline, limit uint64, window time.Duration) uint64 {
	var peak uint64
	for deadline := time.Now().Add(window); time.Now().Before(deadline); {
		if heap := LiveHeap(); heap > baseline && heap-baseline > peak {
			peak = heap - baseline
		}
		if peak > limit {
			break
		}
		time.Sleep(50 * time.Millisecond) // sampling period, not synchronisation
	}
	return peak
}
