package scalebench

import (
	"fmt"
	"path"
	"path/filepath"
)

// Scope says where a process runs in a real cluster.
type Scope string

const (
	// Central processes run once per cluster (Deployments).
	Central Scope = "central"
	// Node processes run on every node (the DaemonSet); the bench runs one
	// node's, and what it measures for them is paid once per node.
	Node Scope = "node"
)

// Process is one toposnap process the bench starts and measures.
type Process struct {
	// Name names it in reports, in its API identity and in its log.
	Name string
	// Package is the main package to build, relative to the repository
	// root; the binary is named after its last element.
	Package string
	Scope   Scope
	// Args are its flags, given where the bench put things. It must serve
	// /metrics (with the Go collector) and Ready on at.Metrics.
	Args func(at Where) []string
	// Ready is the path on at.Metrics that answers 200 once the process's
	// caches are filled: the bench measures it only then.
	Ready string
}

// Where is what the bench prepared for one process.
type Where struct {
	// Kubeconfig authenticates as the process's own user, so the API
	// server's flow-control metrics count its requests apart.
	Kubeconfig string
	// Metrics is the host:port to serve /metrics and Ready on.
	Metrics string
	// Listen is a second free host:port, for a process that serves
	// something else (the extender's verbs, the webhook's HTTPS).
	Listen string
	// Node is the measured node's name.
	Node string
	// Socket is the node's CSI socket (served by the driver).
	Socket string
	// TLSCert and TLSKey are a serving pair for 127.0.0.1.
	TLSCert, TLSKey string
	// Dir is the process's own work directory.
	Dir string
	// Namespace holds whatever the process keeps in a namespace (Leases,
	// CSIStorageCapacity), as its Deployment's or DaemonSet's would.
	Namespace string
}

// Binary is the name of the process's binary.
func (p Process) Binary() string { return path.Base(p.Package) }

// Processes is what runs on today's main, started in this order (each once
// the previous one is Ready): the Deployments, then one node's DaemonSet
// pod. Flags are the chart's defaults (charts/toposnap/values.yaml).
var Processes = []Process{
	{
		Name: "extender", Package: "./extender/cmd/toposnap-extender", Scope: Central, Ready: "/readyz",
		Args: func(at Where) []string {
			return []string{"--kubeconfig", at.Kubeconfig, "--listen", at.Listen, "--health-listen", at.Metrics,
				"--leader-elect=true", "--leader-election-namespace", at.Namespace}
		},
	},
	{
		Name: "webhook", Package: "./webhook/cmd/toposnap-webhook", Scope: Central, Ready: "/readyz",
		Args: func(at Where) []string {
			return []string{"--kubeconfig", at.Kubeconfig, "--listen", at.Listen, "--health-listen", at.Metrics,
				"--tls-cert-file", at.TLSCert, "--tls-key-file", at.TLSKey}
		},
	},
	{
		Name: "controller", Package: "./provisioner/cmd/toposnap-controller", Scope: Central, Ready: "/readyz",
		Args: func(at Where) []string {
			return []string{"--kubeconfig", at.Kubeconfig, "--metrics-address", at.Metrics, "--namespace", at.Namespace,
				"--leader-election-identity", "scalebench"}
		},
	},
	{
		Name: "driver", Package: "./driver/cmd/toposnap-driver", Scope: Node, Ready: "/readyz",
		Args: func(at Where) []string {
			return []string{"--kubeconfig", at.Kubeconfig, "--metrics-address", at.Metrics, "--endpoint", "unix://" + at.Socket,
				"--node-id", at.Node, "--data-dir", filepath.Join(at.Dir, "node-pool"), "--zone-data-dir", filepath.Join(at.Dir, "zone-pool"),
				"--backend", "dir", "--zone-backend", "dir", "--capacity", "100Gi"}
		},
	},
	{
		Name: "provisioner", Package: "./provisioner/cmd/toposnap-provisioner", Scope: Node, Ready: "/readyz",
		Args: func(at Where) []string {
			return []string{"--kubeconfig", at.Kubeconfig, "--metrics-address", at.Metrics, "--csi-address", at.Socket,
				"--node-name", at.Node, "--capacity-namespace", at.Namespace, "--routed"}
		},
	},
	{
		Name: "snapshotter", Package: "./snapshotter/cmd/toposnap-snapshotter", Scope: Node, Ready: "/readyz",
		Args: func(at Where) []string {
			return []string{"--kubeconfig", at.Kubeconfig, "--metrics-address", at.Metrics, "--csi-address", at.Socket,
				"--node-name", at.Node, "--lease-namespace", at.Namespace, "--routed"}
		},
	},
}

// checkProcesses rejects a table the bench cannot run: duplicate or empty
// names (they key identities and results), missing flags or readiness.
func checkProcesses(processes []Process) error {
	seen := map[string]bool{}
	for i, p := range processes {
		switch {
		case p.Name == "" || seen[p.Name]:
			return fmt.Errorf("process %d: name %q is empty or not unique", i, p.Name)
		case p.Package == "" || p.Args == nil || p.Ready == "":
			return fmt.Errorf("process %s: Package, Args and Ready are all required", p.Name)
		case p.Scope != Central && p.Scope != Node:
			return fmt.Errorf("process %s: scope %q is neither %q nor %q", p.Name, p.Scope, Central, Node)
		}
		seen[p.Name] = true
	}
	return nil
}
