// Package cluster runs a local Kubernetes control plane from real binaries, for
// tests and demos on machines with no container engine and no kubelet.
//
// A Cluster is etcd, kube-apiserver, kube-controller-manager and kube-scheduler,
// plus kwok, which plays the kubelet: it keeps the registered Node objects Ready
// and moves pods bound to them to Running. Everything listens on free loopback
// ports and keeps its state, credentials and logs in one work directory, so
// several clusters can run side by side. Each child process is killed when the
// process that started it dies, and Stop only ever signals the processes this
// package started.
//
// Tests use TestMainWithCluster to share one cluster per test package; the
// toposnap-cluster command (cmd/toposnap-cluster) keeps one running in the
// background for demos.
package cluster
