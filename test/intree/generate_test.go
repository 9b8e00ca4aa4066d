package intree

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/toposnap/toposnap/internal/topology"
)

const (
	driver           = "csi.toposnap.io"
	otherDriver      = "other.csi.example.com"
	noProvisioner    = "kubernetes.io/no-provisioner"
	namespace        = "default"
	annBindCompleted = "pv.kubernetes.io/bind-completed"
	annSelectedNode  = "volume.kubernetes.io/selected-node"

	diskKey  = "example.com/disk"
	rackKey  = "example.com/rack"
	gpusKey  = "example.com/gpus"
	bogusKey = "example.com/absent"
)

// cluster is one generated state: what the scheduler and the extender see.
type cluster struct {
	Nodes   []*corev1.Node
	Classes []*storagev1.StorageClass
	Volumes []*corev1.PersistentVolume
	Claims  []*corev1.PersistentVolumeClaim
	Pod     *corev1.Pod
	// Traits name what the state exercises, to group disagreements by cause.
	Traits map[string]bool
}

func (c *cluster) nodeNames() []string {
	names := make([]string, 0, len(c.Nodes))
	for _, n := range c.Nodes {
		names = append(names, n.Name)
	}
	return names
}

// generator draws random cluster states. Everything it makes is valid API
// input; what it leaves out on purpose (CSIStorageCapacity, CSIDriver objects,
// data sources) is where toposnap adds to the in-tree rules.
type generator struct {
	rng *rand.Rand
	c   *cluster
	// sizes hands out PV sizes without repeats: FindMatchingVolume picks the
	// smallest fit and breaks ties by list order, which differs between the
	// informer cache and the extender's index and is not a semantic.
	sizes []int
	// prebound: claims that already have a PV pre-bound to them. With two,
	// FindMatchingVolume answers with whichever its cache lists first (map
	// order), which is not a semantic either, so a claim gets at most one.
	prebound map[string]bool
}

var zones = []string{"zone-a", "zone-b", "zone-c", "zone-d"}

func regionOf(zone string) string {
	if zone == "zone-a" || zone == "zone-b" {
		return "region-1"
	}
	return "region-2"
}

func newCluster(rng *rand.Rand) *cluster {
	g := &generator{rng: rng, c: &cluster{Traits: map[string]bool{}}, prebound: map[string]bool{}}
	g.sizes = rng.Perm(80)
	g.nodes(3 + rng.IntN(10))
	g.classes()
	g.volumes(6 + rng.IntN(25))
	g.pod(1 + rng.IntN(3))
	return g.c
}

func (g *generator) chance(percent int) bool { return g.rng.IntN(100) < percent }

func (g *generator) pick(values ...string) string { return values[g.rng.IntN(len(values))] }

func (g *generator) nodes(n int) {
	for i := range n {
		name := fmt.Sprintf("node-%02d", i)
		labels := map[string]string{topology.HostnameKey: name}
		if g.chance(90) {
			labels[topology.NodeKey] = name
		}
		if g.chance(90) {
			zone := g.pick(zones...)
			labels[topology.ZoneKey] = zone
			if g.chance(90) {
				labels[topology.RegionKey] = regionOf(zone)
			}
		}
		if g.chance(15) {
			// The legacy key, sometimes disagreeing: the extender groups
			// nodes by all four zone and region labels.
			labels[topology.LegacyZoneKey] = g.pick(zones...)
		}
		if g.chance(50) {
			labels[diskKey] = g.pick("ssd", "hdd", "nvme")
		}
		switch {
		case g.chance(5):
			labels[rackKey] = "rack-x" // not an integer: Gt and Lt never match it
		case g.chance(75):
			labels[rackKey] = strconv.Itoa(g.rng.IntN(10))
		}
		if g.chance(35) {
			labels[gpusKey] = strconv.Itoa(g.rng.IntN(5))
		}
		g.c.Nodes = append(g.c.Nodes, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}})
	}
}

