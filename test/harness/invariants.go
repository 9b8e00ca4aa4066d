package harness

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// DriverName is the CSI driver whose objects the invariants speak about.
const DriverName = "csi.toposnap.io"

// What the invariants say, each checked by Checker against the API and
// every driver's ListVolumes/ListSnapshots:
//
//   - No PV of the driver without its backend volume. A PV bound to a live
//     claim must always have it (deleting such a PV must not wipe the data);
//     a PV whose claim is gone, or that is Released, Failed or deleted, is
//     being reclaimed and is only pending.
//   - No backend volume without a PV, once it has stayed unreferenced for
//     CheckOptions.Grace: a volume is listed as soon as CreateVolume
//     finishes, a moment before the provisioner creates its PV. Volumes of
//     Retain PVs the checker has seen are exempt once their PV is deleted:
//     they are the operator's.
//   - No VolumeSnapshotContent of the driver with a snapshot handle but no
//     backend snapshot (unless it is being deleted), and no backend snapshot
//     without a content holding its handle after Grace (Retain contents the
//     checker has seen apart).
//   - No finalizer left on a deleted object: a PV, claim, VolumeSnapshot or
//     content whose deletionTimestamp is older than CheckOptions.Linger is a
//     violation, unless something still legitimately holds it: a PV bound to
//     a live claim, a claim used by a running pod, a snapshot being restored
//     by a claim not bound yet, a content whose snapshot still exists.
//   - No Delete-policy content outliving its VolumeSnapshot (gone, or
//     recreated with another uid) without being deleted, after Grace.
//   - No VolumeSnapshot bound to a content whose volumeSnapshotRef names
//     another snapshot, or to a content that no longer exists (unless the
//     snapshot is being deleted), and no claim bound to a PV whose claimRef
//     names another claim.
//   - Data: a volume written through Env.WriteData holds what was written,
//     and a claim restored from a snapshot the Ledger saw cut holds its
//     source's data at cut time.

// CheckOptions bound the transitions the invariants allow.
type CheckOptions struct {
	// Grace is how long a backend volume or snapshot may stay unreferenced
	// before it is a leak; zero means DefaultGrace.
	Grace time.Duration
	// Linger is how long a deleted object may keep its finalizers when
	// nothing holds it; zero means DefaultLinger.
	Linger time.Duration
}

// Defaults of CheckOptions: an order of magnitude above what the transitions
// take here, well below what a test waits for an outcome.
const (
	DefaultGrace  = 20 * time.Second
	DefaultLinger = 60 * time.Second
)

// Report is the outcome of one check.
type Report struct {
	// Violations name the object and the broken invariant, sorted.
	Violations []string
	// Pending are states that are allowed only for a while (an unreferenced
	// backend object within Grace, a PV being reclaimed, a deleted object
	// within Linger). Settle waits for them to resolve.
	Pending []string
	// Waited is how long Settle waited, and WaitedFor what was pending at
	// the last observation before the end: why the wait took that long.
	Waited    time.Duration
	WaitedFor []string
}

// Clean reports whether nothing is wrong and nothing is still resolving.
func (r Report) Clean() bool { return len(r.Violations) == 0 && len(r.Pending) == 0 }

// String lists the violations one per line.
func (r Report) String() string {
	if len(r.Violations) == 0 {
		return "no violations"
	}
	return strings.Join(r.Violations, "\n")
}

// World is one observation of what the invariants speak about.
type World struct {
	At        time.Time
	PVs       []corev1.PersistentVolume
	Claims    []corev1.PersistentVolumeClaim
	Pods      []corev1.Pod
	Snapshots []snapv1.VolumeSnapshot
	Contents  []snapv1.VolumeSnapshotContent
	// Volumes and BackendSnapshots map each ID the drivers list to the
	// workers listing it (a zone volume is listed by every node of its zone).
	Volumes          map[string][]string
	BackendSnapshots map[string][]string
}

// Checker checks the invariants of an Env. It remembers, between checks,
// since when each backend object has been unreferenced and which volumes and
// snapshots were retained, so use one Checker for a whole test or campaign.
type Checker struct {
	env  *Env
	opts CheckOptions

	mu                sync.Mutex
	unreferencedSince map[string]time.Time // "volume ID" / "snapshot ID"
	retained          map[string]bool      // same keys
}

