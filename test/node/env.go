package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/test/cluster"
)

// Addresses of the node's networks. The service range is test/cluster's
// (--service-cluster-ip-range); Start checks the "kubernetes" Service is in it.
const (
	ServiceCIDR   = cluster.ServiceCIDR
	ClusterDNSIP  = "10.96.0.10"
	ClusterDomain = "cluster.local"
	PodSubnet     = "10.244.0.0/24"
	// NodeIP is the node's InternalIP: the bridge's own address, which pods
	// reach as their gateway and the host as a local address. The kubelet
	// serves there, and the API server dials it there (test/cluster prefers
	// InternalIP) for logs, exec and nodes/proxy.
	NodeIP = "10.244.0.1"
	bridge = "toposnap0"
	// SandboxImage is the pause image of kubelet v1.37 and its e2e suite.
	SandboxImage = "registry.k8s.io/pause:3.10.2"
	// dnsService reserves ClusterDNSIP so that no Service is given it.
	dnsServiceNamespace, dnsServiceName = "kube-system", "kube-dns"
)

// Options say how to run the node.
type Options struct {
	// Dir is the node's work directory (containerd, kubelet, logs under
	// Dir/logs). Empty: a new temporary directory, removed by Stop.
	Dir string
	// Name is the Node's name; empty means this machine's host name.
	Name string
	// Labels are added to the Node; nil means the seed's region and zone.
	Labels map[string]string
}

// ClusterOptions are the cluster.Options a real node needs: no kwok (it
// would play this node's kubelet too) and no fake nodes (the e2e suite and
// the scheduler must only see nodes where pods really run). A caller that
// adds Node objects of its own (the demo) keeps the node lifecycle
// controller off, which would call them NotReady; with only real nodes,
// set NodeLifecycleController as the test packages do.
func ClusterOptions() cluster.Options {
	return cluster.Options{WithoutKwok: true, Nodes: []corev1.Node{}}
}

// Node is a running real node.
type Node struct {
	// Name is the Node object's name.
	Name string
	// Dir is the work directory; daemon logs are in Dir/logs.
	Dir string
	// ContainerdSocket is containerd's gRPC socket (for ctr --address).
	ContainerdSocket string
	// KubeletDir is the kubelet's --root-dir (the chart's node.kubeletDir).
	KubeletDir string
	// Images maps the references of the images imported at start to their tarballs.
	Images map[string]string

	cluster   *cluster.Cluster
	removeDir bool
	lock      *hostLock
	proxy     *serviceProxy
	dns       *clusterDNS
	stopInfo  context.CancelFunc
	netnsSeen map[string]bool

	mu        sync.Mutex
	processes []*process
	stopOnce  sync.Once
}

func (n *Node) path(elem ...string) string { return filepath.Join(append([]string{n.Dir}, elem...)...) }

// Start runs containerd and a kubelet joined to c (started with
// ClusterOptions), with the Services' network and DNS, and returns once the
// Node is Ready and the local images are imported. Binaries and images are
// built first if missing (minutes the first time). ctx bounds the start-up;
// the node runs until Stop. On error everything started is stopped and the
// files are kept.
func Start(ctx context.Context, c *cluster.Cluster, opts Options) (_ *Node, err error) {
	begin := time.Now()
	n := &Node{cluster: c, Name: opts.Name, Dir: opts.Dir}
	if n.Name == "" {
		if n.Name, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("node name: %w", err)
		}
	}
	if err := setupHost(); err != nil {
		return nil, err
	}
	binDir, err := NodeBinDir("kubelet", "agnhost")
	if err != nil {
		return nil, err
	}
	if n.Images, err = nodeImages(c.BinDir); err != nil {
		return nil, err
	}
	if n.lock, err = acquireHostLock(ctx); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			n.removeDir = false
			n.Stop()
			err = fmt.Errorf("%w\n(node files kept in %s)", err, n.Dir)
		}
	}()
	if n.Dir == "" {
		if n.Dir, err = os.MkdirTemp("", "toposnap-node-"); err != nil {
			return nil, fmt.Errorf("create node directory: %w", err)
		}
		n.removeDir = true
	}
	n.KubeletDir = n.path("kubelet")
	n.ContainerdSocket = n.path("containerd", "containerd.sock")
	for _, dir := range []string{n.path("logs"), n.path("containerd"), n.path("cni", "net.d"), n.path("cni", "ipam"), n.KubeletDir, n.path("pki"), n.path("manifests"), n.path("pod-logs")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", dir, err)
		}
	}
	// Holding the lock, whatever a crashed node left on the host is stale.
	if err := removeStaleNetwork(); err != nil {
		return nil, err
	}
	n.netnsSeen = listNetns()
	if err := n.startNetwork(ctx); err != nil {
		return nil, err
	}
	if err := n.startContainerd(ctx); err != nil {
		return nil, err
	}
	for reference, tarball := range n.Images {
		if err := importImage(ctx, n.ContainerdSocket, tarball); err != nil {
			return nil, fmt.Errorf("import %s: %w", reference, err)
		}
	}
	if err := n.startKubelet(ctx, binDir, opts.Labels); err != nil {
		return nil, err
	}
	klog.FromContext(ctx).Info("Node ready", "node", n.Name, "dir", n.Dir, "elapsed", time.Since(begin).Round(time.Millisecond))
	return n, nil
}

