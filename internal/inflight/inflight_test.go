package inflight

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
)

func TestLimitAnswers503WhenEverySlotStaysTaken(t *testing.T) {
	var rejected atomic.Int32
	limit := New(2, 50*time.Millisecond, func() { rejected.Add(1) })
	entered, release := make(chan struct{}), make(chan struct{})
	e := echo.New()
	e.POST("/", func(c echo.Context) error {
		entered <- struct{}{}
		<-release
		return c.NoContent(http.StatusOK)
	}, limit.Middleware)
	done := make(chan int, 2)
	for range 2 {
		go func() {
			rec := httptest.NewRecorder()
			e.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", nil))
			done <- rec.Code
		}()
		<-entered
	}
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", nil))
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" || rejected.Load() != 1 {
		t.Fatalf("third request with two slots held: %d %q (Retry-After %q, %d rejected), want 503",
			rec.Code, rec.Body.String(), rec.Header().Get("Retry-After"), rejected.Load())
	}
	close(release)
	for range 2 {
		if code := <-done; code != http.StatusOK {
			t.Fatalf("request holding a slot: %d, want 200", code)
		}
	}
	// The slots are free again.
	go func() { <-entered }()
	rec = httptest.NewRecorder()
	e.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("request after the others finished: %d, want 200", rec.Code)
	}
}

func TestLimitLetsAWaitingRequestInWhenASlotFrees(t *testing.T) {
	limit := New(1, time.Minute, nil)
	entered, release := make(chan struct{}), make(chan struct{})
	e := echo.New()
	e.POST("/", func(c echo.Context) error {
		entered <- struct{}{}
		<-release
		return c.NoContent(http.StatusOK)
	}, limit.Middleware)
	codes := make(chan int, 2)
	for range 2 {
		go func() {
			rec := httptest.NewRecorder()
			e.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", nil))
			codes <- rec.Code
		}()
	}
	<-entered // one holds the slot, the other waits
	release <- struct{}{}
	<-entered
	close(release)
	for range 2 {
		if code := <-codes; code != http.StatusOK {
			t.Fatalf("%d, want both served in turn", code)
		}
	}
}
