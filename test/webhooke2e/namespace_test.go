package webhooke2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/toposnap/toposnap/webhook"
)

func TestDisabledNamespaceBypassesValidation(t *testing.T) {
	needEnv(t)
	ctx := ctxFor(t, time.Minute)
	class := "e2e-opt-out"
	createStorageClass(t, withWaitForFirstConsumer(storageClass(class, webhook.DriverName)))
	checked := createNamespace(t, nil)
	optedOut := createNamespace(t, map[string]string{webhook.LabelWebhook: "disabled"})

	err := kubectlApply(t, ctx, restoreClaim(checked, "restore", class, "1Gi", snapv1.GroupName, "no-such-snapshot"))
	if want := fmt.Sprintf("VolumeSnapshot %s/no-such-snapshot not found", checked); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("in a checked namespace: %v, want rejected with %q", err, want)
	}
	var last error
	err = poll(ctx, 200*time.Millisecond, cacheGrace, func() (bool, error) {
		last = kubectlApply(t, ctx, restoreClaim(optedOut, "restore", class, "1Gi", snapv1.GroupName, "no-such-snapshot"))
		return last == nil, nil
	})
	if err != nil {
		t.Fatalf("in namespace labelled %s=disabled the claim is still rejected: %v", webhook.LabelWebhook, last)
	}
	if _, err := env.cluster.Client.CoreV1().PersistentVolumeClaims(optedOut).Get(ctx, "restore", metav1.GetOptions{}); err != nil {
		t.Fatalf("admitted claim not stored: %v", err)
	}
}
