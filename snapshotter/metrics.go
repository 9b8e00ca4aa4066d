package snapshotter

import "github.com/prometheus/client_golang/prometheus"

// metrics are the snapshotter's Prometheus series.
type metrics struct {
	creates *prometheus.CounterVec
	ready   prometheus.Histogram
}

func newMetrics(registry *prometheus.Registry) *metrics {
	m := &metrics{
		creates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "toposnap_snapshotter_create_snapshot_total",
			Help: "CreateSnapshot calls made for contents, by gRPC code.",
		}, []string{"code"}),
		ready: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "toposnap_snapshotter_time_to_ready_seconds",
			Help:    "From a content's creation to its snapshot being ready to use, observed once per content.",
			Buckets: prometheus.ExponentialBuckets(0.25, 2, 14),
		}),
	}
	if registry != nil {
		registry.MustRegister(m.creates, m.ready)
	}
	return m
}
