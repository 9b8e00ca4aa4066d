package extender

import (
	"encoding/json"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/toposnap/toposnap/internal/kube"
)

// A pending claim's volume.kubernetes.io/selected-node is a promise: the
// scheduler chose that node, and the extender counts the claim's request
// against the node's pool until the volume exists (then the published
// capacity has it). Anyone who may update the claim can write the
// annotation, though, and a claim whose volume can never be made (larger
// than any pool, or failed finally) keeps it: counted for ever, one
// tenant's claim would refuse every new volume on the node, or on the
// whole zone for zone scope. So a promise holds capacity only for
// PromiseTTL after the annotation was last written, as the API server
// recorded it in the claim's managed fields. A promise that is kept is
// acted on within seconds: the node's provisioner reserves the volume's
// space in its pool, and the published capacity shows it.

// DefaultPromiseTTL is how long a selected-node promise holds capacity.
const DefaultPromiseTTL = 5 * time.Minute

// annPromisedAt carries, on the extender's cached copy of a claim only
// (never written to the API), when its selected-node was last written
// (RFC 3339), read from the managed fields the cache then drops.
const annPromisedAt = "extender.toposnap.io/promised-at"

// promiseNotes is the extender's informer transform: what a decision
// never reads is dropped, after noting on a claim when its promise was
// made: when its managed fields say, but never later than when the cache
// first saw the claim promised to that node (carried over from the cached
// copy). Anyone who may update a claim may clear its managed fields or
// write them with a time of their choosing.
type promiseNotes struct {
	now func() time.Time
	// claims is the claim cache, set before the informers start.
	claims cache.Indexer
}

func (n *promiseNotes) transform(obj any) (any, error) {
	if claim, ok := obj.(*corev1.PersistentVolumeClaim); ok && claim.Annotations[annSelectedNode] != "" {
		// A client may also write managed fields with any time: one later
		// than the cache's first sight of the promise is not believed.
		at, first := promisedAt(claim), n.firstSeen(claim)
		if at.IsZero() || at.After(first) {
			at = first
		}
		claim.Annotations[annPromisedAt] = at.UTC().Format(time.RFC3339)
	}
	return kube.StripManagedFields(obj)
}

// firstSeen is when the cache first saw claim promised to its node: the
// cached copy's note if it is the same claim with the same node, else now.
func (n *promiseNotes) firstSeen(claim *corev1.PersistentVolumeClaim) time.Time {
	if n.claims != nil {
		if obj, ok, _ := n.claims.GetByKey(claim.Namespace + "/" + claim.Name); ok {
			if cached, ok := obj.(*corev1.PersistentVolumeClaim); ok && cached.UID == claim.UID &&
				cached.Annotations[annSelectedNode] == claim.Annotations[annSelectedNode] {
				if at, err := time.Parse(time.RFC3339, cached.Annotations[annPromisedAt]); err == nil {
					return at
				}
			}
		}
	}
	return n.now()
}

// promisedAt is when the claim's selected-node annotation was last
// written: the time of the managed-fields entry that owns it. Zero when no
// entry says.
func promisedAt(claim *corev1.PersistentVolumeClaim) time.Time {
	for _, entry := range claim.ManagedFields {
		if entry.FieldsV1 == nil || entry.Time == nil {
			continue
		}
		var fields struct {
			Metadata struct {
				Annotations map[string]json.RawMessage `json:"f:annotations"`
			} `json:"f:metadata"`
		}
		if json.Unmarshal(entry.FieldsV1.GetRawBytes(), &fields) != nil {
			continue
		}
		if _, ok := fields.Metadata.Annotations["f:"+annSelectedNode]; ok {
			return entry.Time.Time
		}
	}
	return time.Time{}
}

// finalizerProvisioning is the provisioner's finalizer on a claim whose
// volume is being made (provisioner.FinalizerProvisioning).
const finalizerProvisioning = "toposnap.io/provisioning-protection"

// promiseHolds says whether a pending claim's promise still holds its
// node's capacity at now: always with no ttl, or when its age is unknown;
// never for a claim being deleted whose volume is not being made (a
// tenant's finalizer can keep a deleted claim for ever).
func promiseHolds(claim *corev1.PersistentVolumeClaim, now time.Time, ttl time.Duration) bool {
	if claim.DeletionTimestamp != nil && !slices.Contains(claim.Finalizers, finalizerProvisioning) {
		return false
	}
	if ttl <= 0 {
		return true
	}
	at, err := time.Parse(time.RFC3339, claim.Annotations[annPromisedAt])
	if err != nil {
		return true
	}
	return !now.After(at.Add(ttl))
}