// valuesOf draws 1-3 values for key, mostly ones some node carries.
func (g *generator) valuesOf(key string) []string {
	var seen []string
	for _, n := range g.c.Nodes {
		if v, ok := n.Labels[key]; ok {
			seen = append(seen, v)
		}
	}
	seen = append(seen, "nowhere")
	count := 1 + g.rng.IntN(3)
	values := map[string]bool{}
	for range count {
		values[seen[g.rng.IntN(len(seen))]] = true
	}
	out := make([]string, 0, len(values))
	for v := range values {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

var selectorKeys = []string{topology.HostnameKey, topology.NodeKey, topology.ZoneKey, topology.RegionKey, topology.LegacyZoneKey, diskKey, rackKey, gpusKey, bogusKey}

func (g *generator) requirement(first bool) corev1.NodeSelectorRequirement {
	if first && g.chance(60) {
		// The shape of real local and toposnap PVs, which the extender indexes.
		key := g.pick(topology.HostnameKey, topology.NodeKey, topology.ZoneKey)
		return corev1.NodeSelectorRequirement{Key: key, Operator: corev1.NodeSelectorOpIn, Values: g.valuesOf(key)}
	}
	key := selectorKeys[g.rng.IntN(len(selectorKeys))]
	switch g.rng.IntN(6) {
	case 0:
		return corev1.NodeSelectorRequirement{Key: key, Operator: corev1.NodeSelectorOpIn, Values: g.valuesOf(key)}
	case 1:
		return corev1.NodeSelectorRequirement{Key: key, Operator: corev1.NodeSelectorOpNotIn, Values: g.valuesOf(key)}
	case 2:
		return corev1.NodeSelectorRequirement{Key: key, Operator: corev1.NodeSelectorOpExists}
	case 3:
		return corev1.NodeSelectorRequirement{Key: key, Operator: corev1.NodeSelectorOpDoesNotExist}
	case 4:
		return corev1.NodeSelectorRequirement{Key: g.pick(rackKey, gpusKey, rackKey, topology.ZoneKey), Operator: corev1.NodeSelectorOpGt,
			Values: []string{strconv.Itoa(g.rng.IntN(10))}}
	default:
		return corev1.NodeSelectorRequirement{Key: g.pick(rackKey, gpusKey, rackKey, topology.ZoneKey), Operator: corev1.NodeSelectorOpLt,
			Values: []string{strconv.Itoa(g.rng.IntN(10))}}
	}
}

// affinity is a PV's node affinity: usually one term, sometimes several
// (ORed); each term has 1-3 expressions (ANDed); sometimes none at all.
func (g *generator) affinity() *corev1.VolumeNodeAffinity {
	if g.chance(8) {
		return nil
	}
	terms := 1
	if g.chance(30) {
		terms = 2 + g.rng.IntN(2)
	}
	selector := &corev1.NodeSelector{}
	for range terms {
		term := corev1.NodeSelectorTerm{}
		expressions := 1
		if g.chance(50) {
			expressions = 2 + g.rng.IntN(2)
		}
		for e := range expressions {
			term.MatchExpressions = append(term.MatchExpressions, g.requirement(e == 0))
		}
		selector.NodeSelectorTerms = append(selector.NodeSelectorTerms, term)
	}
	return &corev1.VolumeNodeAffinity{Required: selector}
}

func (g *generator) bindingMode() *storagev1.VolumeBindingMode {
	if g.chance(8) {
		return ptr.To(storagev1.VolumeBindingImmediate)
	}
	return ptr.To(storagev1.VolumeBindingWaitForFirstConsumer)
}

var topologyKeys = []string{topology.ZoneKey, topology.RegionKey, topology.LegacyZoneKey, topology.NodeKey, topology.HostnameKey, diskKey}

// allowedTopologies: none, or 1-3 terms (ORed) of 1-2 expressions on
// distinct keys (ANDed); rarely an empty term, which the API accepts.
func (g *generator) allowedTopologies() []corev1.TopologySelectorTerm {
	if g.chance(50) {
		return nil
	}
	var terms []corev1.TopologySelectorTerm
	for range 1 + g.rng.IntN(3) {
		term := corev1.TopologySelectorTerm{}
		keys := g.rng.Perm(len(topologyKeys))[:1+g.rng.IntN(2)]
		for _, k := range keys {
			key := topologyKeys[k]
			term.MatchLabelExpressions = append(term.MatchLabelExpressions,
				corev1.TopologySelectorLabelRequirement{Key: key, Values: g.valuesOf(key)})
		}
		terms = append(terms, term)
	}
	if g.chance(6) {
		terms = append(terms, corev1.TopologySelectorTerm{})
		g.c.Traits["class with an empty allowedTopologies term"] = true
	}
	return terms
}

// classNames are the classes claims and PVs draw from; "missing" is never created.
var classNames = []string{"local", "topo-node", "topo-zone", "other-dyn"}

func (g *generator) classes() {
	add := func(name, provisioner, scope string, topologies []corev1.TopologySelectorTerm) {
		c := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: provisioner,
			VolumeBindingMode: g.bindingMode(), AllowedTopologies: topologies}
		if scope != "" {
			c.Parameters = map[string]string{"scope": scope}
		}
		g.c.Classes = append(g.c.Classes, c)
	}
	var localTopologies []corev1.TopologySelectorTerm
	if g.chance(20) {
		localTopologies = g.allowedTopologies()
	}
	add("local", noProvisioner, "", localTopologies)
	add("topo-node", driver, "node", g.allowedTopologies())
	add("topo-zone", driver, "zone", g.allowedTopologies())
	add("other-dyn", otherDriver, "", g.allowedTopologies())
}

func (g *generator) class(name string) *storagev1.StorageClass {
	for _, c := range g.c.Classes {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func (g *generator) volumeClass() string {
	switch r := g.rng.IntN(100); {
	case r < 60:
		return "local"
	case r < 74:
		return "topo-node"
	case r < 84:
		return "topo-zone"
	case r < 94:
		return "other-dyn"
	case r < 97:
		return ""
	default:
		return "missing"
	}
}

func (g *generator) accessModes() []corev1.PersistentVolumeAccessMode {
	all := []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce, corev1.ReadOnlyMany, corev1.ReadWriteMany, corev1.ReadWriteOncePod}
	switch r := g.rng.IntN(100); {
	case r < 55:
		return all[:1]
	case r < 65:
		return all[1:2]
	case r < 75:
		return all[2:3]
	case r < 80:
		return all[3:4]
	default:
		var modes []corev1.PersistentVolumeAccessMode
		for _, m := range all {
			if g.chance(50) {
				modes = append(modes, m)
			}
		}
		if len(modes) == 0 {
			modes = all[:2]
		}
		return modes
	}
}

// claimAccessModes: claims usually ask for ReadWriteOnce.
func (g *generator) claimAccessModes() []corev1.PersistentVolumeAccessMode {
	if g.chance(50) {
		return []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	}
	return g.accessModes()
}

// volumeAccessModes: PVs usually offer ReadWriteOnce, often with more.
func (g *generator) volumeAccessModes() []corev1.PersistentVolumeAccessMode {
	if g.chance(50) {
		return []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	}
	modes := g.accessModes()
	if g.chance(60) && modes[0] != corev1.ReadWriteOnce {
		modes = append([]corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, modes...)
	}
	return modes
}

func (g *generator) volumeMode() *corev1.PersistentVolumeMode {
	switch r := g.rng.IntN(10); {
	case r < 4:
		return nil
	case r < 8:
		return ptr.To(corev1.PersistentVolumeFilesystem)
	default:
		return ptr.To(corev1.PersistentVolumeBlock)
	}
}

func (g *generator) nextSize() resource.Quantity {
	size := g.sizes[0] + 1
	g.sizes = g.sizes[1:]
	return resource.MustParse(fmt.Sprintf("%dGi", size))
}

// newVolume makes a PV of class with random size, modes and affinity.
func (g *generator) newVolume(name, className string) *corev1.PersistentVolume {
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PersistentVolumeSpec{
		StorageClassName: className, Capacity: corev1.ResourceList{corev1.ResourceStorage: g.nextSize()},
		AccessModes: g.volumeAccessModes(), VolumeMode: g.volumeMode(), NodeAffinity: g.affinity(),
	}, Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeAvailable}}
	switch className {
	case "topo-node", "topo-zone":
		pv.Spec.CSI = &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: name}
	case "other-dyn":
		pv.Spec.CSI = &corev1.CSIPersistentVolumeSource{Driver: otherDriver, VolumeHandle: name}
	default:
		pv.Spec.Local = &corev1.LocalVolumeSource{Path: "/mnt/" + name}
	}
	if g.chance(50) {
		pv.Labels = map[string]string{"tier": g.pick("gold", "silver")}
	}
	return pv
}

