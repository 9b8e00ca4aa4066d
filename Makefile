# toposnap: topology-aware volume scheduling and snapshots for Kubernetes.
# `make test` is what CI runs; `make demo` plays the seed's story.

GO        ?= go
BIN       := bin
# Component binaries (each lives in <component>/cmd/<binary>).
COMMANDS  := $(wildcard driver/cmd/* provisioner/cmd/* snapshotter/cmd/* extender/cmd/* webhook/cmd/*)
CLUSTER_DIR ?= $(HOME)/.cache/toposnap/cluster
GOLANGCI_VERSION := v2.15.0

.PHONY: all build test unit-test lint bench fuzz chaos demo cluster-bins cluster-up cluster-down clean image chart-lint snapshot-crds helm node-bins node-setup node-test conformance sidecars bench-interop bench-sched bench-scale

all: build

build: ## Build the component binaries into bin/.
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ $(addprefix ./,$(COMMANDS))

cluster-bins: ## Build (once, cached in ~/.cache/toposnap) etcd, kube-* and kwok.
	./hack/build-cluster-bins.sh

test: cluster-bins node-bins node-setup helm sidecars ## Everything: vet, unit, csi-sanity, e2e on the local control plane, interop with the upstream sidecars, the real node with the storage e2e subset.
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 45m $$($(GO) list ./... | grep -v -e '/test/chaos$$' -e '/test/node$$' -e '/test/storage-e2e$$')
	$(MAKE) chaos SEED=1 CHAOS_PROFILE=short   # one short chaos seed, alone: its faults and timing are its own
	$(GO) test -count=1 -p 1 -timeout 40m ./test/node/ ./test/storage-e2e/   # the real node, one at a time: pods on a kubelet, then the storage e2e subset (all of it: make conformance)
	cd hack/tools/image && $(GO) vet ./... && $(GO) test -count=1 ./...
	cd hack/tools/node-images && $(GO) vet ./... && $(GO) test -count=1 ./...   # the real node's image packer and registrar (the node itself: make node-test)
	cd test/intree && $(GO) vet ./... && $(GO) test -count=1 ./...   # differential test against the in-tree VolumeBinding plugin
	$(MAKE) fuzz FUZZTIME=300x   # a count, not a duration: go1.26's -fuzztime deadline can fail a clean run (golang/go#75804)

unit-test: ## Tests that need neither root nor the control plane binaries.
	$(GO) test -count=1 -short ./internal/... ./driver/store/...

lint: ## gofmt, go vet and golangci-lint (pinned, run through the module proxy).
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1)
	$(GO) vet ./...
	$(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_VERSION) run ./...

bench: ## Benchmarks, with the baselines they are compared against in the same run (on the control plane: make bench-interop).
	$(GO) test -run '^$$' -bench . -benchtime 3x -timeout 30m ./internal/fscopy/   # dir backend's copier vs cp -a, on this disk
	$(GO) test -run '^$$' -bench . -benchtime 5x -timeout 60m ./driver/store/   # btrfs snapshot+restore, 1 GiB and 10 GiB, vs cp -a (root: loop-backed btrfs)
	$(GO) test -run '^$$' -bench . -benchtime 200x -timeout 30m ./extender/
	cd test/intree && $(GO) test -run '^$$' -bench . -benchtime 20x -timeout 40m ./...   # the in-tree plugin on the same workload

bench-sched: cluster-bins ## Scheduling throughput on 500 kwok nodes in 3 zones, same run: plain pods with the extender registered vs bare, zone-claim pods with vs without the extender; ratios (docs/operations.md).
	$(GO) test -count=1 -run '^$$' -bench BenchmarkScheduling -benchtime 1x -timeout 90m ./test/schedbench/

BENCH_SCALE_TIMEOUT ?= 6h
bench-scale: cluster-bins ## One node's toposnap processes plus the central ones, on kwok nodes with PVC+PV pairs made in bulk: each process's memory and Go heap, the API server's watches, PVC events per update and idle requests, per point of BENCH_SCALE_PAIRS x BENCH_SCALE_NODES; tables and JSON in bin/bench-scale/.
	$(GO) test -count=1 -run '^$$' -bench BenchmarkScale -benchtime 1x -timeout $(BENCH_SCALE_TIMEOUT) ./test/scalebench/

bench-interop: cluster-bins sidecars ## toposnap's provisioner and snapshotter vs external-provisioner and csi-snapshotter + snapshot-controller, same drivers, same run: ratios (docs/interop.md).
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 60m ./test/interop/

SEED ?= 1
CHAOS_PROFILE ?= full
chaos: cluster-bins ## Seeded chaos campaign for one seed (SEED=n; CHAOS_PROFILE=full or short); report in bin/chaos/ (docs/chaos.md).
	$(GO) test -count=1 -v -timeout 60m ./test/chaos/ -args -chaos.seed=$(SEED) -chaos.profile=$(CHAOS_PROFILE)

# Fuzz targets as package:target; their committed seeds run in every go test.
FUZZ_TARGETS := ./extender/:FuzzServer ./extender/:FuzzParseArgs ./webhook/:FuzzMutateStorageClass ./webhook/:FuzzValidateClaim \
	./webhook/:FuzzValidateSnapshotClass ./webhook/:FuzzMutatePod
FUZZTIME ?= 60s
fuzz: ## Fuzz each request-handling target for FUZZTIME (make test runs 300 inputs each).
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t#*:} in $${t%%:*} for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) "$${t%%:*}"; \
	done

VERSION ?= 0.1.0
image: ## Container image of the five binaries, no Docker engine needed: bin/toposnap-image.oci.tar (OCI layout) and bin/toposnap-image.tar (docker save).
	VERSION=$(VERSION) ./hack/image.sh

chart-lint: ## helm lint, schema and render checks of charts/toposnap with every test value set (helm built once, cached).
	$(GO) test -count=1 -short -run 'TestLint|TestSchema|TestValueSets|TestRolesGrantNoWildcards|TestOnlyTheDriver|TestWebhookConfigurationsMirror|TestCommittedSnapshotCRDs|TestExtender|TestNetworkPolic|TestWebhookNetworkPolicy|TestWebhookRequiresTheAPIServers|TestNodeAdmissionPoliciesBind|TestController|TestNodeAgentsRouted' ./test/chart/

snapshot-crds: ## Copy the upstream snapshot CRDs (version from go.mod) into the chart.
	./hack/gen-snapshot-crds.sh

helm: ## Build helm from the module proxy into ~/.cache/toposnap (once); prints its path.
	./hack/build-helm.sh

sidecars: ## Build (once, cached in ~/.cache/toposnap) the upstream CSI sidecars test/interop runs: csi-provisioner, csi-snapshotter, snapshot-controller.
	./hack/build-sidecars.sh

# The demo's node needs kubelet, and agnhost for its images, not e2e.test. Its
# toposnap image is built from this tree by test/node's helm install itself.
demo: export NODE_BINS = kubelet agnhost
demo: cluster-bins node-bins node-setup helm ## Replay the seed's story: real pods on a real node, toposnap installed by helm (KEEP=1 leaves it running).
	$(GO) run ./test/demo

cluster-up: cluster-bins ## Start the local control plane in the background; prints the kubeconfig.
	$(GO) run ./test/cluster/cmd/toposnap-cluster up --dir $(CLUSTER_DIR)

cluster-down: ## Stop the local control plane started by cluster-up.
	$(GO) run ./test/cluster/cmd/toposnap-cluster down --dir $(CLUSTER_DIR)

node-bins: ## Build (once, cached in ~/.cache/toposnap) kubelet, agnhost and e2e.test for the real node.
	./hack/build-node-bins.sh

node-setup: ## Install containerd, runc, the CNI plugins and busybox-static (Debian packages) when missing.
	./hack/node-setup.sh

NODE_TEST_TIMEOUT ?= 40m
node-test: cluster-bins node-bins node-setup helm ## A real node (containerd + kubelet) with toposnap installed by helm; the focused storage e2e subset (docs/conformance.md).
	$(GO) test -count=1 -v -timeout $(NODE_TEST_TIMEOUT) ./test/node/
	$(GO) test -count=1 -v -timeout $(NODE_TEST_TIMEOUT) ./test/storage-e2e/

CONFORMANCE_FOCUS ?= External.Storage \[Driver: csi.toposnap.io\]
# Skipped specs and why: docs/conformance.md (one needs images that cannot be built here, one needs nsenter into PID 1).
CONFORMANCE_SKIP ?= \[Disruptive\]|should provision storage with any volume data source|should not mount / map unused volumes in a pod
conformance: cluster-bins node-bins node-setup helm ## Kubernetes' external storage e2e suite (every External.Storage spec) against toposnap on a real node; ends with ginkgo's counts.
	$(GO) test -count=1 -v -timeout 4h -run TestExternalStorage ./test/storage-e2e/ \
		-args -storage-e2e.focus='$(CONFORMANCE_FOCUS)' -storage-e2e.skip='$(CONFORMANCE_SKIP)' -storage-e2e.report-dir=$(CURDIR)/bin/conformance

clean:
	rm -rf $(BIN)
