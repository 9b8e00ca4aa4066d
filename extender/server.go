package extender

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/inflight"
)

// MaxBodyBytes bounds a request's body. With nodeCacheCapable the
// scheduler sends the pod and node names only: 5,000 names of the longest
// kind (253 characters, quoted, comma) are 1.3 MB, and the largest pod the
// API server stores is 1.5 MiB (etcd's default request limit), so 3 MiB
// holds any real request. Whole Node objects (no nodeCacheCapable) would
// not fit at this size and are not what the extender is configured for.
const MaxBodyBytes = 3 << 20

// Requests the extender reads and decides at once, and how long another
// waits for one of them before it is answered 503. kube-scheduler calls
// its extender one pod at a time, so a scheduler or two use one or two
// slots; the bound is what stalled callers can make the extender hold:
// maxInFlight bodies of MaxBodyBytes (held until the read timeout).
// kube-scheduler takes a 503 as a failed scheduling attempt and retries
// the pod with backoff.
const (
	maxInFlight = 8
	slotWait    = time.Second
)

// Server is the extender's HTTP edge: decode with a body limit, decide with
// Filter/Prioritize over the current State, encode.
type Server struct {
	state    func() State
	driver   string
	registry *prometheus.Registry
	latency  *prometheus.HistogramVec
	outcomes *prometheus.CounterVec
	panics   *prometheus.CounterVec
	busy     prometheus.Counter
	inFlight *inflight.Limit
}

// NewServer serves decisions over state() for the driver's volumes.
func NewServer(state func() State, driver string) *Server {
	s := &Server{
		state: state, driver: driver, registry: prometheus.NewRegistry(),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "toposnap_extender_request_duration_seconds", Help: "Server-side latency by verb.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"verb"}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "toposnap_extender_node_decisions_total", Help: "Filter decisions per node, by outcome and what the reason is about.",
		}, []string{"outcome", "reason"}),
		panics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "toposnap_extender_panics_total", Help: "Requests answered with an error because deciding them panicked, by verb.",
		}, []string{"verb"}),
		busy: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "toposnap_extender_busy_rejections_total",
			Help: fmt.Sprintf("Requests answered 503 because %d others were being read or decided.", maxInFlight),
		}),
	}
	s.inFlight = inflight.New(maxInFlight, slotWait, s.busy.Inc)
	s.registry.MustRegister(s.latency, s.outcomes, s.panics, s.busy, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return s
}

// Handler builds the echo routes. /healthz says the process serves
// (liveness); /readyz also that it knows the cluster well enough to answer
// every pod (readiness): 503 with the reason while its caches fill or
// while it does not know yet whether and where snapshots live.
func (s *Server) Handler() *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	// The slot is taken before the body is read: what it bounds is the
	// bodies held in memory.
	e.POST("/filter", s.filter, s.inFlight.Middleware, s.recoverPanics)
	e.POST("/prioritize", s.prioritize, s.inFlight.Middleware, s.recoverPanics)
	e.GET("/healthz", func(c echo.Context) error { return c.String(http.StatusOK, "ok") })
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{})))
	return e
}

func (s *Server) readyz(c echo.Context) error {
	core, snapshots := s.state().readiness()
	switch {
	case core != "":
		return c.String(http.StatusServiceUnavailable, core+"\n")
	case snapshots != "":
		return c.String(http.StatusServiceUnavailable, "restores wait: "+snapshots+"\n")
	}
	return c.String(http.StatusOK, "ok")
}

// recoverPanics turns a panic while deciding a request, on its goroutine
// or raised there from a worker's, into an error answer for that request,
// counted and logged with the stack: one bad request must not take the
// extender, and every pod's scheduling with it, down.
func (s *Server) recoverPanics(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) (err error) {
		defer func() {
			r := recover()
			if r == nil {
				return
			}
			verb := strings.TrimPrefix(c.Path(), "/")
			stack := debug.Stack()
			if p, ok := r.(*workerPanic); ok {
				r, stack = p.value, p.stack
			}
			s.panics.WithLabelValues(verb).Inc()
			klog.ErrorS(nil, "Deciding a request panicked", "verb", verb, "panic", r, "stack", string(stack))
			err = echo.NewHTTPError(http.StatusInternalServerError, fmt.Sprintf("toposnap extender internal error in %s: %v", verb, r))
		}()
		return next(c)
	}
}

// request is one request's buffers, pooled: at 5,000 nodes a request is
// 60 KB of names and an answer 700 KB of reasons, and allocating them anew
// each time would have the garbage collector running through requests.
type request struct {
	body, out bytes.Buffer
	nodes     nodeRefs
	verdicts  []nodeVerdict
	parts     []scoreParts
}

