package scalebench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	flowcontrolv1 "k8s.io/api/flowcontrol/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/driver/store"
	"github.com/toposnap/toposnap/internal/route"
	"github.com/toposnap/toposnap/internal/topology"
	"github.com/toposnap/toposnap/provisioner"
	"github.com/toposnap/toposnap/test/cluster"
	"github.com/toposnap/toposnap/test/harness"
)

// What the bench's cluster holds.
const (
	// DriverName is toposnap's CSI driver.
	DriverName = "csi.toposnap.io"
	// ForeignDriver provisions the foreign pairs: toposnap must ignore them.
	ForeignDriver = "foreign.example.com"
	// NodeClass and ForeignClass are the pairs' StorageClasses.
	NodeClass    = "toposnap-node"
	ForeignClass = "foreign"
	// Namespaces is how many namespaces the claims are spread over.
	Namespaces = 20
	// SystemNamespace holds the processes' Leases and capacity objects.
	SystemNamespace = "toposnap-system"
	// identityGroup is every process's group, bound to cluster-admin: the
	// bench measures load, not authorization (the chart's roles and the
	// node admission policies are not installed).
	identityGroup = "toposnap-scalebench"
	// createWorkers is how many creates are in flight at once.
	createWorkers = 32
	// ttlAnnotation is what kube-controller-manager's TTL controller
	// writes on every node; its presence on all of them says the node
	// writes that follow registration are over.
	ttlAnnotation = "node.alpha.kubernetes.io/ttl"
)

// Zones are the zones the nodes are spread over, in cluster.SeedRegion.
var Zones = []string{"scale-a", "scale-b", "scale-c"}

// NodeName is the name of node i; node 0 runs the measured processes.
func NodeName(i int) string { return fmt.Sprintf("n%05d", i) }

// MeasuredNode is the node whose processes are measured.
var MeasuredNode = NodeName(0)

// node is node i as a kubelet with toposnap's driver registered labels it.
func node(i int) corev1.Node {
	n := cluster.NodeInZone(NodeName(i), Zones[i%len(Zones)])
	n.Labels[topology.NodeKey] = n.Name
	return n
}

// Options say what cluster Start builds.
type Options struct {
	// Nodes is how many kwok nodes.
	Nodes int
	// ForeignFraction of the pairs belong to ForeignDriver (0 to 1).
	ForeignFraction float64
	// Processes are what to start and measure; nil means Processes.
	Processes []Process
	// BinDir holds the processes' binaries (see Build); empty means Start
	// builds them. A run of several clusters builds once, so that every
	// point measures the same code.
	BinDir string
}

// Bench is a running cluster that grows pair by pair: each Measure
// starts the processes, measures and stops them.
type Bench struct {
	Cluster *cluster.Cluster
	// Client is an admin client with limits high enough for bulk creates;
	// it speaks protobuf. Scrapes go through Cluster.Client.
	Client kubernetes.Interface
	// Dir holds binaries, kubeconfigs, TLS files and process logs.
	Dir string

	opts        Options
	processes   []Process
	bin         string
	kubeconfigs map[string]string // process name -> its kubeconfig
	pki         *harness.PKI
	pairs       int // created so far, indexes 0..pairs-1
	runs        int // measurements so far (names the log files)
}