// NewChecker returns a checker of e's invariants.
func (e *Env) NewChecker(opts CheckOptions) *Checker {
	if opts.Grace == 0 {
		opts.Grace = DefaultGrace
	}
	if opts.Linger == 0 {
		opts.Linger = DefaultLinger
	}
	return &Checker{env: e, opts: opts, unreferencedSince: map[string]time.Time{}, retained: map[string]bool{}}
}

// Check observes the cluster once and reports what breaks the invariants,
// hashing the data of every volume the Ledger knows about.
func (c *Checker) Check(ctx context.Context) (Report, error) {
	world, err := c.Observe(ctx)
	if err != nil {
		return Report{}, err
	}
	report := c.Evaluate(world)
	data, err := c.checkData(ctx, world)
	if err != nil {
		return report, err
	}
	report.Violations = sortedUnique(append(report.Violations, data...))
	return report, nil
}

// Settle waits up to bound for the cluster to satisfy every invariant with
// nothing pending, then hashes the data. At the bound, whatever is still
// pending is a violation, and so is failing to observe the cluster at all.
// Violations may resolve before the bound (a PV created late after an API
// outage), so Settle keeps looking until the report is clean or time is up.
func (c *Checker) Settle(ctx context.Context, bound time.Duration) Report {
	begin := time.Now()
	deadline := begin.Add(bound)
	var last Report
	var waitedFor []string
	var lastWorld *World
	var lastErr error
	for {
		world, err := c.Observe(ctx)
		if err == nil {
			lastWorld, lastErr = world, nil
			last = c.Evaluate(world)
			if last.Clean() {
				data, err := c.checkData(ctx, world)
				if err == nil {
					last.Violations = data
					last.Waited, last.WaitedFor = time.Since(begin), waitedFor
					return last
				}
				lastErr = err
			}
			waitedFor = append(slices.Clone(last.Violations), last.Pending...)
		} else {
			lastErr = err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	final := Report{Violations: slices.Clone(last.Violations), Waited: time.Since(begin), WaitedFor: waitedFor}
	for _, pending := range last.Pending {
		final.Violations = append(final.Violations, fmt.Sprintf("still pending after %v: %s", bound, pending))
	}
	if lastErr != nil {
		final.Violations = append(final.Violations, fmt.Sprintf("could not check the cluster within %v: %v", bound, lastErr))
	}
	if lastWorld != nil && lastErr == nil {
		data, err := c.checkData(context.WithoutCancel(ctx), lastWorld)
		if err != nil {
			data = append(data, fmt.Sprintf("could not hash data: %v", err))
		}
		final.Violations = append(final.Violations, data...)
	}
	final.Violations = sortedUnique(final.Violations)
	return final
}

// Observe lists the API objects and every worker's backend volumes and
// snapshots. The API is listed first, so that a volume created in between
// looks unreferenced (pending) rather than a PV looking volume-less.
func (c *Checker) Observe(ctx context.Context) (*World, error) {
	client, snaps := c.env.Cluster.Client, c.env.Snaps
	world := &World{At: time.Now(), Volumes: map[string][]string{}, BackendSnapshots: map[string][]string{}}
	pvs, err := client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list PVs: %w", err)
	}
	claims, err := client.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list claims: %w", err)
	}
	pods, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	snapshots, err := snaps.SnapshotV1().VolumeSnapshots("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list VolumeSnapshots: %w", err)
	}
	contents, err := snaps.SnapshotV1().VolumeSnapshotContents().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list VolumeSnapshotContents: %w", err)
	}
	world.PVs, world.Claims, world.Pods = pvs.Items, claims.Items, pods.Items
	world.Snapshots, world.Contents = snapshots.Items, contents.Items
	for _, node := range c.env.nodeList() {
		if err := listBackend(ctx, node, world); err != nil {
			return nil, err
		}
	}
	return world, nil
}

// listBackend adds what node's driver lists to world, page by page.
func listBackend(ctx context.Context, node *Node, world *World) error {
	for token := ""; ; {
		resp, err := node.Controller.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: token})
		if err != nil {
			return fmt.Errorf("ListVolumes on %s: %w", node.Name, err)
		}
		for _, entry := range resp.GetEntries() {
			id := entry.GetVolume().GetVolumeId()
			world.Volumes[id] = append(world.Volumes[id], node.Name)
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
	}
	for token := ""; ; {
		resp, err := node.Controller.ListSnapshots(ctx, &csi.ListSnapshotsRequest{StartingToken: token})
		if err != nil {
			return fmt.Errorf("ListSnapshots on %s: %w", node.Name, err)
		}
		for _, entry := range resp.GetEntries() {
			id := entry.GetSnapshot().GetSnapshotId()
			world.BackendSnapshots[id] = append(world.BackendSnapshots[id], node.Name)
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
	}
	return nil
}

