package webhook

import (
	"errors"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
)

// Results of an admission request, as counted in metrics.
const (
	resultAllowed    = "allowed"
	resultPatched    = "patched"
	resultDenied     = "denied"
	resultBadRequest = "bad_request"
	resultTooLarge   = "too_large"
	resultBusy       = "busy"
	resultError      = "error"
)

// resultKey is where a handler leaves its result in the echo context.
const resultKey = "toposnap.result"

// metrics are the webhook's Prometheus series.
type metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// newMetrics registers the webhook's series with registry.
func newMetrics(registry prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "toposnap_webhook_requests_total",
			Help: "Admission requests by route path and result (allowed, patched, denied, bad_request, too_large, busy, error).",
		}, []string{"path", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "toposnap_webhook_request_duration_seconds",
			Help:    "Time to answer an admission request, by route path.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"path"}),
	}
	registry.MustRegister(m.requests, m.latency)
	return m
}

// instrument is route middleware that counts each request by its result
// and observes its latency.
func (m *metrics) instrument(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		begin := time.Now()
		err := next(c)
		path := c.Path()
		m.latency.WithLabelValues(path).Observe(time.Since(begin).Seconds())
		m.requests.WithLabelValues(path, requestResult(c, err)).Inc()
		return err
	}
}

// requestResult is the result a handler recorded, or the one its error implies.
func requestResult(c echo.Context, err error) string {
	var httpErr *echo.HTTPError
	switch {
	case err == nil:
		if result, ok := c.Get(resultKey).(string); ok {
			return result
		}
		return resultError
	case errors.As(err, &httpErr) && httpErr.Code == http.StatusRequestEntityTooLarge:
		return resultTooLarge
	case errors.As(err, &httpErr) && httpErr.Code == http.StatusBadRequest:
		return resultBadRequest
	case errors.As(err, &httpErr) && httpErr.Code == http.StatusServiceUnavailable:
		return resultBusy
	}
	return resultError
}
