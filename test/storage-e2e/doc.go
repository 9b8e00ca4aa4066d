// Package storagee2e runs Kubernetes' external storage e2e suite (e2e.test
// from k8s.io/kubernetes/test/e2e, built by hack/build-node-bins.sh) against
// toposnap installed by charts/toposnap on a real node (test/node), with
// testdriver.yaml describing csi.toposnap.io. `make conformance` runs every
// External.Storage spec; `make test` runs the focused subset
// (DefaultFocus). The closing line of each run is ginkgo's summary.
package storagee2e
