package webhook

import (
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/utils/ptr"
)

func TestConfigurationsRouteEveryWebhookNarrowly(t *testing.T) {
	mutating, validating := Configurations(ConfigurationOptions{
		Name: "toposnap-webhook",
		ClientConfig: func(path string) admissionregistrationv1.WebhookClientConfig {
			return admissionregistrationv1.WebhookClientConfig{URL: ptr.To("https://webhook" + path)}
		},
		FailurePolicy: admissionregistrationv1.Ignore,
	})
	type hook struct {
		name, url, condition string
		selector             string
		timeout              int32
		policy               admissionregistrationv1.FailurePolicyType
	}
	var got []hook
	for _, w := range mutating.Webhooks {
		got = append(got, hook{w.Name, *w.ClientConfig.URL, w.MatchConditions[0].Expression, w.NamespaceSelector.String(), *w.TimeoutSeconds, *w.FailurePolicy})
	}
	for _, w := range validating.Webhooks {
		got = append(got, hook{w.Name, *w.ClientConfig.URL, w.MatchConditions[0].Expression, w.NamespaceSelector.String(), *w.TimeoutSeconds, *w.FailurePolicy})
	}
	want := map[string]struct{ path, condition string }{
		"storageclass.toposnap.io":        {PathMutateStorageClass, "object.provisioner in"},
		"pvc-datasource.toposnap.io":      {PathValidateClaim, "object.spec.dataSource.kind == 'VolumeSnapshot'"},
		"pvc.toposnap.io":                 {PathValidateClaim, "has(object.spec.dataSource)"},
		"volumesnapshotclass.toposnap.io": {PathValidateSnapshotClass, AnnDefaultSnapshotClass},
	}
	if len(got) != len(want) {
		t.Fatalf("%d webhooks, want %d", len(got), len(want))
	}
	for _, h := range got {
		w, ok := want[h.name]
		switch {
		case !ok:
			t.Errorf("unexpected webhook %s", h.name)
		case h.url != "https://webhook"+w.path:
			t.Errorf("%s calls %s, want path %s", h.name, h.url, w.path)
		case !strings.Contains(h.condition, w.condition):
			t.Errorf("%s matches %q, want it to contain %q", h.name, h.condition, w.condition)
		case !strings.Contains(h.selector, LabelWebhook) || h.timeout != 5 || h.policy != admissionregistrationv1.Ignore:
			t.Errorf("%s: selector %s, timeout %d, policy %s", h.name, h.selector, h.timeout, h.policy)
		}
	}
}