// Start builds the processes' binaries, starts a cluster with opts.Nodes
// kwok nodes and everything the processes need (snapshot CRDs, CSIDriver,
// StorageClasses, identities), and waits until the nodes are settled.
func Start(ctx context.Context, opts Options) (_ *Bench, err error) {
	if opts.Nodes < 1 {
		return nil, errors.New("at least one node is needed")
	}
	processes := opts.Processes
	if processes == nil {
		processes = Processes
	}
	if err := checkProcesses(processes); err != nil {
		return nil, err
	}
	root, err := cluster.RepoRoot()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "toposnap-scalebench-")
	if err != nil {
		return nil, err
	}
	b := &Bench{Dir: dir, opts: opts, processes: processes, bin: opts.BinDir, kubeconfigs: map[string]string{}}
	if b.bin == "" {
		b.bin = filepath.Join(dir, "bin")
		if err := Build(processes, b.bin); err != nil {
			return nil, err
		}
	}
	b.Cluster, err = cluster.Start(ctx, cluster.Options{Nodes: []corev1.Node{node(0)}})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			b.Stop()
		}
	}()
	// Protobuf, as the control plane's own clients talk: JSON would spend
	// this 2-core machine's CPU on encoding what the bench creates.
	config := *b.Cluster.RestConfig
	config.QPS, config.Burst = 5000, 5000
	config.ContentType = runtime.ContentTypeProtobuf
	config.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	if b.Client, err = kubernetes.NewForConfig(&config); err != nil {
		return nil, err
	}
	if err := harness.InstallSnapshotCRDs(ctx, b.Cluster, root); err != nil {
		return nil, err
	}
	if err := b.createFixtures(ctx); err != nil {
		return nil, err
	}
	if err := b.createIdentities(ctx); err != nil {
		return nil, err
	}
	if b.pki, err = harness.WritePKI(dir); err != nil {
		return nil, err
	}
	begin := time.Now()
	if err := b.createNodes(ctx); err != nil {
		return nil, err
	}
	klog.FromContext(ctx).Info("Nodes registered and settled", "nodes", opts.Nodes, "elapsed", time.Since(begin).Round(time.Millisecond))
	return b, nil
}

// Stop ends the cluster. The work directory stays: RemoveDir removes it
// (the logs of a failed run are worth reading).
func (b *Bench) Stop() {
	if b.Cluster != nil {
		b.Cluster.Stop()
	}
}

// RemoveDir deletes the work directory.
func (b *Bench) RemoveDir() error { return os.RemoveAll(b.Dir) }

// Build compiles the processes' packages, from the repository's working
// tree, into bin.
func Build(processes []Process, bin string) error {
	root, err := cluster.RepoRoot()
	if err != nil {
		return err
	}
	args := []string{"build", "-o", bin + "/"}
	for _, p := range processes {
		args = append(args, p.Package)
	}
	build := exec.Command("go", args...)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// createFixtures makes the CSIDriver, the pairs' StorageClasses and the
// namespaces.
func (b *Bench) createFixtures(ctx context.Context) error {
	if _, err := b.Client.StorageV1().CSIDrivers().Create(ctx, &storagev1.CSIDriver{
		ObjectMeta: metav1.ObjectMeta{Name: DriverName},
		Spec: storagev1.CSIDriverSpec{AttachRequired: ptr.To(false), PodInfoOnMount: ptr.To(false),
			VolumeLifecycleModes: []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}},
	}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create CSIDriver: %w", err)
	}
	classes := []*storagev1.StorageClass{
		{ObjectMeta: metav1.ObjectMeta{Name: NodeClass}, Provisioner: DriverName,
			Parameters:        map[string]string{"scope": string(topology.ScopeNode)},
			VolumeBindingMode: ptr.To(storagev1.VolumeBindingWaitForFirstConsumer), ReclaimPolicy: ptr.To(corev1.PersistentVolumeReclaimDelete)},
		{ObjectMeta: metav1.ObjectMeta{Name: ForeignClass}, Provisioner: ForeignDriver,
			VolumeBindingMode: ptr.To(storagev1.VolumeBindingWaitForFirstConsumer), ReclaimPolicy: ptr.To(corev1.PersistentVolumeReclaimDelete)},
	}
	for _, class := range classes {
		if _, err := b.Client.StorageV1().StorageClasses().Create(ctx, class, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create StorageClass %s: %w", class.Name, err)
		}
	}
	for i := range Namespaces {
		if err := b.createNamespace(ctx, namespace(i)); err != nil {
			return err
		}
	}
	return b.createNamespace(ctx, SystemNamespace)
}