func claimName(i int) string { return fmt.Sprintf("claim-%d", i) }

func claimUID(name string) types.UID { return types.UID("uid-" + name) }

// volumes makes static PVs: free, bound to claims outside the pod, or
// pre-bound (claimRef) to one of the pod's claims.
func (g *generator) volumes(n int) {
	for i := range n {
		pv := g.newVolume(fmt.Sprintf("pv-%02d", i), g.volumeClass())
		switch r := g.rng.IntN(100); {
		case r < 70:
			pv.Status.Phase = corev1.PersistentVolumePhase(g.pick("Available", "Available", "Available", "Available", "Available", "Available",
				"Available", "Available", "Pending", "Released", "Failed"))
		case r < 96:
			other := fmt.Sprintf("other-%d", g.rng.IntN(5))
			pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: namespace, Name: other, UID: claimUID(other)}
			pv.Status.Phase = corev1.PersistentVolumePhase(g.pick("Bound", "Bound", "Bound", "Released"))
		default:
			target := claimName(g.rng.IntN(3))
			if g.prebound[target] {
				pv.Status.Phase = corev1.VolumeAvailable
				break
			}
			g.prebound[target] = true
			ref := &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: namespace, Name: target}
			switch {
			case g.chance(40):
				ref.UID = claimUID(target)
			case g.chance(15):
				ref.UID = "uid-of-an-older-claim"
			}
			pv.Spec.ClaimRef = ref
			pv.Status.Phase = corev1.PersistentVolumePhase(g.pick("Available", "Available", "Available", "Pending", "Bound"))
			g.c.Traits["PV pre-bound (claimRef) to a pod's claim"] = true
		}
		if g.chance(3) {
			pv.DeletionTimestamp = ptr.To(metav1.Now())
			pv.Finalizers = []string{"kubernetes.io/pv-protection"}
		}
		g.c.Volumes = append(g.c.Volumes, pv)
	}
}

