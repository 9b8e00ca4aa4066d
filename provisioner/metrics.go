package provisioner

import "github.com/prometheus/client_golang/prometheus"

// metrics are the provisioner's Prometheus series.
type metrics struct {
	provisions *prometheus.CounterVec
	orphans    prometheus.Gauge
}

func newMetrics(registry *prometheus.Registry) *metrics {
	m := &metrics{
		provisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "toposnap_provisioner_create_volume_total",
			Help: "CreateVolume calls made for claims, by gRPC code.",
		}, []string{"code"}),
		orphans: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "toposnap_provisioner_orphan_volumes",
			Help: "Volumes this node is responsible for that no PV references (past the grace period).",
		}),
	}
	if registry != nil {
		registry.MustRegister(m.provisions, m.orphans)
	}
	return m
}
