package provisioner

import (
	"context"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A routed node's caches hold its own objects. A restore's or clone's
// source, or the selected node of a zone claim, may be routed elsewhere:
// those few reads go to the API server when the cache lacks the object.

func (c *Controller) getSnapshot(ctx context.Context, namespace, name string) (*snapv1.VolumeSnapshot, error) {
	snap, err := c.snapshots.VolumeSnapshots(namespace).Get(name)
	if c.routed && apierrors.IsNotFound(err) {
		return c.snapClient.SnapshotV1().VolumeSnapshots(namespace).Get(ctx, name, metav1.GetOptions{})
	}
	return snap, err
}

func (c *Controller) getContent(ctx context.Context, name string) (*snapv1.VolumeSnapshotContent, error) {
	content, err := c.contents.Get(name)
	if c.routed && apierrors.IsNotFound(err) {
		return c.snapClient.SnapshotV1().VolumeSnapshotContents().Get(ctx, name, metav1.GetOptions{})
	}
	return content, err
}

func (c *Controller) getClaim(ctx context.Context, namespace, name string) (*corev1.PersistentVolumeClaim, error) {
	claim, err := c.claims.PersistentVolumeClaims(namespace).Get(name)
	if c.routed && apierrors.IsNotFound(err) {
		return c.client.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, name, metav1.GetOptions{})
	}
	return claim, err
}

func (c *Controller) getPV(ctx context.Context, name string) (*corev1.PersistentVolume, error) {
	pv, err := c.volumes.Get(name)
	if c.routed && apierrors.IsNotFound(err) {
		return c.client.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{})
	}
	return pv, err
}

// getNode reads a Node: a routed node caches its own Node only.
func (c *Controller) getNode(ctx context.Context, name string) (*corev1.Node, error) {
	node, err := c.nodes.Get(name)
	if c.routed && apierrors.IsNotFound(err) {
		return c.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	}
	return node, err
}
