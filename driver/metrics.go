package driver

import (
	"context"
	"time"

	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/driver/store"
)

// metrics are the driver's Prometheus series.
type metrics struct {
	registry   *prometheus.Registry
	operations *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	// corrections counts subvolumes tenants nested outside their volume's
	// limit, put back under it: an attempt to escape, or a tool (podman,
	// snapper) that names qgroups of its own.
	corrections *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		operations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "toposnap_driver_operations_total",
			Help: "CSI calls served, by method and gRPC code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "toposnap_driver_operation_duration_seconds",
			Help:    "Latency of CSI calls, by method.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"method"}),
		corrections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "toposnap_driver_nested_subvolume_corrections_total",
			Help: "Subvolumes a tenant nested in its volume outside the volume's limit (own qgroup inheritance list), put back under it, by pool.",
		}, []string{"pool"}),
	}
	m.registry.MustRegister(m.operations, m.duration, m.corrections)
	return m
}

// nestedCorrection counts one correction of the pool's watcher.
func (m *metrics) nestedCorrection(pool string) func(store.NestedCorrection) {
	return func(store.NestedCorrection) { m.corrections.WithLabelValues(pool).Inc() }
}

// watchRecovery exports, per pool, how many objects the pool could not
// recover (an interrupted delete it cannot finish, a file it did not
// write): the driver serves the rest meanwhile and the pool retries them,
// so an alert on this gauge is how an operator learns of them.
func (m *metrics) watchRecovery(pools map[string]*store.Pool) {
	for name, pool := range pools {
		if pool == nil {
			continue
		}
		m.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "toposnap_driver_unrecovered_objects",
			Help:        "Objects (or pool subdirectories) whose crash recovery has not succeeded yet; retried with backoff.",
			ConstLabels: prometheus.Labels{"pool": name},
		}, func() float64 { return float64(len(pool.Unrecovered())) }))
		m.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "toposnap_driver_lingering_bytes",
			Help:        "Bytes deleted volumes still hold outside every volume's limit (btrfs: blocks a snapshot or a reflink into another volume keeps), counted as promised until freed.",
			ConstLabels: prometheus.Labels{"pool": name},
		}, func() float64 {
			bytes, err := pool.Lingering()
			if err != nil {
				klog.V(2).InfoS("Cannot measure lingering bytes", "pool", name, "err", err)
				return 0
			}
			return float64(bytes)
		}))
	}
}

// intercept logs every call (secrets stripped) and records its metrics.
func (d *Driver) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	klog.V(4).InfoS("CSI request", "method", info.FullMethod, "request", protosanitizer.StripSecrets(req))
	resp, err := handler(ctx, req)
	code := status.Code(err)
	d.metrics.operations.WithLabelValues(info.FullMethod, code.String()).Inc()
	d.metrics.duration.WithLabelValues(info.FullMethod).Observe(time.Since(start).Seconds())
	if err != nil {
		klog.V(2).InfoS("CSI call failed", "method", info.FullMethod, "code", code, "err", err)
	} else {
		klog.V(5).InfoS("CSI response", "method", info.FullMethod, "response", protosanitizer.StripSecrets(resp))
	}
	return resp, err
}