// Evaluate applies the invariants, data apart, to one observation.
func (c *Checker) Evaluate(w *World) Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	var r Report
	idx := indexWorld(w)
	c.checkVolumes(w, idx, &r)
	c.checkSnapshots(w, idx, &r)
	c.checkDeleted(w, idx, &r)
	c.checkOrphanedContents(w, idx, &r)
	checkBindings(w, idx, &r)
	r.Violations, r.Pending = sortedUnique(r.Violations), sortedUnique(r.Pending)
	return r
}

// worldIndex finds objects of a World by key.
type worldIndex struct {
	claims    map[string]*corev1.PersistentVolumeClaim // namespace/name
	pvs       map[string]*corev1.PersistentVolume
	snapshots map[string]*snapv1.VolumeSnapshot // namespace/name
	contents  map[string]*snapv1.VolumeSnapshotContent
	// claimsInUse are namespace/name of claims a pod that has not ended uses.
	claimsInUse map[string]bool
	// restoring are namespace/name of snapshots an unbound claim restores.
	restoring map[string]bool
}

func indexWorld(w *World) worldIndex {
	idx := worldIndex{claims: map[string]*corev1.PersistentVolumeClaim{}, pvs: map[string]*corev1.PersistentVolume{},
		snapshots: map[string]*snapv1.VolumeSnapshot{}, contents: map[string]*snapv1.VolumeSnapshotContent{},
		claimsInUse: map[string]bool{}, restoring: map[string]bool{}}
	for i := range w.Claims {
		claim := &w.Claims[i]
		idx.claims[claim.Namespace+"/"+claim.Name] = claim
		if snapshot, ok := restoredSnapshot(claim); ok && claim.Status.Phase != corev1.ClaimBound {
			idx.restoring[claim.Namespace+"/"+snapshot] = true
		}
	}
	for i := range w.PVs {
		idx.pvs[w.PVs[i].Name] = &w.PVs[i]
	}
	for i := range w.Snapshots {
		idx.snapshots[w.Snapshots[i].Namespace+"/"+w.Snapshots[i].Name] = &w.Snapshots[i]
	}
	for i := range w.Contents {
		idx.contents[w.Contents[i].Name] = &w.Contents[i]
	}
	for _, pod := range w.Pods {
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		for _, volume := range pod.Spec.Volumes {
			if volume.PersistentVolumeClaim != nil {
				idx.claimsInUse[pod.Namespace+"/"+volume.PersistentVolumeClaim.ClaimName] = true
			}
		}
	}
	return idx
}

// restoredSnapshot names the VolumeSnapshot a claim restores, if any.
func restoredSnapshot(claim *corev1.PersistentVolumeClaim) (string, bool) {
	if ref := claim.Spec.DataSourceRef; ref != nil && ref.Kind == "VolumeSnapshot" && ptr.Deref(ref.APIGroup, "") == snapv1.GroupName {
		if ref.Namespace == nil || *ref.Namespace == "" || *ref.Namespace == claim.Namespace {
			return ref.Name, true
		}
	}
	if ref := claim.Spec.DataSource; ref != nil && ref.Kind == "VolumeSnapshot" && ptr.Deref(ref.APIGroup, "") == snapv1.GroupName {
		return ref.Name, true
	}
	return "", false
}

// boundClaim returns the live claim a PV is bound to: the claim its
// claimRef names, with the same UID, whose volumeName is the PV.
func (idx worldIndex) boundClaim(pv *corev1.PersistentVolume) *corev1.PersistentVolumeClaim {
	ref := pv.Spec.ClaimRef
	if ref == nil {
		return nil
	}
	claim := idx.claims[ref.Namespace+"/"+ref.Name]
	if claim == nil || (ref.UID != "" && claim.UID != ref.UID) || claim.Spec.VolumeName != pv.Name {
		return nil
	}
	return claim
}

func isOurPV(pv *corev1.PersistentVolume) bool {
	return pv.Spec.CSI != nil && pv.Spec.CSI.Driver == DriverName
}

