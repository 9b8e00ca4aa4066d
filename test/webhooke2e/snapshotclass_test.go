package webhooke2e

import (
	"context"
	"strings"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/toposnap/toposnap/webhook"
)

func TestOneDefaultSnapshotClassPerDriver(t *testing.T) {
	needEnv(t)
	ctx := ctxFor(t, 2*time.Minute)
	classes := env.snapshots.SnapshotV1().VolumeSnapshotClasses()
	create := func(class *snapv1.VolumeSnapshotClass, opts metav1.CreateOptions) error {
		_, err := classes.Create(ctx, class, opts)
		if err == nil && len(opts.DryRun) == 0 {
			t.Cleanup(func() { _ = classes.Delete(context.Background(), class.Name, metav1.DeleteOptions{}) })
		}
		return err
	}
	if err := create(snapshotClass("e2e-default-first", webhook.DriverName, true), metav1.CreateOptions{}); err != nil {
		t.Fatalf("first default: %v", err)
	}
	if err := create(snapshotClass("e2e-default-other-driver", otherCSI, true), metav1.CreateOptions{}); err != nil {
		t.Fatalf("another driver's default: %v", err)
	}
	const want = "VolumeSnapshotClass e2e-default-first is already the default for driver " + webhook.DriverName

	t.Run("second default is rejected naming the first", func(t *testing.T) {
		second := snapshotClass("e2e-default-second", webhook.DriverName, true)
		var last error
		err := poll(ctx, 200*time.Millisecond, cacheGrace, func() (bool, error) {
			last = create(second, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			return last != nil && strings.Contains(last.Error(), want), nil
		})
		if err != nil {
			t.Fatalf("dry run never rejected with %q; last: %v", want, last)
		}
		if err := create(second, metav1.CreateOptions{}); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("create: %v, want rejected with %q", err, want)
		}
		if _, err := classes.Get(ctx, second.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("rejected class exists (get: %v)", err)
		}
	})
	t.Run("making another class the default is rejected naming the first", func(t *testing.T) {
		plain := snapshotClass("e2e-plain", webhook.DriverName, false)
		if err := create(plain, metav1.CreateOptions{}); err != nil {
			t.Fatalf("non-default class: %v", err)
		}
		stored, err := classes.Get(ctx, plain.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		stored.Annotations = map[string]string{webhook.AnnDefaultSnapshotClass: "true"}
		if _, err := classes.Update(ctx, stored, metav1.UpdateOptions{}); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("update: %v, want rejected with %q", err, want)
		}
	})
}

// snapshotClass is a VolumeSnapshotClass of driver, the default if isDefault.
func snapshotClass(name, driver string, isDefault bool) *snapv1.VolumeSnapshotClass {
	class := &snapv1.VolumeSnapshotClass{
		ObjectMeta: metav1.ObjectMeta{Name: name}, Driver: driver, DeletionPolicy: snapv1.VolumeSnapshotContentDelete,
	}
	if isDefault {
		class.Annotations = map[string]string{webhook.AnnDefaultSnapshotClass: "true"}
	}
	return class
}
