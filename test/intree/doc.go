// Package intree holds tests only: it checks toposnap's scheduler extender
// against the in-tree VolumeBinding plugin of kube-scheduler. It is its own
// module so that k8s.io/kubernetes stays out of toposnap's dependencies.
package intree
