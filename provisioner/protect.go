package provisioner

import (
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/toposnap/toposnap/internal/claimsource"
)

// Upstream's finalizers that keep a source alive while a volume is being
// filled from it.
const (
	FinalizerSnapshotAsSource = "snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection"
	FinalizerCloneSource      = "provisioner.storage.kubernetes.io/cloning-protection"
)

// protectSource adds (or, with add false, removes) the protection finalizer
// on the claim's snapshot or source claim, so the source cannot disappear
// while the copy runs.
func (c *Controller) protectSource(ctx context.Context, claim *corev1.PersistentVolumeClaim, add bool) error {
	source, ok := claimsource.Of(claim)
	if !ok {
		return nil
	}
	kind, name := source.Kind, source.Name
	edit := func(finalizers []string, finalizer string) ([]string, bool) {
		has := slices.Contains(finalizers, finalizer)
		switch {
		case add && !has:
			return append(finalizers, finalizer), true
		case !add && has:
			return slices.DeleteFunc(finalizers, func(f string) bool { return f == finalizer }), true
		}
		return finalizers, false
	}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		switch {
		case source.IsSnapshot():
			api := c.snapClient.SnapshotV1().VolumeSnapshots(claim.Namespace)
			snap, err := api.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			finalizers, changed := edit(snap.Finalizers, FinalizerSnapshotAsSource)
			if !changed {
				return nil
			}
			snap.Finalizers = finalizers
			_, err = api.Update(ctx, snap, metav1.UpdateOptions{})
			return err
		case source.IsClaim():
			api := c.client.CoreV1().PersistentVolumeClaims(claim.Namespace)
			source, err := api.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			finalizers, changed := edit(source.Finalizers, FinalizerCloneSource)
			if !changed {
				return nil
			}
			source.Finalizers = finalizers
			_, err = api.Update(ctx, source, metav1.UpdateOptions{})
			return err
		}
		return nil
	})
	if err != nil && (add || !apierrors.IsNotFound(err)) {
		return fmt.Errorf("protect %s %s/%s: %w", kind, claim.Namespace, name, err)
	}
	return nil
}