func (g *generator) newClaim(name, className string) *corev1.PersistentVolumeClaim {
	claim := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, UID: claimUID(name)},
		Spec: corev1.PersistentVolumeClaimSpec{AccessModes: g.claimAccessModes(), VolumeMode: g.volumeMode(),
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceStorage: resource.MustParse(fmt.Sprintf("%dGi", 1+g.rng.IntN(30)))}}},
		Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimPending}}
	if className != "-" {
		claim.Spec.StorageClassName = ptr.To(className)
	}
	if g.chance(10) {
		claim.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"tier": g.pick("gold", "silver")}}
	}
	return claim
}

// bind makes claim bound to a new PV, as the PV controller leaves them.
func (g *generator) bind(claim *corev1.PersistentVolumeClaim, className string) *corev1.PersistentVolume {
	pv := g.newVolume("pv-of-"+claim.Name, className)
	if g.chance(60) {
		// Where provisioned or local volumes usually are: a node or a zone.
		key := g.pick(topology.NodeKey, topology.HostnameKey, topology.ZoneKey)
		pv.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: key, Operator: corev1.NodeSelectorOpIn, Values: g.valuesOf(key)}}}}}}
	}
	pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: claim.Namespace, Name: claim.Name, UID: claim.UID}
	pv.Status.Phase = corev1.VolumeBound
	claim.Spec.VolumeName = pv.Name
	claim.Annotations = map[string]string{annBindCompleted: "yes"}
	claim.Status.Phase = corev1.ClaimBound
	return pv
}

