package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// TestUndeletableVolumeIsReportedOnItsPV: a released volume the driver
// cannot delete (its metadata is not the pool's own: root on the node put
// a symlink there) is reported where an operator looks, a
// VolumeFailedDelete event on its PV naming the reason, and its PV stays;
// the driver keeps serving the node's other volumes meanwhile; once the
// metadata is the pool's again, the retried delete finishes and the PV
// goes.
func TestUndeletableVolumeIsReportedOnItsPV(t *testing.T) {
	needEnv(t)
	ns := createNamespace(t)
	ctx := ctxFor(t, 4*time.Minute)
	createClass(t, "e2e-node", "node")
	createClaim(t, ns, "stuck", "e2e-node", "64Mi", nil)
	createPod(t, ns, "a", "stuck")
	pv, nodeName := waitBound(t, ns, "stuck", "a")
	handle := pv.Spec.CSI.VolumeHandle
	nodePool, _ := env.Nodes[nodeName].PoolDirs()
	if nodePool == "" {
		t.Fatalf("node %s's driver has no node pool", nodeName)
	}
	deleteAndWaitGone(t, "pod "+ns+"/a", func(ctx context.Context) error {
		return env.Cluster.Client.CoreV1().Pods(ns).Delete(ctx, "a", metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0))})
	}, func(ctx context.Context) (metav1.Object, error) {
		return env.Cluster.Client.CoreV1().Pods(ns).Get(ctx, "a", metav1.GetOptions{})
	}, time.Minute)

	// Root on the node moves the volume's metadata aside and puts a symlink
	// to a file outside the pool in its place: the driver refuses to read
	// it (it did not write it), and the file outside must survive.
	metaFile := filepath.Join(nodePool, "meta", handle+".json")
	aside := filepath.Join(nodePool, "aside-"+handle+".json")
	if err := os.Rename(metaFile, aside); err != nil {
		t.Fatal(err)
	}
	restore := func() error {
		if err := os.Remove(metaFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return os.Rename(aside, metaFile)
	}
	t.Cleanup(func() {
		if _, err := os.Lstat(aside); err == nil {
			if err := restore(); err != nil {
				t.Errorf("put %s back: %v", metaFile, err)
			}
		}
	})
	canary := filepath.Join(t.TempDir(), "canary.json")
	if err := os.WriteFile(canary, []byte(`{"id":"`+handle+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(canary, metaFile); err != nil {
		t.Fatal(err)
	}

	if err := env.Cluster.Client.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, "stuck", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, "", pv.Name, "VolumeFailedDelete", handle)
	if _, err := env.Cluster.Client.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{}); err != nil {
		t.Fatalf("the PV of the undeletable volume is gone (%v): nothing would show what is left", err)
	}
	if _, err := os.Stat(canary); err != nil {
		t.Fatalf("the delete reached outside the pool: %v", err)
	}

	// The same driver still serves: a new volume on that node is made.
	createClaim(t, ns, "fine", "e2e-node", "64Mi", nil)
	createPodIn(t, ns, "b", "fine", map[string]string{corev1.LabelHostname: nodeName})
	waitBound(t, ns, "fine", "b")

	// The operator puts the metadata back, and the provisioner's retry
	// deletes the volume.
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	if err := poll(ctx, 200*time.Millisecond, 3*time.Minute, func() (bool, error) {
		_, err := env.Cluster.Client.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		t.Fatalf("PV %s stayed after its volume's metadata was the pool's again: %v", pv.Name, err)
	}
	resp, err := env.Nodes[nodeName].Controller.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, entry := range resp.GetEntries() {
		if entry.GetVolume().GetVolumeId() == handle {
			t.Fatalf("volume %s is still listed after its PV went", handle)
		}
	}
}
