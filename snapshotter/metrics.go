package snapshotter

import "github.com/prometheus/client_golang/prometheus"

// metrics are the snapshotter's Prometheus series.
type metrics struct {
	creates *prometheus.CounterVec
	ready   prometheus.Histogram
	// deletedKept counts syncs that kept a deleted content because a live
	// VolumeSnapshot uses it: the sign that a content deleted by hand was
	// seen and deliberately left alone.
	deletedKept prometheus.Counter
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
		deletedKept: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "toposnap_snapshotter_deleted_content_kept_total",
			Help: "Syncs that kept a deleted VolumeSnapshotContent (and its backend snapshot) because a live VolumeSnapshot uses it.",
		}),
	}
	if registry != nil {
		registry.MustRegister(m.creates, m.ready, m.deletedKept)
	}
	return m
}
