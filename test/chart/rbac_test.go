package chart

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/toposnap/toposnap/internal/kube"
	"github.com/toposnap/toposnap/internal/route"
	"github.com/toposnap/toposnap/provisioner"
	"github.com/toposnap/toposnap/test/cluster"
)

const (
	rbacRelease   = "rbac"
	rbacNamespace = "toposnap-rbac"
	// rbacNode is the seed node the node processes act for.
	rbacNode = "node1"
)

// TestComponentsRunWithTheChartsRBAC installs the chart, then runs every
// component as a local process with the arguments the chart gives its
// container (paths and ports moved to the test's) and the identity of the
// chart's ServiceAccount for it (the admin kubeconfig impersonating it; the
// node processes' with the node name a pod's bound token carries, which the
// chart's admission policies check), and waits until each has done what
// needs its permissions: the extender and the webhook answer their
// readiness probes (the chart's path and scheme: ready once their informers
// have synced) with the chart's certificate for their Service;
// the provisioner holds its zone's Lease and publishes CSIStorageCapacity;
// the snapshotter's informers sync; toposnap-controller takes its Lease,
// answers /readyz, removes the capacity of a class that is gone and routes
// a claim to its selected node, which the node's provisioner (--routed:
// it sees only what is routed to it) then provisions; toposnap-scheduler (the cluster's
// kube-scheduler binary with the chart's configuration, the extender's
// address swapped for the local one and serverName keeping the certificate
// check on the Service's name) wins its leader-election Lease and places a
// pod, which it can only do through the extender over TLS. Nothing may log
// "forbidden". This also proves the chart passes no flag the binaries do
// not have.
func TestComponentsRunWithTheChartsRBAC(t *testing.T) {
	needCluster(t)
	ctx := ctxFor(t, 5*time.Minute)
	built := components()
	if built.err != nil {
		t.Fatal(built.err)
	}
	t.Cleanup(func() {
		_, _ = runHelm(context.Background(), "uninstall", rbacRelease, "--namespace", rbacNamespace, "--ignore-not-found")
	})
	if out, err := runHelm(ctx, "install", rbacRelease, chartDir, "--namespace", rbacNamespace, "--create-namespace",
		"-f", "test/chart/testdata/rbac.yaml"); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	client := testCluster.Client
	dir := t.TempDir()
	var daemonSet appsv1.DaemonSet
	getInto(t, ctx, "daemonset", rbacNamespace, rbacRelease+"-toposnap-node", &daemonSet)
	nodeSA := daemonSet.Spec.Template.Spec.ServiceAccountName
	socket := filepath.Join(dir, "csi.sock")
	nodeEnv := map[string]string{"NODE_NAME": rbacNode, "POD_NAMESPACE": rbacNamespace}
	nodeRewrite := func(arg string) string {
		arg = strings.ReplaceAll(arg, "/csi/csi.sock", socket)
		arg = strings.ReplaceAll(arg, "/var/lib/toposnap/node", filepath.Join(dir, "pool"))
		return arg
	}
	var procs []*process
	for _, container := range []string{"driver", "provisioner", "snapshotter"} {
		spec := containerNamed(t, daemonSet.Spec.Template.Spec.Containers, container)
		procs = append(procs, startComponent(t, dir, built.dir, spec, nodeSA, nodeIdentity(rbacNode), nodeEnv, nodeRewrite))
	}

	// toposnap-controller, which the routed node agents need.
	var controllerDeployment appsv1.Deployment
	getInto(t, ctx, "deployment", rbacNamespace, rbacRelease+"-toposnap-controller", &controllerDeployment)
	controllerIdentity := rbacRelease + "-toposnap-controller-0"
	controllerProc := startComponent(t, dir, built.dir, controllerDeployment.Spec.Template.Spec.Containers[0],
		controllerDeployment.Spec.Template.Spec.ServiceAccountName, nil, map[string]string{"POD_NAME": controllerIdentity}, nil)
	procs = append(procs, controllerProc)
	routedClaim := createClaim(t, ctx, "routed-to-node1", "rbac-node", rbacNode)
	staleCapacity := createStaleCapacity(t, ctx, "rbac-class-gone")

	var extender, webhookDeployment appsv1.Deployment
	getInto(t, ctx, "deployment", rbacNamespace, rbacRelease+"-toposnap-extender", &extender)
	getInto(t, ctx, "deployment", rbacNamespace, rbacRelease+"-toposnap-webhook", &webhookDeployment)
	extenderTLS, extenderCA := writeTLSFiles(t, ctx, dir, "extender")
	// The schedulers' client pair and its CA, which the extender requires
	// (toposnap-scheduler is the release's only scheduler).
	extenderClient, _ := writeTLSFiles(t, ctx, dir, "extender-client")
	extenderContainer := extender.Spec.Template.Spec.Containers[0]
	extenderProc := startComponent(t, dir, built.dir, extenderContainer, extender.Spec.Template.Spec.ServiceAccountName, nil,
		nil, func(arg string) string {
			return strings.NewReplacer("/tls/", extenderTLS+"/", "/client-ca/", extenderClient+"/").Replace(arg)
		})
	schedulerCertificate, err := tls.LoadX509KeyPair(filepath.Join(extenderClient, "tls.crt"), filepath.Join(extenderClient, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	webhookTLS, webhookCA := writeTLSFiles(t, ctx, dir, "webhook")
	webhookContainer := webhookDeployment.Spec.Template.Spec.Containers[0]
	webhookProc := startComponent(t, dir, built.dir, webhookContainer, webhookDeployment.Spec.Template.Spec.ServiceAccountName,
		nil, nil, func(arg string) string { return strings.ReplaceAll(arg, "/tls/", webhookTLS+"/") })
	extenderHost := rbacRelease + "-toposnap-extender." + rbacNamespace + ".svc"
	scheduler := startScheduler(t, ctx, dir, extenderProc.listen, extenderHost, extenderClient)
	procs = append(procs, extenderProc, webhookProc, scheduler)
	placed := createPod(t, ctx, "placed-through-the-extender", "toposnap-scheduler")
	readiness := extenderContainer.ReadinessProbe.HTTPGet
	webhookReadiness := webhookContainer.ReadinessProbe.HTTPGet
	webhookHost := rbacRelease + "-toposnap-webhook." + rbacNamespace + ".svc"

	zoneLease := provisioner.ZoneLeaseName(cluster.SeedRegion, cluster.SeedZone)
	snapshotLease := kube.SnapshotLeaseName(cluster.SeedRegion, cluster.SeedZone)
	checks := []struct {
		what  string
		check func() bool
	}{
		{"extender ready on its probe port (probe " + string(readiness.Scheme) + " " + readiness.Path + ")", func() bool {
			return verifiedOK(strings.ToLower(string(readiness.Scheme))+"://"+extenderProc.health+readiness.Path, extenderCA, extenderHost, nil)
		}},
		{"extender serving the schedulers' certificate over the chart's TLS, and refusing a caller without it", func() bool {
			url := "https://" + extenderProc.listen + "/healthz"
			return verifiedOK(url, extenderCA, extenderHost, &schedulerCertificate) && !verifiedOK(url, extenderCA, extenderHost, nil)
		}},
		{"webhook ready on its probe port (probe " + string(webhookReadiness.Scheme) + " " + webhookReadiness.Path + ")", func() bool {
			return verifiedOK(strings.ToLower(string(webhookReadiness.Scheme))+"://"+webhookProc.health+webhookReadiness.Path, webhookCA, webhookHost, nil)
		}},
		{"webhook serving over the chart's TLS", func() bool {
			return verifiedOK("https://"+webhookProc.listen+"/healthz", webhookCA, webhookHost, nil)
		}},
		{"provisioner holding zone Lease " + zoneLease, func() bool {
			lease, err := client.CoordinationV1().Leases(rbacNamespace).Get(ctx, zoneLease, metav1.GetOptions{})
			return err == nil && lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity == rbacNode
		}},
		{"provisioner publishing CSIStorageCapacity", func() bool {
			list, err := client.StorageV1().CSIStorageCapacities(rbacNamespace).List(ctx, metav1.ListOptions{})
			return err == nil && slices.ContainsFunc(list.Items, func(c storagev1.CSIStorageCapacity) bool { return c.StorageClassName == "rbac-node" })
		}},
		{"snapshotter running (informers synced)", func() bool { return procs[2].logContains("Snapshotter running") }},
		{"snapshotter holding zone snapshot Lease " + snapshotLease, func() bool {
			lease, err := client.CoordinationV1().Leases(rbacNamespace).Get(ctx, snapshotLease, metav1.GetOptions{})
			return err == nil && lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity == rbacNode
		}},
		{"toposnap-controller leading (holder of Lease toposnap-controller)", func() bool {
			lease, err := client.CoordinationV1().Leases(rbacNamespace).Get(ctx, "toposnap-controller", metav1.GetOptions{})
			return err == nil && lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity == controllerIdentity
		}},
		{"toposnap-controller ready (/readyz: leading, caches filled)", func() bool {
			return answersOK(&http.Client{Timeout: 2 * time.Second}, "http://"+controllerProc.listen+"/readyz")
		}},
		{"toposnap-controller routing a claim to its selected node " + rbacNode, func() bool {
			claim, err := client.CoreV1().PersistentVolumeClaims(rbacNamespace).Get(ctx, routedClaim.Name, metav1.GetOptions{})
			return err == nil && claim.Labels[route.Label] == route.Node(rbacNode)
		}},
		{"toposnap-controller removing the CSIStorageCapacity of a class that is gone", func() bool {
			_, err := client.StorageV1().CSIStorageCapacities(rbacNamespace).Get(ctx, staleCapacity, metav1.GetOptions{})
			return apierrors.IsNotFound(err)
		}},
		{"the routed provisioner provisioning that claim", func() bool {
			pv, err := client.CoreV1().PersistentVolumes().Get(ctx, provisioner.PVName(routedClaim), metav1.GetOptions{})
			return err == nil && pv.Spec.ClaimRef != nil && pv.Spec.ClaimRef.UID == routedClaim.UID
		}},
		{"toposnap-scheduler holding its Lease", func() bool {
			lease, err := client.CoordinationV1().Leases(rbacNamespace).Get(ctx, "toposnap-scheduler", metav1.GetOptions{})
			return err == nil && lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != ""
		}},
		{"toposnap-scheduler placing a pod through the extender over TLS", func() bool {
			pod, err := client.CoreV1().Pods(rbacNamespace).Get(ctx, placed, metav1.GetOptions{})
			return err == nil && pod.Spec.NodeName != ""
		}},
	}
	for _, c := range checks {
		err := cluster.Poll(ctx, 200*time.Millisecond, 90*time.Second, func() (bool, error) {
			for _, p := range procs {
				if p.exited() {
					return false, fmt.Errorf("%s exited", p.name)
				}
			}
			return c.check(), nil
		})
		if err != nil {
			t.Errorf("%s: %v", c.what, err)
		}
	}
	for _, p := range procs {
		if p.logContains("forbidden") {
			t.Errorf("%s was refused something by RBAC", p.name)
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", p.name, p.logTail())
		}
	}
}

// process is a component running as a local process.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	listen  string // the address it serves on, when it is a server
	health  string // the address of its probe port (--health-listen), if any
	done    chan struct{}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) logContains(text string) bool {
	data, _ := os.ReadFile(p.logPath)
	return strings.Contains(string(data), text)
}

// logTail is the end of the process's log.
func (p *process) logTail() string {
	data, _ := os.ReadFile(p.logPath)
	if len(data) > 6000 {
		data = data[len(data)-6000:]
	}
	return string(data)
}

// startComponent runs a container's command from binDir with its args,
// env references expanded, rewrite applied, listen/metrics addresses moved
// to free loopback ports, and --in-cluster replaced by a kubeconfig acting
// as the ServiceAccount (with extra, the token's user extra, if any).
func startComponent(t *testing.T, dir, binDir string, container corev1.Container, serviceAccount string, extra map[string][]string,
	env map[string]string, rewrite func(string) string) *process {
	t.Helper()
	kubeconfig := impersonatingKubeconfig(t, dir, rbacNamespace, serviceAccount, extra)
	p := &process{name: container.Name}
	args := []string{"--kubeconfig=" + kubeconfig}
	for _, arg := range container.Args {
		arg = os.Expand(strings.NewReplacer("$(", "${", ")", "}").Replace(arg), func(name string) string { return env[name] })
		if rewrite != nil {
			arg = rewrite(arg)
		}
		flagName, _, _ := strings.Cut(arg, "=")
		switch flagName {
		case "--in-cluster":
			continue
		case "--listen", "--metrics-address":
			p.listen = freeAddress(t)
			arg = flagName + "=" + p.listen
		case "--health-listen":
			p.health = freeAddress(t)
			arg = flagName + "=" + p.health
		}
		args = append(args, arg)
	}
	return start(t, dir, p, filepath.Join(binDir, filepath.Base(container.Command[0])), args)
}

// startScheduler runs the cluster's kube-scheduler with the chart's
// configuration, acting as the chart's scheduler ServiceAccount. The
// extender is reached at extenderAddress, its certificate still checked
// for extenderHost (the Service's name), as NOTES.txt advises for a
// scheduler that uses the ClusterIP.
func startScheduler(t *testing.T, ctx context.Context, dir, extenderAddress, extenderHost, clientDir string) *process {
	t.Helper()
	var configMap corev1.ConfigMap
	getInto(t, ctx, "configmap", rbacNamespace, rbacRelease+"-toposnap-scheduler", &configMap)
	kubeconfig := impersonatingKubeconfig(t, dir, rbacNamespace, rbacRelease+"-toposnap-scheduler", nil)
	var config map[string]any
	if err := yaml.Unmarshal([]byte(configMap.Data["config.yaml"]), &config); err != nil {
		t.Fatal(err)
	}
	// In a pod, kube-scheduler reads the in-cluster credentials; here the
	// file must name them.
	config["clientConnection"] = map[string]any{"kubeconfig": kubeconfig}
	extenders, _ := config["extenders"].([]any)
	if len(extenders) != 1 {
		t.Fatalf("scheduler config has %d extenders, want 1", len(extenders))
	}
	extender := extenders[0].(map[string]any)
	wantPrefix := "https://" + extenderHost + ":"
	if prefix, _ := extender["urlPrefix"].(string); !strings.HasPrefix(prefix, wantPrefix) {
		t.Fatalf("extender urlPrefix %q, want %s...", prefix, wantPrefix)
	}
	extender["urlPrefix"] = "https://" + extenderAddress
	tlsConfig, ok := extender["tlsConfig"].(map[string]any)
	if !ok {
		t.Fatal("the chart's scheduler configuration has no extender tlsConfig")
	}
	tlsConfig["serverName"] = extenderHost
	// The client pair, where the pod mounts it, is in clientDir here.
	for _, key := range []string{"certFile", "keyFile"} {
		file, _ := tlsConfig[key].(string)
		if file == "" {
			t.Fatalf("the chart's scheduler configuration presents no client certificate (%s)", key)
		}
		tlsConfig[key] = filepath.Join(clientDir, filepath.Base(file))
	}
	data, err := yaml.Marshal(config)
	if err != nil {
		t.Fatal(err)
	}
	configPath := filepath.Join(dir, "scheduler-config.yaml")
	writeFile(t, configPath, data)
	p := &process{name: "toposnap-scheduler", listen: freeAddress(t)}
	host, port, _ := net.SplitHostPort(p.listen)
	return start(t, dir, p, filepath.Join(testCluster.BinDir, "kube-scheduler"), []string{
		"--config=" + configPath, "--authentication-kubeconfig=" + kubeconfig, "--authorization-kubeconfig=" + kubeconfig,
		"--bind-address=" + host, "--secure-port=" + port, "--v=2",
	})
}

// start runs binary, logging to dir/<name>.log, until the test ends.
func start(t *testing.T, dir string, p *process, binary string, args []string) *process {
	t.Helper()
	p.logPath = filepath.Join(dir, p.name+".log")
	logFile, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(binary, args...)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	p.done = make(chan struct{})
	go func() {
		_ = p.cmd.Wait()
		_ = logFile.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	t.Logf("started %s %s", p.name, strings.Join(args, " "))
	return p
}

// nodeIdentity is the user extra of a token bound to a pod on node: the
// node's name, as the API server adds it to the token of every pod the
// kubelet runs (ServiceAccountTokenPodNodeInfo).
func nodeIdentity(node string) map[string][]string {
	return map[string][]string{"authentication.kubernetes.io/node-name": {node}}
}

// writeTLSFiles writes tls.crt and tls.key of the component's chart-made
// Secret to a directory of their own and returns it with the Secret's CA.
func writeTLSFiles(t *testing.T, ctx context.Context, dir, component string) (string, []byte) {
	t.Helper()
	secret, err := testCluster.Client.CoreV1().Secrets(rbacNamespace).Get(ctx, rbacRelease+"-toposnap-"+component+"-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tlsDir := filepath.Join(dir, component+"-tls")
	for _, key := range []string{"ca.crt", "tls.crt", "tls.key"} {
		writeFile(t, filepath.Join(tlsDir, key), secret.Data[key])
	}
	return tlsDir, secret.Data["ca.crt"]
}

// createPod creates a pod that only a scheduler can act on (no kubelet
// runs it) and returns its name.
func createPod(t *testing.T, ctx context.Context, name, schedulerName string) string {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: rbacNamespace},
		Spec: corev1.PodSpec{
			SchedulerName: schedulerName,
			Containers:    []corev1.Container{{Name: "pause", Image: "registry.k8s.io/pause:3.10"}},
		},
	}
	if _, err := testCluster.Client.CoreV1().Pods(rbacNamespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return name
}

// createClaim creates a claim of class for which the scheduler chose node
// (annotation volume.kubernetes.io/selected-node), as it does for a pod's
// claim of a WaitForFirstConsumer class, and returns it.
func createClaim(t *testing.T, ctx context.Context, name, class, node string) *corev1.PersistentVolumeClaim {
	t.Helper()
	claim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: rbacNamespace,
			Annotations: map[string]string{provisioner.AnnSelectedNode: node}},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: &class,
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Mi")}},
		},
	}
	created, err := testCluster.Client.CoreV1().PersistentVolumeClaims(rbacNamespace).Create(ctx, claim, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return created
}