func (b *Bench) createNamespace(ctx context.Context, name string) error {
	if _, err := b.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}

// namespace is the name of claim namespace i.
func namespace(i int) string { return fmt.Sprintf("scale-%02d", i) }

// identity is the API user a process authenticates as.
func identity(process string) string { return "toposnap-scalebench:" + process }

// flowSchema is the name of the FlowSchema that counts a process's requests.
func flowSchema(process string) string { return "scalebench-" + process }

// createIdentities gives each process a client certificate and kubeconfig
// of its own user, binds the users' group to cluster-admin, and gives each
// user a FlowSchema, so that the API server's
// apiserver_flowcontrol_dispatched_requests_total counts each process's
// requests apart. The FlowSchemas use workload-low, the priority level
// service accounts' requests get by default.
func (b *Bench) createIdentities(ctx context.Context) error {
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "toposnap-scalebench"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "cluster-admin"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.GroupKind, Name: identityGroup}},
	}
	if _, err := b.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("bind %s to cluster-admin: %w", identityGroup, err)
	}
	for _, p := range b.processes {
		certPEM, keyPEM, err := b.Cluster.IssueClientCertificate(identity(p.Name), identityGroup)
		if err != nil {
			return err
		}
		path := filepath.Join(b.Dir, p.Name+".kubeconfig")
		if err := writeKubeconfig(path, b.Cluster.RestConfig.Host, b.Cluster.CAFile(), certPEM, keyPEM); err != nil {
			return err
		}
		b.kubeconfigs[p.Name] = path
		schema := &flowcontrolv1.FlowSchema{
			ObjectMeta: metav1.ObjectMeta{Name: flowSchema(p.Name)},
			Spec: flowcontrolv1.FlowSchemaSpec{
				PriorityLevelConfiguration: flowcontrolv1.PriorityLevelConfigurationReference{Name: "workload-low"},
				MatchingPrecedence:         1000,
				DistinguisherMethod:        &flowcontrolv1.FlowDistinguisherMethod{Type: flowcontrolv1.FlowDistinguisherMethodByUserType},
				Rules: []flowcontrolv1.PolicyRulesWithSubjects{{
					Subjects: []flowcontrolv1.Subject{{Kind: flowcontrolv1.SubjectKindUser, User: &flowcontrolv1.UserSubject{Name: identity(p.Name)}}},
					ResourceRules: []flowcontrolv1.ResourcePolicyRule{{Verbs: []string{"*"}, APIGroups: []string{"*"}, Resources: []string{"*"},
						ClusterScope: true, Namespaces: []string{"*"}}},
					NonResourceRules: []flowcontrolv1.NonResourcePolicyRule{{Verbs: []string{"*"}, NonResourceURLs: []string{"*"}}},
				}},
			},
		}
		if _, err := b.Client.FlowcontrolV1().FlowSchemas().Create(ctx, schema, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create FlowSchema %s: %w", schema.Name, err)
		}
	}
	return nil
}