func (c *Checker) checkVolumes(w *World, idx worldIndex, r *Report) {
	referenced := map[string]bool{}
	for i := range w.PVs {
		pv := &w.PVs[i]
		if !isOurPV(pv) {
			continue
		}
		handle := pv.Spec.CSI.VolumeHandle
		referenced[handle] = true
		if pv.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimRetain {
			c.retained["volume "+handle] = true
		}
		if _, ok := w.Volumes[handle]; ok {
			continue
		}
		claim := idx.boundClaim(pv)
		switch {
		case claim != nil:
			r.Violations = append(r.Violations, fmt.Sprintf("PV %s is bound to claim %s/%s (claim phase %s, PV phase %s%s) but its backend volume %s is gone",
				pv.Name, claim.Namespace, claim.Name, claim.Status.Phase, pv.Status.Phase, deletedSuffix(pv.DeletionTimestamp), handle))
		case pv.Status.Phase == corev1.VolumeReleased || pv.Status.Phase == corev1.VolumeFailed || pv.DeletionTimestamp != nil || pv.Spec.ClaimRef != nil:
			r.Pending = append(r.Pending, fmt.Sprintf("PV %s (phase %s%s) has no backend volume %s: being reclaimed",
				pv.Name, pv.Status.Phase, deletedSuffix(pv.DeletionTimestamp), handle))
		default:
			r.Violations = append(r.Violations, fmt.Sprintf("PV %s (phase %s, unclaimed) has no backend volume %s", pv.Name, pv.Status.Phase, handle))
		}
	}
	for id, nodes := range w.Volumes {
		if referenced[id] {
			continue
		}
		c.unreferenced(w.At, "volume "+id, fmt.Sprintf("backend volume %s on %s has no PV", id, strings.Join(nodes, ",")), r)
	}
	c.forgetReferenced("volume ", w.Volumes, referenced)
}

func (c *Checker) checkSnapshots(w *World, idx worldIndex, r *Report) {
	referenced := map[string]bool{}
	for i := range w.Contents {
		content := &w.Contents[i]
		if content.Spec.Driver != DriverName {
			continue
		}
		handle := contentHandle(content)
		if handle == "" {
			continue // not cut yet, or failing: the snapshot's status says so
		}
		referenced[handle] = true
		if content.Spec.DeletionPolicy == snapv1.VolumeSnapshotContentRetain {
			c.retained["snapshot "+handle] = true
		}
		if _, ok := w.BackendSnapshots[handle]; ok {
			continue
		}
		ref := content.Spec.VolumeSnapshotRef
		if content.DeletionTimestamp != nil {
			r.Pending = append(r.Pending, fmt.Sprintf("VolumeSnapshotContent %s (snapshot %s/%s, deleted) has no backend snapshot %s: being deleted",
				content.Name, ref.Namespace, ref.Name, handle))
			continue
		}
		r.Violations = append(r.Violations, fmt.Sprintf("VolumeSnapshotContent %s (snapshot %s/%s) has no backend snapshot %s",
			content.Name, ref.Namespace, ref.Name, handle))
	}
	for id, nodes := range w.BackendSnapshots {
		if referenced[id] {
			continue
		}
		c.unreferenced(w.At, "snapshot "+id, fmt.Sprintf("backend snapshot %s on %s has no VolumeSnapshotContent", id, strings.Join(nodes, ",")), r)
	}
	c.forgetReferenced("snapshot ", w.BackendSnapshots, referenced)
}

// contentHandle is the backend snapshot a content stands for: the one it
// cut, or the one it imports.
func contentHandle(content *snapv1.VolumeSnapshotContent) string {
	if content.Status != nil && ptr.Deref(content.Status.SnapshotHandle, "") != "" {
		return *content.Status.SnapshotHandle
	}
	return ptr.Deref(content.Spec.Source.SnapshotHandle, "")
}

// unreferenced files a backend object no API object references: pending
// within Grace of when it was first seen so, then a violation. Retained
// objects are the operator's.
func (c *Checker) unreferenced(now time.Time, key, what string, r *Report) {
	if c.retained[key] {
		return
	}
	since, ok := c.unreferencedSince[key]
	if !ok {
		since = now
		c.unreferencedSince[key] = now
	}
	if age := now.Sub(since); age >= c.opts.Grace {
		r.Violations = append(r.Violations, fmt.Sprintf("%s (unreferenced for %v)", what, age.Round(time.Second)))
		return
	}
	r.Pending = append(r.Pending, what+" (yet)")
}

