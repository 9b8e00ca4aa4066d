package extender

import (
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/toposnap/toposnap/internal/topology"
)

// managed is a managedFields entry of manager that owns the given
// annotations, last changed at.
func managed(manager string, at time.Time, annotations ...string) metav1.ManagedFieldsEntry {
	fields := `{"f:metadata":{"f:annotations":{`
	for i, a := range annotations {
		if i > 0 {
			fields += ","
		}
		fields += `"f:` + a + `":{}`
	}
	fields += `}}}`
	return metav1.ManagedFieldsEntry{Manager: manager, Operation: metav1.ManagedFieldsOperationUpdate,
		Time: &metav1.Time{Time: at}, FieldsType: "FieldsV1", FieldsV1: metav1.NewFieldsV1(fields)}
}

func TestPromisedAtIsWhenSelectedNodeWasLastSet(t *testing.T) {
	scheduled := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	later := scheduled.Add(time.Hour)
	for _, tt := range []struct {
		name    string
		entries []metav1.ManagedFieldsEntry
		want    time.Time // zero: unknown
	}{
		{"set by the scheduler", []metav1.ManagedFieldsEntry{managed("kube-scheduler", scheduled, annSelectedNode)}, scheduled},
		{"another manager's later change of other fields does not renew it",
			[]metav1.ManagedFieldsEntry{managed("kube-scheduler", scheduled, annSelectedNode), managed("toposnap-provisioner", later, "other")}, scheduled},
		{"rewritten by another manager", []metav1.ManagedFieldsEntry{managed("kube-scheduler", scheduled, "x"), managed("tenant", later, annSelectedNode, "y")}, later},
		{"a key that merely contains the name", []metav1.ManagedFieldsEntry{managed("tenant", later, annSelectedNode+"-not")}, time.Time{}},
		{"no managed fields", nil, time.Time{}},
		{"fields not parsable", []metav1.ManagedFieldsEntry{{Manager: "x", Time: &metav1.Time{Time: later}, FieldsType: "FieldsV1", FieldsV1: metav1.NewFieldsV1(`{`)}}, time.Time{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := claim("c", "topo-node", "1Gi")
			c.Annotations = map[string]string{annSelectedNode: "node1"}
			c.ManagedFields = tt.entries
			got := promisedAt(c)
			if !got.Equal(tt.want) {
				t.Fatalf("promisedAt = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPromiseHoldsCapacityOnlyWhileYoung(t *testing.T) {
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	const ttl = 5 * time.Minute
	for _, tt := range []struct {
		name string
		at   time.Time
		ttl  time.Duration
		want bool
	}{
		{"just made", now.Add(-time.Second), ttl, true},
		{"at the limit", now.Add(-ttl), ttl, true},
		{"expired", now.Add(-ttl - time.Second), ttl, false},
		{"unknown age holds", time.Time{}, ttl, true},
		{"no expiry configured", now.Add(-24 * time.Hour), 0, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := claim("c", "topo-node", "1Gi")
			c.Annotations = map[string]string{annSelectedNode: "node1"}
			if !tt.at.IsZero() {
				c.Annotations[annPromisedAt] = tt.at.Format(time.RFC3339)
			}
			if got := promiseHolds(c, now, tt.ttl); got != tt.want {
				t.Fatalf("promiseHolds = %v, want %v", got, tt.want)
			}
		})
	}
	deleted := claim("c", "topo-node", "1Gi")
	deleted.Annotations = map[string]string{annSelectedNode: "node1", annPromisedAt: now.Format(time.RFC3339)}
	deleted.DeletionTimestamp = &metav1.Time{Time: now}
	deleted.Finalizers = []string{"tenant.example.com/hold"}
	if promiseHolds(deleted, now, ttl) {
		t.Fatal("a deleted claim whose volume is not being made holds its node's capacity")
	}
	deleted.Finalizers = append(deleted.Finalizers, finalizerProvisioning)
	if !promiseHolds(deleted, now, ttl) {
		t.Fatal("a deleted claim whose volume is being made does not hold its node's capacity")
	}
}

// A tenant writes volume.kubernetes.io/selected-node itself on a claim
// no pool can ever make (or one that failed finally): the promise held
// the node's capacity for ever and the extender refused every new volume
// there. It now holds only for the promise TTL, measured from when the
// API server recorded the annotation's write.
func TestStalePromiseDoesNotBlockTheNode(t *testing.T) {
	now := time.Now()
	for _, tt := range []struct {
		name      string
		promised  time.Time
		wantNodes []string
	}{
		{"fresh promise holds node1's capacity", now.Add(-time.Second), []string{"node2"}},
		{"stale promise does not", now.Add(-time.Hour), []string{"node1", "node2"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			squatter := claim("squatter", "topo-node", "1Ti")
			squatter.Namespace = "tenant"
			squatter.Annotations = map[string]string{annSelectedNode: "node1"}
			squatter.ManagedFields = []metav1.ManagedFieldsEntry{managed("kubectl-annotate", tt.promised, annSelectedNode)}
			notes := &promiseNotes{now: time.Now}
			if _, err := notes.transform(squatter); err != nil {
				t.Fatal(err)
			}
			if squatter.ManagedFields != nil {
				t.Fatal("the transform kept the managed fields")
			}
			state := seed(class("topo-node", driver, "node"), claim("a", "topo-node", "1Gi"), squatter,
				capacity("topo-node", map[string]string{topology.NodeKey: "node1"}, "10Gi"),
				capacity("topo-node", map[string]string{topology.NodeKey: "node2"}, "10Gi"))
			state.PromiseExpiry = 5 * time.Minute
			got := Filter(state, driver, podWith("a"), []string{"node1", "node2"})
			if !slices.Equal(*got.NodeNames, tt.wantNodes) {
				t.Fatalf("nodes = %v (failed: %v), want %v", *got.NodeNames, got.FailedNodes, tt.wantNodes)
			}
		})
	}
}

// A tenant can clear a claim's managed fields (any client that may update
// it can): its promise then dates from when the cache first saw it with
// that node, and later events of the same promise keep that date.
func TestPromiseWithoutManagedFieldsDatesFromFirstSight(t *testing.T) {
	first := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	s := newSightings(t, first)
	if got := s.event("node1").Annotations[annPromisedAt]; got != first.Format(time.RFC3339) {
		t.Fatalf("first sight noted %q, want %v", got, first)
	}
	s.clock = first.Add(time.Hour)
	if got := s.event("node1"); got.Annotations[annPromisedAt] != first.Format(time.RFC3339) || promiseHolds(got, s.clock, DefaultPromiseTTL) {
		t.Fatalf("a later event of the same promise renewed it: noted %q", got.Annotations[annPromisedAt])
	}
	if got := s.event("node2").Annotations[annPromisedAt]; got != s.clock.Format(time.RFC3339) {
		t.Fatalf("a promise to another node noted %q, want %v", got, s.clock)
	}
}

// sightings feeds events of one claim through the extender's transform
// into a cache, as its informer does, on a clock the test sets.
type sightings struct {
	t      *testing.T
	clock  time.Time
	claims cache.Indexer
	notes  *promiseNotes
}

func newSightings(t *testing.T, at time.Time) *sightings {
	s := &sightings{t: t, clock: at, claims: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})}
	s.notes = &promiseNotes{now: func() time.Time { return s.clock }, claims: s.claims}
	return s
}

// event is the claim promised to node, with the given managed fields, as
// the cache holds it after the event.
func (s *sightings) event(node string, entries ...metav1.ManagedFieldsEntry) *corev1.PersistentVolumeClaim {
	s.t.Helper()
	c := claim("squatter", "topo-node", "1Ti")
	c.UID = "uid-1"
	c.Annotations = map[string]string{annSelectedNode: node}
	c.ManagedFields = entries
	obj, err := s.notes.transform(c)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := s.claims.Update(obj); err != nil {
		s.t.Fatal(err)
	}
	return obj.(*corev1.PersistentVolumeClaim)
}

// A tenant writes the claim's managed fields itself, giving the entry that
// owns selected-node a time in the future: the promise dates from when the
// cache first saw it instead, and expires.
func TestForgedFuturePromiseTimeIsNotBelieved(t *testing.T) {
	first := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	s := newSightings(t, first)
	forged := managed("tenant", time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC), annSelectedNode)
	if got := s.event("node1", forged).Annotations[annPromisedAt]; got != first.Format(time.RFC3339) {
		t.Fatalf("noted %q, want the first sight %v", got, first)
	}
	s.clock = first.Add(time.Hour)
	if got := s.event("node1", forged); promiseHolds(got, s.clock, DefaultPromiseTTL) {
		t.Fatalf("a promise with a forged future time still holds an hour later (noted %q)", got.Annotations[annPromisedAt])
	}
}