// writeKubeconfig writes a kubeconfig for the client pair at path.
func writeKubeconfig(path, server, caFile string, certPEM, keyPEM []byte) error {
	config := clientcmdapi.NewConfig()
	config.Clusters["scalebench"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: caFile}
	config.AuthInfos["scalebench"] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	config.Contexts["scalebench"] = &clientcmdapi.Context{Cluster: "scalebench", AuthInfo: "scalebench"}
	config.CurrentContext = "scalebench"
	if err := clientcmd.WriteToFile(*config, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// createNodes registers nodes 1..Nodes-1 (node 0 came with the cluster)
// and waits until kwok holds every node's lease and the controller
// manager's TTL controller has annotated every node: the writes that
// follow a node's registration are over, and what remains is its
// heartbeat.
func (b *Bench) createNodes(ctx context.Context) error {
	err := parallel(ctx, b.opts.Nodes-1, func(ctx context.Context, i int) error {
		n := node(i + 1)
		_, err := b.Client.CoreV1().Nodes().Create(ctx, &n, metav1.CreateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("create nodes: %w", err)
	}
	want := b.opts.Nodes
	var leases, annotated int
	err = cluster.Poll(ctx, 2*time.Second, 20*time.Minute, func() (bool, error) {
		leaseList, err := b.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		leases = 0
		for _, lease := range leaseList.Items {
			if ptr.Deref(lease.Spec.HolderIdentity, "") != "" {
				leases++
			}
		}
		nodeList, err := b.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
		if err != nil {
			return false, nil
		}
		annotated = 0
		for _, n := range nodeList.Items {
			if _, ok := n.Annotations[ttlAnnotation]; ok && isReady(n) {
				annotated++
			}
		}
		return leases >= want && annotated >= want, nil
	})
	if err != nil {
		return fmt.Errorf("nodes not settled (%d of %d leases held by kwok, %d Ready with a TTL annotation): %w", leases, want, annotated, err)
	}
	return nil
}

// isReady reports whether the node's Ready condition is True.
func isReady(n corev1.Node) bool {
	for _, condition := range n.Status.Conditions {
		if condition.Type == corev1.NodeReady {
			return condition.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Pairs is how many PVC+PV pairs exist.
func (b *Bench) Pairs() int { return b.pairs }

// Grow creates pairs until there are total, as a bound pair exists after
// toposnap's provisioner (or the foreign driver's) provisioned it and the
// PV controller bound it: pair i is on node i mod Nodes, in namespace i
// mod Namespaces. The controller manager is paused meanwhile and then
// restarted: a fresh one lists every pair whole and bound and has nothing
// to write, where one that saw them being written (or replayed the writes
// after a pause) would mark claims whose PV it has not seen yet Lost, and
// post an event for each.
func (b *Bench) Grow(ctx context.Context, total int) (err error) {
	if total <= b.pairs {
		return nil
	}
	if err := b.Cluster.Pause(cluster.ControllerManager); err != nil {
		return err
	}
	defer func() {
		if restartErr := b.Cluster.Restart(ctx, cluster.ControllerManager); restartErr != nil {
			err = errors.Join(err, restartErr)
		}
	}()
	first, begin := b.pairs, time.Now()
	err = parallel(ctx, total-first, func(ctx context.Context, i int) error {
		return b.createPair(ctx, first+i)
	})
	if err != nil {
		return fmt.Errorf("create pairs: %w", err)
	}
	b.pairs = total
	elapsed := time.Since(begin)
	klog.FromContext(ctx).Info("Pairs created", "pairs", total-first, "total", total, "elapsed", elapsed.Round(time.Millisecond),
		"pairsPerSecond", int(float64(total-first)/elapsed.Seconds()))
	return nil
}

// isForeign says whether pair i belongs to ForeignDriver.
func (b *Bench) isForeign(i int) bool {
	return float64(i%1000) < b.opts.ForeignFraction*1000
}

// claimName is pair i's claim.
func claimName(i int) (namespaceName, name string) {
	return namespace(i % Namespaces), fmt.Sprintf("data-%07d", i)
}

// createPair writes pair i: the claim, its PV as the provisioner builds
// it, the claim's binding and both statuses.
func (b *Bench) createPair(ctx context.Context, i int) error {
	nodeIndex := i % b.opts.Nodes
	nodeName, zone := NodeName(nodeIndex), Zones[nodeIndex%len(Zones)]
	ns, name := claimName(i)
	class, driverName := NodeClass, DriverName
	if b.isForeign(i) {
		class, driverName = ForeignClass, ForeignDriver
	}
	var labels map[string]string
	if driverName == DriverName {
		// Routed as toposnap-controller routes it once the scheduler picked
		// the node: the bench measures the steady state, where every object
		// carries its route and the controller has nothing to write.
		labels = map[string]string{route.Label: route.Node(nodeName)}
	}
	claim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, Annotations: map[string]string{
			provisioner.AnnSelectedNode:        nodeName,
			provisioner.AnnStorageProvisioner:  driverName,
			provisioner.AnnBetaStorageProvider: driverName,
		}},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: ptr.To(class),
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
		},
	}
	claim, err := b.Client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, claim, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create claim %s/%s: %w", ns, name, err)
	}
	pv := b.volumeFor(claim, class, driverName, nodeName, zone)
	if pv, err = b.Client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create PV for %s/%s: %w", ns, name, err)
	}
	// What the PV controller writes when it binds.
	claim.Spec.VolumeName = pv.Name
	claim.Annotations["pv.kubernetes.io/bind-completed"] = "yes"
	claim.Annotations["pv.kubernetes.io/bound-by-controller"] = "yes"
	if claim, err = b.Client.CoreV1().PersistentVolumeClaims(ns).Update(ctx, claim, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("bind claim %s/%s: %w", ns, name, err)
	}
	// The Unused condition is what the controller manager's PVC protection
	// controller (PersistentVolumeClaimUnusedSinceTime) writes on a bound
	// claim no pod uses: written here, it has nothing to do, where it would
	// otherwise update every claim once, at its own client's pace.
	claim.Status = corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound, AccessModes: pv.Spec.AccessModes, Capacity: pv.Spec.Capacity,
		Conditions: []corev1.PersistentVolumeClaimCondition{{Type: corev1.PersistentVolumeClaimUnused, Status: corev1.ConditionTrue,
			LastTransitionTime: metav1.Now(), Reason: "NoPodsUsingPVC", Message: "No pods are currently referencing this PVC"}}}
	if _, err := b.Client.CoreV1().PersistentVolumeClaims(ns).UpdateStatus(ctx, claim, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("claim %s/%s status: %w", ns, name, err)
	}
	pv.Status = corev1.PersistentVolumeStatus{Phase: corev1.VolumeBound}
	if _, err := b.Client.CoreV1().PersistentVolumes().UpdateStatus(ctx, pv, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("PV %s status: %w", pv.Name, err)
	}
	return nil
}

// volumeFor is the PV a driver's provisioner creates for claim on the
// node: toposnap's through provisioner.BuildPV with the volume the driver
// would return; the foreign driver's the same with a host affinity.
func (b *Bench) volumeFor(claim *corev1.PersistentVolumeClaim, class, driverName, nodeName, zone string) *corev1.PersistentVolume {
	storageClass := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: class}, Provisioner: driverName,
		ReclaimPolicy: ptr.To(corev1.PersistentVolumeReclaimDelete)}
	volume := &csi.Volume{CapacityBytes: 1 << 30}
	if driverName == DriverName {
		location := topology.Location{Node: nodeName, Zone: zone, Region: cluster.SeedRegion}
		volume.VolumeId = store.MakeID(store.KindVolume, topology.ScopeNode, nodeName, provisioner.PVName(claim))
		volume.VolumeContext = map[string]string{"scope": string(topology.ScopeNode)}
		volume.AccessibleTopology = []*csi.Topology{{Segments: location.VolumeSegment(topology.ScopeNode)}}
	} else {
		volume.VolumeId = "foreign-" + string(claim.UID)
		volume.AccessibleTopology = []*csi.Topology{{Segments: map[string]string{corev1.LabelHostname: nodeName}}}
	}
	return provisioner.BuildPV(claim, storageClass, driverName, volume)
}

// parallel runs do(0..n-1) on createWorkers goroutines and returns the
// first error, after which no new index starts.
func parallel(ctx context.Context, n int, do func(context.Context, int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(createWorkers, n) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := do(ctx, i); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}