// forgetReferenced drops the first-seen times of backend objects that are
// referenced again or gone, so that a later orphaning starts a new grace.
func (c *Checker) forgetReferenced(prefix string, listed map[string][]string, referenced map[string]bool) {
	for key := range c.unreferencedSince {
		id, ok := strings.CutPrefix(key, prefix)
		if !ok {
			continue
		}
		if _, still := listed[id]; !still || referenced[id] {
			delete(c.unreferencedSince, key)
		}
	}
}

// checkDeleted finds deleted objects that keep their finalizers past Linger
// with nothing legitimately holding them.
func (c *Checker) checkDeleted(w *World, idx worldIndex, r *Report) {
	lingering := func(kind, name string, meta metav1.ObjectMeta, heldBy string) {
		if meta.DeletionTimestamp == nil || heldBy != "" {
			return
		}
		age := w.At.Sub(meta.DeletionTimestamp.Time)
		what := fmt.Sprintf("%s %s deleted %v ago still has finalizers %v", kind, name, age.Round(time.Second), meta.Finalizers)
		if age >= c.opts.Linger {
			r.Violations = append(r.Violations, what)
		} else {
			r.Pending = append(r.Pending, what)
		}
	}
	for i := range w.PVs {
		pv := &w.PVs[i]
		held := ""
		if claim := idx.boundClaim(pv); claim != nil {
			held = "bound claim"
		}
		lingering("PV", pv.Name, pv.ObjectMeta, held)
	}
	for i := range w.Claims {
		claim := &w.Claims[i]
		held := ""
		if idx.claimsInUse[claim.Namespace+"/"+claim.Name] {
			held = "pod"
		}
		lingering("claim", claim.Namespace+"/"+claim.Name, claim.ObjectMeta, held)
	}
	for i := range w.Snapshots {
		snapshot := &w.Snapshots[i]
		key := snapshot.Namespace + "/" + snapshot.Name
		held := ""
		if idx.restoring[key] {
			held = "restore"
		}
		lingering("VolumeSnapshot", key, snapshot.ObjectMeta, held)
	}
	for i := range w.Contents {
		content := &w.Contents[i]
		ref := content.Spec.VolumeSnapshotRef
		held := ""
		if snapshot := idx.snapshots[ref.Namespace+"/"+ref.Name]; snapshot != nil && snapshot.DeletionTimestamp == nil &&
			(ref.UID == "" || ref.UID == snapshot.UID) {
			held = "snapshot"
		}
		lingering("VolumeSnapshotContent", content.Name, content.ObjectMeta, held)
	}
}

// checkOrphanedContents finds Delete-policy contents whose snapshot is gone
// (by namespace, name and uid) but that nobody deleted: their backend
// snapshot leaks with them. A pre-provisioned content not bound yet (no
// uid in its volumeSnapshotRef) waits for its snapshot and is exempt.
func (c *Checker) checkOrphanedContents(w *World, idx worldIndex, r *Report) {
	orphaned := map[string]bool{}
	for i := range w.Contents {
		content := &w.Contents[i]
		ref := content.Spec.VolumeSnapshotRef
		if content.Spec.Driver != DriverName || content.DeletionTimestamp != nil || ref.UID == "" ||
			content.Spec.DeletionPolicy != snapv1.VolumeSnapshotContentDelete {
			continue
		}
		if snapshot := idx.snapshots[ref.Namespace+"/"+ref.Name]; snapshot != nil && snapshot.UID == ref.UID {
			continue
		}
		key := "content " + content.Name
		orphaned[key] = true
		c.unreferenced(w.At, key, fmt.Sprintf("VolumeSnapshotContent %s (deletionPolicy Delete, finalizers %v) outlives its VolumeSnapshot %s/%s (uid %s) and is not deleted",
			content.Name, content.Finalizers, ref.Namespace, ref.Name, ref.UID), r)
	}
	for key := range c.unreferencedSince {
		if strings.HasPrefix(key, "content ") && !orphaned[key] {
			delete(c.unreferencedSince, key)
		}
	}
}

