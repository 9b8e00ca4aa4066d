package fakeapi

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestSemantics(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	Install(client)
	api := client.CoreV1().PersistentVolumeClaims("ns")
	created, err := api.Create(ctx, &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "c", Finalizers: []string{"f"}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stale := created.DeepCopy()
	created.Annotations = map[string]string{"a": "b"}
	created.Status.Phase = corev1.ClaimBound
	updated, err := api.Update(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if updated.Status.Phase != "" {
		t.Errorf("a main-resource update wrote status %q", updated.Status.Phase)
	}
	if _, err := api.Update(ctx, stale, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
		t.Errorf("update at a stale resourceVersion: got %v, want a conflict", err)
	}
	if err := api.Delete(ctx, "c", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	marked, err := api.Get(ctx, "c", metav1.GetOptions{})
	if err != nil || marked.DeletionTimestamp == nil {
		t.Fatalf("delete with a finalizer: got %v, %v; want the claim marked", marked, err)
	}
	marked.Finalizers = nil
	if _, err := api.Update(ctx, marked, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := api.Get(ctx, "c", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("last finalizer removed: got %v, want the claim gone", err)
	}
}