var requests = sync.Pool{New: func() any { return new(request) }}

func (r *request) release() {
	r.body.Reset()
	r.out.Reset()
	clear(r.nodes.names) // let go of names not in the node table
	clear(r.nodes.nodes)
	requests.Put(r)
}

// decode reads ExtenderArgs with their node names looked up in index's node
// table, refusing oversized or malformed bodies with a message that says
// what was wrong.
func (r *request) decode(c echo.Context, index *indexSnapshot) (*corev1.Pod, error) {
	if c.Request().ContentLength > MaxBodyBytes {
		return nil, echo.NewHTTPError(http.StatusRequestEntityTooLarge, fmt.Sprintf("request body of %d bytes exceeds %d bytes", c.Request().ContentLength, MaxBodyBytes))
	}
	if _, err := r.body.ReadFrom(io.LimitReader(c.Request().Body, MaxBodyBytes+1)); err != nil {
		return nil, echo.NewHTTPError(http.StatusBadRequest, "read request body: "+err.Error())
	}
	if r.body.Len() > MaxBodyBytes {
		return nil, echo.NewHTTPError(http.StatusRequestEntityTooLarge, fmt.Sprintf("request body exceeds %d bytes", MaxBodyBytes))
	}
	args, hasNames, err := parseArgs(r.body.Bytes(), index.nodes, &r.nodes)
	if err != nil {
		return nil, echo.NewHTTPError(http.StatusBadRequest, "request is not ExtenderArgs JSON: "+err.Error())
	}
	if args.Pod == nil {
		return nil, echo.NewHTTPError(http.StatusBadRequest, "ExtenderArgs has no pod")
	}
	if !hasNames {
		if args.Nodes == nil {
			return nil, echo.NewHTTPError(http.StatusBadRequest, "ExtenderArgs has neither nodeNames nor nodes; configure the extender with nodeCacheCapable: true")
		}
		r.nodes.names = r.nodes.names[:0]
		for _, n := range args.Nodes.Items {
			r.nodes.names = append(r.nodes.names, n.Name)
		}
		r.nodes.lookUp(index.nodes)
	}
	return args.Pod, nil
}

func (s *Server) filter(c echo.Context) error {
	start := time.Now()
	r := requests.Get().(*request)
	defer r.release()
	state := s.state()
	index := state.snapshot()
	pod, err := r.decode(c, index)
	if err != nil {
		return err
	}
	answer := decideAt(state, index, s.driver, pod, r.nodes, r.verdicts)
	r.verdicts = answer.verdicts
	s.countDecisions(answer.verdicts)
	r.out.Write(answer.appendJSON(r.out.AvailableBuffer()))
	s.latency.WithLabelValues("filter").Observe(time.Since(start).Seconds())
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, r.out.Bytes())
}

func (s *Server) prioritize(c echo.Context) error {
	start := time.Now()
	r := requests.Get().(*request)
	defer r.release()
	state := s.state()
	index := state.snapshot()
	pod, err := r.decode(c, index)
	if err != nil {
		return err
	}
	answer := prioritizeAt(state, index, s.driver, pod, r.nodes, r.parts)
	r.parts = answer.parts
	r.out.Write(answer.appendJSON(r.out.AvailableBuffer()))
	s.latency.WithLabelValues("prioritize").Observe(time.Since(start).Seconds())
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, r.out.Bytes())
}

// outcomeNames label the decisions metric.
var outcomeNames = [...]string{fits: "fit", unresolvable: "unresolvable", short: "short"}

// countDecisions adds a request's verdicts to the decisions metric.
func (s *Server) countDecisions(verdicts []nodeVerdict) {
	var counts [len(outcomeNames)][reasonKinds]int
	for _, v := range verdicts {
		counts[v.outcome][v.kind]++
	}
	for outcome := range counts {
		for kind, n := range counts[outcome] {
			if n > 0 {
				s.outcomes.WithLabelValues(outcomeNames[outcome], reasonNames[kind]).Add(float64(n))
			}
		}
	}
}

// errNoTLS is returned when only one of the TLS files is given.
var errNoTLS = errors.New("--tls-cert-file and --tls-key-file go together")

// errClientCAWithoutTLS is returned for --client-ca-file without a serving pair.
var errClientCAWithoutTLS = errors.New("--client-ca-file needs --tls-cert-file and --tls-key-file: client certificates are checked in the TLS handshake")