// startNetwork makes the bridge (with the node's address), the Services'
// proxy and the DNS server.
func (n *Node) startNetwork(ctx context.Context) error {
	if err := ensureBridge(bridge, NodeIP, PodSubnet); err != nil {
		return err
	}
	client := n.cluster.Client
	kubernetesSvc, err := client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read the kubernetes Service: %w", err)
	}
	serviceRange := netip.MustParsePrefix(ServiceCIDR)
	if address, err := netip.ParseAddr(kubernetesSvc.Spec.ClusterIP); err != nil || !serviceRange.Contains(address) {
		return fmt.Errorf("the kubernetes Service's address %q is outside %s, the node's service range", kubernetesSvc.Spec.ClusterIP, ServiceCIDR)
	}
	if err := reserveDNSService(ctx, n); err != nil {
		return err
	}
	server, err := url.Parse(n.cluster.RestConfig.Host)
	if err != nil {
		return fmt.Errorf("API server address: %w", err)
	}
	infoCtx, cancel := context.WithCancel(context.Background())
	n.stopInfo = cancel
	factory := informers.NewSharedInformerFactory(client, 0)
	n.proxy = newServiceProxy(factory, server.Host, dnsServiceNamespace+"/"+dnsServiceName)
	n.dns = &clusterDNS{domain: ClusterDomain, services: factory.Core().V1().Services().Lister()}
	factory.Start(infoCtx.Done())
	if err := waitForInformers(ctx, factory); err != nil {
		return err
	}
	n.proxy.sync()
	n.proxy.mu.Lock()
	err = n.proxy.addAddress(netip.MustParseAddr(ClusterDNSIP))
	n.proxy.mu.Unlock()
	if err != nil {
		return err
	}
	if err := n.dns.serve(net.JoinHostPort(ClusterDNSIP, "53")); err != nil {
		return fmt.Errorf("serve cluster DNS: %w", err)
	}
	return nil
}

// reserveDNSService creates the Service that holds ClusterDNSIP.
func reserveDNSService(ctx context.Context, n *Node) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: dnsServiceName, Namespace: dnsServiceNamespace, Labels: map[string]string{"k8s-app": "kube-dns"}},
		Spec: corev1.ServiceSpec{
			ClusterIP: ClusterDNSIP,
			Ports: []corev1.ServicePort{
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
				{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP},
			},
		},
	}
	_, err := n.cluster.Client.CoreV1().Services(dnsServiceNamespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("reserve the cluster DNS address: %w", err)
	}
	return nil
}