func (g *generator) claimClass() string {
	switch r := g.rng.IntN(100); {
	case r < 40:
		return "local"
	case r < 62:
		return "topo-node"
	case r < 80:
		return "topo-zone"
	default:
		return "other-dyn"
	}
}

// pod makes a pod with n claims of random kinds.
func (g *generator) pod(n int) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: namespace, UID: "uid-app"}}
	unboundByClass := map[string]int{}
	for i := range n {
		name := claimName(i)
		pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: fmt.Sprintf("vol-%d", i), VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: name}}})
		className := g.claimClass()
		claim := g.newClaim(name, className)
		switch r := g.rng.IntN(100); {
		case r < 35:
			pv := g.bind(claim, g.volumeClass())
			if g.chance(4) {
				g.c.Traits["bound claim whose PV is missing"] = true
			} else {
				g.c.Volumes = append(g.c.Volumes, pv)
			}
		case r < 88:
			unboundByClass[className]++
			if c := g.class(className); *c.VolumeBindingMode == storagev1.VolumeBindingImmediate {
				g.c.Traits["unbound claim of an Immediate class"] = true
			}
			if g.chance(15) && !g.prebound[name] {
				// A PV the user set aside for this claim, of its class,
				// maybe where the node is not.
				g.prebound[name] = true
				pv := g.newVolume("pv-reserved-for-"+name, className)
				pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: namespace, Name: name}
				g.c.Volumes = append(g.c.Volumes, pv)
				g.c.Traits["PV pre-bound (claimRef) to a pod's claim"] = true
			}
		case r < 91:
			// Pre-bound by the user: spec.volumeName set, not bound yet.
			claim.Spec.VolumeName = fmt.Sprintf("pv-%02d", g.rng.IntN(17))
			if g.chance(50) {
				pv := g.newVolume("pv-for-"+name, className)
				pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: namespace, Name: name, UID: claim.UID}
				g.c.Volumes = append(g.c.Volumes, pv)
				claim.Spec.VolumeName = pv.Name
			}
			g.c.Traits["pre-bound claim (spec.volumeName set, not bind-completed)"] = true
		case r < 95:
			unboundByClass[className]++
			claim.Annotations = map[string]string{annSelectedNode: g.pick(g.c.nodeNames()...)}
			if g.chance(20) {
				claim.Annotations[annSelectedNode] = "gone-node"
			}
			g.c.Traits["unbound claim with selected-node annotation"] = true
		case r < 97:
			claim.Spec.StorageClassName = ptr.To(g.pick("", "missing"))
			g.c.Traits["unbound claim without an existing class"] = true
		case r < 98:
			pv := g.bind(claim, g.volumeClass())
			claim.Status.Phase = corev1.ClaimLost
			if g.chance(50) {
				g.c.Volumes = append(g.c.Volumes, pv)
			}
			g.c.Traits["claim in phase Lost"] = true
		case r < 99:
			if g.chance(50) {
				g.c.Volumes = append(g.c.Volumes, g.bind(claim, g.volumeClass()))
			} else {
				unboundByClass[className]++
			}
			claim.DeletionTimestamp = ptr.To(metav1.Now())
			claim.Finalizers = []string{"kubernetes.io/pvc-protection"}
			g.c.Traits["claim being deleted"] = true
		default:
			g.c.Traits["pod references a missing claim"] = true
			continue
		}
		g.c.Claims = append(g.c.Claims, claim)
	}
	for _, count := range unboundByClass {
		if count > 1 {
			g.c.Traits["several unbound claims of one class"] = true
		}
	}
	g.c.Pod = pod
}
