package extender

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	extenderv1 "k8s.io/kube-scheduler/extender/v1"
)

// MaxBodyBytes bounds a request: a pod plus 5,000 node names fits easily.
const MaxBodyBytes = 4 << 20

// Server is the extender's HTTP edge: decode with a body limit, decide with
// Filter/Prioritize over the current State, encode.
type Server struct {
	state    func() State
	driver   string
	registry *prometheus.Registry
	latency  *prometheus.HistogramVec
	outcomes *prometheus.CounterVec
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
			Name: "toposnap_extender_node_decisions_total", Help: "Filter decisions per node, by outcome.",
		}, []string{"outcome"}),
	}
	s.registry.MustRegister(s.latency, s.outcomes, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return s
}

// Handler builds the echo routes.
func (s *Server) Handler() *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.POST("/filter", s.filter)
	e.POST("/prioritize", s.prioritize)
	e.GET("/healthz", func(c echo.Context) error { return c.String(http.StatusOK, "ok") })
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{})))
	return e
}

// decodeArgs reads ExtenderArgs, refusing oversized or malformed bodies
// with a message that says what was wrong.
func decodeArgs(c echo.Context) (*extenderv1.ExtenderArgs, []string, error) {
	body := buffers.Get().(*bytes.Buffer)
	defer putBuffer(body)
	if _, err := body.ReadFrom(io.LimitReader(c.Request().Body, MaxBodyBytes+1)); err != nil {
		return nil, nil, echo.NewHTTPError(http.StatusBadRequest, "read request body: "+err.Error())
	}
	if body.Len() > MaxBodyBytes {
		return nil, nil, echo.NewHTTPError(http.StatusRequestEntityTooLarge, fmt.Sprintf("request body exceeds %d bytes", MaxBodyBytes))
	}
	var args wireArgs
	if err := json.Unmarshal(body.Bytes(), &args); err != nil {
		return nil, nil, echo.NewHTTPError(http.StatusBadRequest, "request is not ExtenderArgs JSON: "+err.Error())
	}
	if args.Pod == nil {
		return nil, nil, echo.NewHTTPError(http.StatusBadRequest, "ExtenderArgs has no pod")
	}
	if args.NodeNames == nil {
		if args.Nodes == nil {
			return nil, nil, echo.NewHTTPError(http.StatusBadRequest, "ExtenderArgs has neither nodeNames nor nodes; configure the extender with nodeCacheCapable: true")
		}
		names := make([]string, 0, len(args.Nodes.Items))
		for _, n := range args.Nodes.Items {
			names = append(names, n.Name)
		}
		return &args.ExtenderArgs, names, nil
	}
	return &args.ExtenderArgs, *args.NodeNames, nil
}

func (s *Server) filter(c echo.Context) error {
	start := time.Now()
	args, names, err := decodeArgs(c)
	if err != nil {
		return err
	}
	answer := decide(s.state(), s.driver, args.Pod, names)
	counts := [3]int{}
	for _, v := range answer.verdicts {
		counts[v.outcome]++
	}
	s.outcomes.WithLabelValues("fit").Add(float64(counts[fits]))
	s.outcomes.WithLabelValues("unresolvable").Add(float64(counts[unresolvable]))
	s.outcomes.WithLabelValues("short").Add(float64(counts[short]))
	out := buffers.Get().(*bytes.Buffer)
	defer putBuffer(out)
	out.Write(answer.appendJSON(out.AvailableBuffer()))
	s.latency.WithLabelValues("filter").Observe(time.Since(start).Seconds())
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, out.Bytes())
}

func (s *Server) prioritize(c echo.Context) error {
	start := time.Now()
	args, names, err := decodeArgs(c)
	if err != nil {
		return err
	}
	scores := Prioritize(s.state(), s.driver, args.Pod, names)
	out := buffers.Get().(*bytes.Buffer)
	defer putBuffer(out)
	out.Write(appendPriorities(out.AvailableBuffer(), scores))
	s.latency.WithLabelValues("prioritize").Observe(time.Since(start).Seconds())
	return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, out.Bytes())
}

func putBuffer(b *bytes.Buffer) {
	b.Reset()
	buffers.Put(b)
}

// errNoTLS is returned when only one of the TLS files is given.
var errNoTLS = errors.New("--tls-cert-file and --tls-key-file go together")