// removeStaleNetwork removes the bridge and the loopback addresses in the
// service range that a node killed before its Stop left behind.
func removeStaleNetwork() error {
	if out, err := exec.Command("ip", "link", "del", bridge).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
		return fmt.Errorf("remove stale bridge %s: %w: %s", bridge, err, out)
	}
	out, err := exec.Command("ip", "-4", "-o", "addr", "show", "dev", "lo").Output()
	if err != nil {
		return fmt.Errorf("list loopback addresses: %w", err)
	}
	serviceRange := netip.MustParsePrefix(ServiceCIDR)
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		for i, field := range fields {
			if field != "inet" || i+1 >= len(fields) {
				continue
			}
			prefix, err := netip.ParsePrefix(fields[i+1])
			if err == nil && serviceRange.Contains(prefix.Addr()) {
				if err := removeLoopbackAddress(prefix.Addr()); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// bridgeMAC is the bridge's own, fixed, locally administered address.
const bridgeMAC = "02:74:6f:70:6f:01"

// bridgeSteps are the ip(8) commands that make the pods' bridge. Its MAC
// is set once: a Linux bridge without one takes the lowest MAC among its
// ports and changes it as pods' veths come and go, sending no ARP, so
// every running pod's cached MAC of its gateway went stale at once and
// their traffic to and from the node (probes, the API server, webhook
// calls) vanished until their ARP entries expired, up to a minute and a
// half in the first conformance runs.
func bridgeSteps(name, mac, address, subnet string) [][]string {
	prefix := netip.MustParsePrefix(subnet)
	return [][]string{
		{"link", "add", "name", name, "address", mac, "type", "bridge"},
		{"link", "set", name, "address", mac},
		{"addr", "add", address + "/" + strconv.Itoa(prefix.Bits()), "dev", name},
		{"link", "set", name, "up"},
	}
}

// ensureBridge creates the pods' bridge with the node's address, so the
// node has its InternalIP before the first pod; the CNI bridge plugin then
// uses it as it is.
func ensureBridge(name, address, subnet string) error {
	for _, step := range bridgeSteps(name, bridgeMAC, address, subnet) {
		out, err := exec.Command("ip", step...).CombinedOutput()
		if err != nil && !strings.Contains(string(out), "File exists") {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(step, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// startContainerd writes containerd's and the CNI configs and starts it.
func (n *Node) startContainerd(ctx context.Context) error {
	cni, err := cniConfig(bridge, PodSubnet, ServiceCIDR, n.path("cni", "ipam"))
	if err != nil {
		return err
	}
	if err := os.WriteFile(n.path("cni", "net.d", "10-toposnap.conflist"), cni, 0o644); err != nil {
		return err
	}
	config, err := renderContainerdConfig(containerdSettings{
		Root: n.path("containerd", "root"), State: n.path("containerd", "state"), Socket: n.ContainerdSocket,
		Opt: n.path("containerd", "opt"), SandboxImage: SandboxImage,
		CNIBinDir: "/usr/lib/cni", CNIConfDir: n.path("cni", "net.d"),
	})
	if err != nil {
		return err
	}
	configFile := n.path("containerd", "config.toml")
	if err := os.WriteFile(configFile, config, 0o644); err != nil {
		return err
	}
	p, err := n.start("containerd", "containerd", "--config", configFile)
	if err != nil {
		return err
	}
	return waitForSocket(ctx, n.ContainerdSocket, p)
}

// startKubelet writes the kubelet's credentials and config, starts it and
// waits for its Node to be Ready and schedulable.
func (n *Node) startKubelet(ctx context.Context, binDir string, labels map[string]string) error {
	caFile := n.cluster.CAFile()
	// Its identity towards the API server, which the Node authorizer and
	// NodeRestriction recognise.
	certPEM, keyPEM, err := n.cluster.IssueClientCertificate("system:node:"+n.Name, "system:nodes")
	if err != nil {
		return fmt.Errorf("kubelet client certificate: %w", err)
	}
	// Its serving certificate, which the API server verifies against the
	// cluster's CA when it dials NodeIP.
	servingPEM, servingKeyPEM, err := n.cluster.IssueServingCertificate(n.Name, []string{n.Name}, []net.IP{net.ParseIP(NodeIP)})
	if err != nil {
		return fmt.Errorf("kubelet serving certificate: %w", err)
	}
	servingCert, servingKey := n.path("pki", "kubelet-serving.crt"), n.path("pki", "kubelet-serving.key")
	if err := os.WriteFile(servingCert, servingPEM, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(servingKey, servingKeyPEM, 0o600); err != nil {
		return err
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	kubeconfig := clientcmdapi.NewConfig()
	kubeconfig.Clusters["toposnap"] = &clientcmdapi.Cluster{Server: n.cluster.RestConfig.Host, CertificateAuthorityData: caPEM}
	kubeconfig.AuthInfos["kubelet"] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	kubeconfig.Contexts["toposnap"] = &clientcmdapi.Context{Cluster: "toposnap", AuthInfo: "kubelet"}
	kubeconfig.CurrentContext = "toposnap"
	kubeconfigFile := n.path("pki", "kubelet.kubeconfig")
	if err := clientcmd.WriteToFile(*kubeconfig, kubeconfigFile); err != nil {
		return fmt.Errorf("write kubelet kubeconfig: %w", err)
	}
	servingPort, err := freePorts(NodeIP, 1)
	if err != nil {
		return err
	}
	healthzPort, err := freePorts("127.0.0.1", 1)
	if err != nil {
		return err
	}
	config, err := kubeletConfig(kubeletSettings{
		Address: NodeIP, Port: servingPort[0], HealthzPort: healthzPort[0], ClientCAFile: caFile,
		TLSCertFile: servingCert, TLSPrivateKeyFile: servingKey,
		RuntimeEndpoint: "unix://" + n.ContainerdSocket, ClusterDNS: ClusterDNSIP, ClusterDomain: ClusterDomain,
		ResolvConf: "/etc/resolv.conf", StaticPodPath: n.path("manifests"), PodLogsDir: n.path("pod-logs"), ImageGCHighPercent: 95,
	})
	if err != nil {
		return err
	}
	configFile := n.path("kubelet-config.yaml")
	if err := os.WriteFile(configFile, config, 0o644); err != nil {
		return err
	}
	if labels == nil {
		labels = map[string]string{
			corev1.LabelTopologyRegion: cluster.SeedRegion,
			corev1.LabelTopologyZone:   cluster.SeedZone,
		}
	}
	var labelList []string
	for key, value := range labels {
		labelList = append(labelList, key+"="+value)
	}
	p, err := n.start("kubelet", filepath.Join(binDir, "kubelet"),
		"--config="+configFile,
		"--kubeconfig="+kubeconfigFile,
		"--root-dir="+n.KubeletDir,
		"--cert-dir="+n.path("pki", "kubelet"),
		"--hostname-override="+n.Name,
		"--node-ip="+NodeIP,
		"--node-labels="+strings.Join(labelList, ","),
		"--v=2",
	)
	if err != nil {
		return err
	}
	var lastProblem string
	err = cluster.Poll(ctx, 500*time.Millisecond, 3*time.Minute, func() (bool, error) {
		if p.exited() {
			return false, p.exitError()
		}
		ready, problem, err := nodeReady(ctx, n.cluster.Client, n.Name)
		if err != nil {
			klog.FromContext(ctx).V(2).Info("Reading the node", "err", err)
			return false, nil
		}
		lastProblem = problem
		return ready, nil
	})
	if err != nil {
		return fmt.Errorf("node %s never became Ready (%s): %w%s", n.Name, lastProblem, err, p.logTail())
	}
	if !n.cluster.RunsNodeLifecycleController() {
		return removeNotReadyTaint(ctx, n.cluster.Client, n.Name)
	}
	// The node lifecycle controller takes the not-ready taint off a Ready node.
	err = cluster.Poll(ctx, 500*time.Millisecond, time.Minute, func() (bool, error) {
		tainted, err := hasNotReadyTaint(ctx, n.cluster.Client, n.Name)
		if err != nil {
			klog.FromContext(ctx).V(2).Info("Reading the node", "err", err)
			return false, nil
		}
		return !tainted, nil
	})
	if err != nil {
		return fmt.Errorf("the node lifecycle controller never took the not-ready taint off node %s: %w", n.Name, err)
	}
	return nil
}

// start runs a daemon of the node.
func (n *Node) start(name, bin string, args ...string) (*process, error) {
	p, err := startProcess(name, bin, args, n.path("logs"))
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	n.processes = append(n.processes, p)
	n.mu.Unlock()
	return p, nil
}

// ImportImage loads an image archive into the node's containerd, for
// images built after Start (toposnap's own).
func (n *Node) ImportImage(ctx context.Context, tarball string) error {
	return importImage(ctx, n.ContainerdSocket, tarball)
}

// Logs returns the path of a daemon's log ("kubelet", "containerd").
func (n *Node) Logs(name string) string { return n.path("logs", name+".log") }

// Stop stops the kubelet, kills every container and stops containerd, then
// removes what the node added to the host: mounts under its directory,
// network namespaces of its pods, the bridge and the Services' addresses.
// Safe to call more than once.
func (n *Node) Stop() {
	n.stopOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		n.mu.Lock()
		processes := n.processes
		n.mu.Unlock()
		var containerd *process
		for i := len(processes) - 1; i >= 0; i-- {
			if processes[i].name == "containerd" {
				containerd = processes[i]
				continue
			}
			processes[i].stop(10 * time.Second)
		}
		if containerd != nil {
			if !containerd.exited() {
				if err := killTasks(ctx, n.ContainerdSocket); err != nil {
					klog.ErrorS(err, "Kill the node's containers")
				}
			}
			containerd.stop(10 * time.Second)
		}
		var errs []error
		if n.Dir != "" {
			errs = append(errs, unmountUnder(n.Dir))
		}
		errs = append(errs, removeNewNetns(n.netnsSeen))
		if n.stopInfo != nil {
			n.stopInfo()
		}
		if n.dns != nil {
			errs = append(errs, n.dns.close())
		}
		if n.proxy != nil {
			errs = append(errs, n.proxy.stop())
		}
		if out, err := exec.Command("ip", "link", "del", bridge).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
			errs = append(errs, fmt.Errorf("remove bridge: %w: %s", err, out))
		}
		if err := errors.Join(errs...); err != nil {
			klog.ErrorS(err, "Clean up after the node")
			n.removeDir = false
		}
		if n.removeDir {
			if err := os.RemoveAll(n.Dir); err != nil {
				klog.ErrorS(err, "Remove the node directory", "dir", n.Dir)
			}
		}
		if n.lock != nil {
			n.lock.release()
		}
	})
}

// freePorts returns count distinct free TCP ports on host's address.
func freePorts(host string, count int) ([]int, error) {
	var ports []int
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	}()
	for range count {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