// createStaleCapacity creates a CSIStorageCapacity as a provisioner
// publishes it, for a class that does not exist, and returns its name.
func createStaleCapacity(t *testing.T, ctx context.Context, class string) string {
	t.Helper()
	capacity := &storagev1.CSIStorageCapacity{
		ObjectMeta: metav1.ObjectMeta{Name: "stale-" + class, Namespace: rbacNamespace, Labels: map[string]string{
			"csi.storage.k8s.io/drivername": "csi.toposnap.io", "csi.storage.k8s.io/managed-by": "toposnap-provisioner"}},
		NodeTopology:     &metav1.LabelSelector{MatchLabels: map[string]string{"topology.toposnap.io/node": rbacNode}},
		StorageClassName: class,
		Capacity:         ptr.To(resource.MustParse("1Gi")),
	}
	if _, err := testCluster.Client.StorageV1().CSIStorageCapacities(rbacNamespace).Create(ctx, capacity, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return capacity.Name
}

// impersonatingKubeconfig writes the admin kubeconfig acting as the
// ServiceAccount (with extra as its user extra), so that the API server
// applies that account's RBAC and admission policies.
func impersonatingKubeconfig(t *testing.T, dir, namespace, serviceAccount string, extra map[string][]string) string {
	t.Helper()
	path := filepath.Join(dir, "kubeconfig-"+serviceAccount)
	if _, err := os.Stat(path); err == nil {
		return path
	}
	config, err := clientcmd.LoadFromFile(testCluster.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, auth := range config.AuthInfos {
		auth.Impersonate = "system:serviceaccount:" + namespace + ":" + serviceAccount
		auth.ImpersonateGroups = []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"}
		auth.ImpersonateUserExtra = extra
	}
	if err := clientcmd.WriteToFile(*config, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// getInto reads an object with kubectl into a typed value.
func getInto(t *testing.T, ctx context.Context, resource, namespace, name string, into any) {
	t.Helper()
	out, err := testCluster.Kubectl(ctx, "get", resource, name, "--namespace", namespace, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(out, into); err != nil {
		t.Fatal(err)
	}
}

func containerNamed(t *testing.T, containers []corev1.Container, name string) corev1.Container {
	t.Helper()
	for _, c := range containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %s", name)
	return corev1.Container{}
}

// verifiedOK reports whether url answers 200 over a connection whose
// certificate caPEM signs for serverName (plain http needs neither).
func verifiedOK(url string, caPEM []byte, serverName string, clientCertificate *tls.Certificate) bool {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	config := &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12}
	if clientCertificate != nil {
		config.Certificates = []tls.Certificate{*clientCertificate}
	}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: config, DisableKeepAlives: true}}
	return answersOK(client, url)
}

// answersOK reports whether a GET of url through client answers 200.
func answersOK(client *http.Client, url string) bool {
	resp, err := client.Get(url)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// freeAddress picks a free loopback address.
func freeAddress(t *testing.T) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	return "127.0.0.1:" + strconv.Itoa(listener.Addr().(*net.TCPAddr).Port)
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
