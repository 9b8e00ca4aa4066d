// Package claimsource reads where a new PersistentVolumeClaim's data comes
// from: its dataSourceRef (the superset) or else its dataSource. The
// extender, the webhook and the provisioner all ask the same question.
package claimsource

import corev1 "k8s.io/api/core/v1"

// Kinds and the group toposnap fills volumes from.
const (
	KindSnapshot  = "VolumeSnapshot"
	KindClaim     = "PersistentVolumeClaim"
	SnapshotGroup = "snapshot.storage.k8s.io"
)

// Source is a claim's data source.
type Source struct {
	APIGroup, Kind, Namespace, Name string
}

// String renders the source for messages, e.g. "VolumeSnapshot ns/name".
func (s Source) String() string { return s.Kind + " " + s.Namespace + "/" + s.Name }

// IsSnapshot reports whether the source is a VolumeSnapshot of the snapshot API.
func (s Source) IsSnapshot() bool { return s.Kind == KindSnapshot && s.APIGroup == SnapshotGroup }

// IsClaim reports whether the source is a PersistentVolumeClaim (a clone).
func (s Source) IsClaim() bool { return s.Kind == KindClaim && s.APIGroup == "" }

// Of returns the claim's data source, or false when it has none.
func Of(claim *corev1.PersistentVolumeClaim) (Source, bool) {
	if ref := claim.Spec.DataSourceRef; ref != nil {
		source := Source{Kind: ref.Kind, Namespace: claim.Namespace, Name: ref.Name}
		if ref.APIGroup != nil {
			source.APIGroup = *ref.APIGroup
		}
		if ref.Namespace != nil && *ref.Namespace != "" {
			source.Namespace = *ref.Namespace
		}
		return source, true
	}
	if ref := claim.Spec.DataSource; ref != nil {
		source := Source{Kind: ref.Kind, Namespace: claim.Namespace, Name: ref.Name}
		if ref.APIGroup != nil {
			source.APIGroup = *ref.APIGroup
		}
		return source, true
	}
	return Source{}, false
}
