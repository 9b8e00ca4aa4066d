package cluster

import (
	"fmt"
	"strconv"
)

// Component names; each is also the name of its binary and of its log file.
const (
	componentEtcd              = "etcd"
	componentAPIServer         = "kube-apiserver"
	componentControllerManager = "kube-controller-manager"
	componentScheduler         = "kube-scheduler"
	componentKwok              = "kwok"
	binKubectl                 = "kubectl"
)

// ports are the loopback ports of one cluster's listeners. kwok opens none:
// its server stays off because it gets neither --server-address nor --node-port.
type ports struct {
	etcdClient, etcdPeer, apiserver, controllerManager, scheduler int
}

// pickPorts chooses a free loopback port for every listener.
func pickPorts() (ports, error) {
	free, err := freePorts(5)
	if err != nil {
		return ports{}, err
	}
	return ports{
		etcdClient: free[0], etcdPeer: free[1], apiserver: free[2],
		controllerManager: free[3], scheduler: free[4],
	}, nil
}

func loopbackURL(scheme string, port int) string {
	return fmt.Sprintf("%s://127.0.0.1:%d", scheme, port)
}

// etcdArgs runs a single-member etcd on loopback. fsync is off: a test
// cluster's data need not survive a power cut, and fsync dominates etcd's
// latency on small disks.
func etcdArgs(l layout, p ports) []string {
	client, peer := loopbackURL("http", p.etcdClient), loopbackURL("http", p.etcdPeer)
	return []string{
		"--name=toposnap",
		"--data-dir=" + l.etcdData(),
		"--listen-client-urls=" + client,
		"--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=toposnap=" + peer,
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	}
}

// apiserverArgs runs kube-apiserver on loopback with client-certificate
// authentication and Node+RBAC authorization.
//
// --endpoint-reconciler-type=none: the default reconciler publishes the
// advertise address as the "kubernetes" Service's endpoint and loopback
// addresses are invalid there, so it would fail forever.
//
// Towards kubelets (logs, exec, nodes/proxy) it dials a node's InternalIP
// first: the default puts the host name first, which on this machine
// resolves to loopback, an address the API server refuses to proxy to. It
// authenticates with its own client certificate, which kubelets' webhook
// authorization checks against system:kubelet-api-admin, and verifies the
// kubelet's serving certificate against the cluster's CA (test/node issues
// it).
//
// --enable-aggregator-routing: admission webhooks and aggregated APIs
// behind a Service are called at one of its ready endpoints rather than at
// its ClusterIP. No kube-proxy runs here; a real node (test/node) proxies
// ClusterIPs in its test process, one hop the API server need not depend
// on, and with kwok's pods a ClusterIP would only time out where a missing
// endpoint fails at once.
func apiserverArgs(l layout, p ports) []string {
	return []string{
		"--etcd-servers=" + loopbackURL("http", p.etcdClient),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(p.apiserver),
		"--tls-cert-file=" + l.pki("apiserver.crt"),
		"--tls-private-key-file=" + l.pki("apiserver.key"),
		"--client-ca-file=" + l.pki("ca.crt"),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + l.pki("sa.pub"),
		"--service-account-signing-key-file=" + l.pki("sa.key"),
		"--service-cluster-ip-range=" + serviceClusterIPRange,
		"--endpoint-reconciler-type=none",
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--kubelet-client-certificate=" + l.pki("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + l.pki("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority=" + l.pki("ca.crt"),
		"--enable-aggregator-routing=true",
		"--allow-privileged=true",
		"--profiling=false",
	}
}

// controllerManagerArgs runs every default controller except, unless
// nodeLifecycle, the node lifecycle controller: with no kubelet posting
// leases it would mark every fake node NotReady and taint it. Each
// controller uses its own service account, so RBAC is exercised as in a
// real cluster.
func controllerManagerArgs(l layout, p ports, nodeLifecycle bool) []string {
	kubeconfig := l.componentKubeconfig(componentControllerManager)
	controllers := "--controllers=*,-node-lifecycle-controller"
	if nodeLifecycle {
		controllers = "--controllers=*"
	}
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(p.controllerManager),
		"--tls-cert-file=" + l.pki("loopback-serving.crt"),
		"--tls-private-key-file=" + l.pki("loopback-serving.key"),
		controllers,
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + l.pki("sa.key"),
		"--root-ca-file=" + l.pki("ca.crt"),
		"--cluster-signing-cert-file=" + l.pki("ca.crt"),
		"--cluster-signing-key-file=" + l.pki("ca.key"),
		"--service-cluster-ip-range=" + serviceClusterIPRange,
		"--cluster-name=" + kubeconfigCluster,
		"--profiling=false",
	}
	if nodeLifecycle {
		// A real kubelet renews its lease every 10 s; on a shared 2-core
		// machine it can fall behind for a while without being gone, so a
		// node is called NotReady after two minutes rather than 50 s.
		args = append(args, "--node-monitor-grace-period=2m")
	}
	return args
}

// schedulerArgs runs kube-scheduler from the config file Start wrote.
// --leader-elect=false is repeated on the command line because the scheduler
// honours leader-election flags over the file, whatever the caller's config says.
func schedulerArgs(l layout, p ports) []string {
	kubeconfig := l.componentKubeconfig(componentScheduler)
	return []string{
		"--config=" + l.schedulerConfig(),
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(p.scheduler),
		"--tls-cert-file=" + l.pki("loopback-serving.crt"),
		"--tls-private-key-file=" + l.pki("loopback-serving.key"),
		"--leader-elect=false",
		"--profiling=false",
	}
}

// kwokArgs runs kwok as the kubelet of every node, driven by the given stage
// files (kwok takes each as a --config). Unlike kwokctl, bare kwok keeps no
// node leases unless given a lease duration; with one it renews them as a
// kubelet does, and holding them is how Start knows kwok manages the nodes.
func kwokArgs(l layout, stages []string) []string {
	args := []string{
		"--kubeconfig=" + l.adminKubeconfig(),
		"--manage-all-nodes=true",
		"--node-lease-duration-seconds=40",
		"--cidr=10.244.0.0/16",
	}
	for _, stage := range stages {
		args = append(args, "--config="+stage)
	}
	return args
}

// kwokEnv points kwok's work directory into the cluster's, so a user's
// ~/.kwok/kwok.yaml cannot change how the cluster behaves.
func kwokEnv(l layout) []string {
	return []string{"KWOK_WORKDIR=" + l.kwokWorkDir()}
}