// checkBindings: a snapshot or claim may only be bound to what was made or
// reserved for it.
func checkBindings(w *World, idx worldIndex, r *Report) {
	for i := range w.Snapshots {
		snapshot := &w.Snapshots[i]
		if snapshot.Status == nil || ptr.Deref(snapshot.Status.BoundVolumeSnapshotContentName, "") == "" {
			continue
		}
		content := idx.contents[*snapshot.Status.BoundVolumeSnapshotContentName]
		if content == nil {
			if snapshot.DeletionTimestamp == nil {
				r.Violations = append(r.Violations, fmt.Sprintf("VolumeSnapshot %s/%s is bound to VolumeSnapshotContent %s, which does not exist",
					snapshot.Namespace, snapshot.Name, *snapshot.Status.BoundVolumeSnapshotContentName))
			}
			continue
		}
		ref := content.Spec.VolumeSnapshotRef
		if ref.Namespace != snapshot.Namespace || ref.Name != snapshot.Name || (ref.UID != "" && ref.UID != snapshot.UID) {
			r.Violations = append(r.Violations, fmt.Sprintf("VolumeSnapshot %s/%s is bound to VolumeSnapshotContent %s, whose volumeSnapshotRef is %s/%s (uid %s)",
				snapshot.Namespace, snapshot.Name, content.Name, ref.Namespace, ref.Name, ref.UID))
		}
	}
	for i := range w.Claims {
		claim := &w.Claims[i]
		if claim.Spec.VolumeName == "" || claim.Status.Phase != corev1.ClaimBound {
			continue
		}
		pv := idx.pvs[claim.Spec.VolumeName]
		if pv == nil || !isOurPV(pv) {
			continue
		}
		ref := pv.Spec.ClaimRef
		if ref == nil || ref.Namespace != claim.Namespace || ref.Name != claim.Name || (ref.UID != "" && ref.UID != claim.UID) {
			r.Violations = append(r.Violations, fmt.Sprintf("claim %s/%s is bound to PV %s, whose claimRef is %s",
				claim.Namespace, claim.Name, pv.Name, describeRef(ref)))
		}
	}
}

func describeRef(ref *corev1.ObjectReference) string {
	if ref == nil {
		return "empty"
	}
	return fmt.Sprintf("%s/%s (uid %s)", ref.Namespace, ref.Name, ref.UID)
}

func deletedSuffix(deleted *metav1.Time) string {
	if deleted == nil {
		return ""
	}
	return ", deleted"
}

// dataExpectation is what one PV's volume must hold.
type dataExpectation struct {
	pv, volume, node, hash, why string
}

// dataExpectations lists the volumes whose content the Ledger knows: those
// written through WriteData, else those restored from a snapshot whose cut
// it recorded. Volumes that are gone are left to the other invariants.
func dataExpectations(w *World, idx worldIndex, ledger *Ledger) []dataExpectation {
	var out []dataExpectation
	for i := range w.PVs {
		pv := &w.PVs[i]
		if !isOurPV(pv) {
			continue
		}
		nodes := w.Volumes[pv.Spec.CSI.VolumeHandle]
		if len(nodes) == 0 {
			continue
		}
		expect := dataExpectation{pv: pv.Name, volume: pv.Spec.CSI.VolumeHandle, node: nodes[0]}
		if hash, ok := ledger.VolumeHash(expect.volume); ok {
			expect.hash, expect.why = hash, "what was written"
			out = append(out, expect)
			continue
		}
		claim := idx.boundClaim(pv)
		if claim == nil {
			continue
		}
		if snapshot, ok := restoredSnapshot(claim); ok {
			if hash, ok := ledger.SnapshotHash(claim.Namespace, snapshot); ok {
				expect.hash = hash
				expect.why = fmt.Sprintf("its source's data when snapshot %s/%s was cut (restored by claim %s/%s)", claim.Namespace, snapshot, claim.Namespace, claim.Name)
				out = append(out, expect)
			}
		}
	}
	return out
}

// checkData hashes every volume with an expectation.
func (c *Checker) checkData(ctx context.Context, w *World) ([]string, error) {
	var violations []string
	for _, expect := range dataExpectations(w, indexWorld(w), c.env.Data) {
		got, err := c.env.HashVolume(ctx, expect.node, expect.volume)
		if err != nil {
			return nil, fmt.Errorf("PV %s: %w", expect.pv, err)
		}
		if got != expect.hash {
			violations = append(violations, fmt.Sprintf("PV %s (volume %s): data hash %.12s, want %.12s, %s",
				expect.pv, expect.volume, got, expect.hash, expect.why))
		}
	}
	return violations, nil
}

func sortedUnique(lines []string) []string {
	sort.Strings(lines)
	return slices.Compact(lines)
}
