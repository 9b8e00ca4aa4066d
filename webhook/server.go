package webhook

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/inflight"
)

// Route paths, as the webhook configurations' clientConfig names them.
const (
	PathMutateStorageClass          = "/mutate/storageclass"
	PathValidateClaim               = "/validate/pvc"
	PathValidateSnapshotClass       = "/validate/volumesnapshotclass"
	PathMutatePod                   = "/mutate/pod"
	PathHealthz                     = "/healthz"
	PathReadyz                      = "/readyz"
	PathMetrics                     = "/metrics"
	maxBodyBytes              int64 = 1 << 20
)

// Admission requests the webhook reads and decides at once, and how long
// another waits for one of them before it is answered 503 (the API server
// then applies the hook's failurePolicy). Deciding takes microseconds from
// informer caches, so 16 is far more than the API server's calls need; the
// bound is what stalled callers can make the webhook hold: 16 bodies of
// maxBodyBytes, each for at most the read timeout.
const (
	maxInFlight = 16
	slotWait    = time.Second
)

// NewServer is the webhook's HTTP edge: it routes, bounds and decodes
// requests, calls the route's decider on state, and encodes the answer.
// Metrics go to registry, which /metrics serves (nil: a registry of its own).
// pods says what the pod route does (see MutatePod); its zero value leaves
// every pod alone.
func NewServer(state State, registry *prometheus.Registry, pods PodOptions) *echo.Echo {
	if registry == nil {
		registry = prometheus.NewRegistry()
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = writeError
	e.Use(recoverPanics)
	m := newMetrics(registry)
	// The slot is taken before the body is read: what it bounds is the
	// bodies held in memory.
	limit := inflight.New(maxInFlight, slotWait, nil).Middleware
	e.POST(PathMutateStorageClass, review(decideStorageClass(state)), m.instrument, limit)
	e.POST(PathValidateClaim, review(decideClaim(state)), m.instrument, limit)
	e.POST(PathValidateSnapshotClass, review(decideSnapshotClass(state)), m.instrument, limit)
	e.POST(PathMutatePod, review(decidePod(state, pods)), m.instrument, limit)
	e.GET(PathHealthz, func(c echo.Context) error { return c.String(http.StatusOK, "ok\n") })
	e.GET(PathReadyz, func(c echo.Context) error {
		if err := state.Ready(); err != nil {
			return c.String(http.StatusServiceUnavailable, err.Error()+"\n")
		}
		return c.String(http.StatusOK, "ok\n")
	})
	e.GET(PathMetrics, echo.WrapHandler(promhttp.HandlerFor(registry, promhttp.HandlerOpts{})))
	return e
}

// review is the handler of an admission route: read the body (at most
// maxBodyBytes), decode the AdmissionReview, decide, answer with the
// response. Requests that cannot be understood get 400 saying why.
func review(decide decider) echo.HandlerFunc {
	return func(c echo.Context) error {
		body, err := readBody(c.Request(), maxBodyBytes)
		if err != nil {
			return err
		}
		request, err := decodeReview(body)
		if err != nil {
			return httpError(err)
		}
		decision, err := decide(c.Request().Context(), request.Request)
		var bad *badRequest
		switch {
		case errors.As(err, &bad):
			return httpError(err)
		case err != nil:
			// The request is fine but the state it needs could not be read:
			// refuse with a message the user can act on, rather than an
			// HTTP error the API server would report as the webhook failing.
			klog.ErrorS(err, "Cannot decide admission request", "path", c.Path(), "uid", request.Request.UID)
			decision = Decision{Reasons: []string{fmt.Sprintf("toposnap webhook cannot check this request now (%v): retry", err)}}
			c.Set(resultKey, resultError)
		default:
			c.Set(resultKey, decision.Result())
		}
		response, err := decision.response(request.Request.UID)
		if err != nil {
			return fmt.Errorf("build admission response: %w", err)
		}
		logDecision(c.Path(), request.Request, decision)
		return c.JSON(http.StatusOK, admissionv1.AdmissionReview{TypeMeta: request.TypeMeta, Response: response})
	}
}

// readBody reads at most limit bytes of the request body; a longer body is
// refused with 413.
func readBody(r *http.Request, limit int64) ([]byte, error) {
	tooLarge := func() error {
		return echo.NewHTTPError(http.StatusRequestEntityTooLarge,
			fmt.Sprintf("request body exceeds the limit of %d bytes for an AdmissionReview", limit))
	}
	if r.ContentLength > limit {
		return nil, tooLarge()
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, echo.NewHTTPError(http.StatusBadRequest, fmt.Sprintf("read request body: %v", err))
	}
	if int64(len(body)) > limit {
		return nil, tooLarge()
	}
	return body, nil
}

// httpError answers err, a request the webhook cannot understand, with 400.
func httpError(err error) error {
	return echo.NewHTTPError(http.StatusBadRequest, err.Error())
}

// writeError answers an error with its status and message as plain text.
func writeError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	code, message := http.StatusInternalServerError, err.Error()
	var httpErr *echo.HTTPError
	if errors.As(err, &httpErr) {
		code, message = httpErr.Code, fmt.Sprint(httpErr.Message)
	}
	klog.V(2).InfoS("Request failed", "method", c.Request().Method, "path", c.Request().URL.Path, "code", code, "message", message)
	if err := c.String(code, message+"\n"); err != nil {
		klog.V(2).InfoS("Cannot write error response", "err", err)
	}
}

// recoverPanics turns a panic in a handler into a 500 and a log line with
// the stack, so one bad request cannot take the webhook down.
func recoverPanics(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) (err error) {
		defer func() {
			if r := recover(); r != nil {
				klog.ErrorS(nil, "Handler panicked", "path", c.Request().URL.Path, "panic", r, "stack", string(debug.Stack()))
				err = echo.NewHTTPError(http.StatusInternalServerError, fmt.Sprintf("internal error: %v", r))
			}
		}()
		return next(c)
	}
}

// logDecision logs one admission decision: denials at level 1, the rest at 3.
func logDecision(path string, request *admissionv1.AdmissionRequest, decision Decision) {
	level := klog.Level(3)
	if !decision.Allowed {
		level = 1
	}
	klog.V(level).InfoS("Admission decided", "path", path, "kind", request.Kind.Kind,
		"object", klog.KRef(request.Namespace, request.Name), "operation", request.Operation,
		"dryRun", request.DryRun != nil && *request.DryRun, "result", decision.Result(),
		"message", decision.Message(), "warnings", decision.Warnings)
}
