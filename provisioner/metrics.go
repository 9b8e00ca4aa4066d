package provisioner

import "github.com/prometheus/client_golang/prometheus"

// metrics are the provisioner's Prometheus series.
type metrics struct {
	provisions *prometheus.CounterVec
	orphans    *prometheus.GaugeVec
	// refusedDeletes counts Released PVs whose volume the live reads
	// before DeleteVolume kept (VolumeDeleteRefused events).
	refusedDeletes prometheus.Counter
}

func newMetrics(registry *prometheus.Registry) *metrics {
	m := &metrics{
		provisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "toposnap_provisioner_create_volume_total",
			Help: "CreateVolume calls made for claims, by gRPC code.",
		}, []string{"code"}),
		orphans: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "toposnap_provisioner_orphan_volumes",
			Help: "Volumes this node is responsible for that no PV references (past the grace period), by pool (node, or zone while this node holds its Lease).",
		}, []string{"pool"}),
		refusedDeletes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "toposnap_provisioner_delete_refused_total",
			Help: "Released PVs whose volume was kept because live reads did not confirm the delete (VolumeDeleteRefused events).",
		}),
	}
	if registry != nil {
		registry.MustRegister(m.provisions, m.orphans, m.refusedDeletes)
	}
	return m
}
