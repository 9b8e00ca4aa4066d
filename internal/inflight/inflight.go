// Package inflight bounds how many requests a server reads and decides at
// once. A request's body is read into memory whole (ExtenderArgs,
// AdmissionReview), so without a bound a caller who opens many connections
// and sends large bodies slowly makes the server hold all of them; with
// it, the server holds at most Limit.slots bodies, and a request that finds
// every slot taken is answered 503 soon rather than queued without end.
// The servers' read timeouts bound how long one request keeps a slot.
package inflight

import (
	"fmt"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

// Limit is a number of requests in flight and how long a request waits for
// one of them.
type Limit struct {
	slots chan struct{}
	wait  time.Duration
	// rejected is called for each request answered 503 (a metric).
	rejected func()
}

// New allows slots requests at once; a request waits at most wait for a
// slot. rejected, if not nil, is called for each request turned away.
func New(slots int, wait time.Duration, rejected func()) *Limit {
	if rejected == nil {
		rejected = func() {}
	}
	return &Limit{slots: make(chan struct{}, slots), wait: wait, rejected: rejected}
}

// Middleware holds a slot while next runs; it answers 503 with Retry-After
// when no slot frees up within the wait or the caller goes away. It must
// run before anything reads the body.
func (l *Limit) Middleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		select {
		case l.slots <- struct{}{}:
		default:
			timer := time.NewTimer(l.wait)
			defer timer.Stop()
			select {
			case l.slots <- struct{}{}:
			case <-timer.C:
				return l.reject(c)
			case <-c.Request().Context().Done():
				return l.reject(c)
			}
		}
		defer func() { <-l.slots }()
		return next(c)
	}
}

func (l *Limit) reject(c echo.Context) error {
	l.rejected()
	c.Response().Header().Set("Retry-After", "1")
	return echo.NewHTTPError(http.StatusServiceUnavailable,
		fmt.Sprintf("%d requests are in flight, the most this server reads at once: retry", cap(l.slots)))
}
