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

func TestConfigurationsAddThePodWebhookOnlyWithASchedulerName(t *testing.T) {
	opts := ConfigurationOptions{
		Name: "toposnap-webhook",
		ClientConfig: func(path string) admissionregistrationv1.WebhookClientConfig {
			return admissionregistrationv1.WebhookClientConfig{URL: ptr.To("https://webhook" + path)}
		},
		FailurePolicy: admissionregistrationv1.Fail,
	}
	if mutating, _ := Configurations(opts); hasWebhook(mutating, "pod-scheduler.toposnap.io") {
		t.Fatal("pod webhook registered without a scheduler name")
	}
	marking := opts
	marking.Pods = PodOptions{VolumeResource: VolumeResource, ResourceSchedulers: []string{"my-scheduler"}}
	if mutating, _ := Configurations(marking); !hasWebhook(mutating, "pod-scheduler.toposnap.io") {
		t.Fatal("pod webhook missing with a volume resource")
	}
	if got := PodWebhook(marking).MatchConditions[1].Expression; !strings.Contains(got, "'my-scheduler'") || !strings.Contains(got, "'"+DefaultSchedulerName+"'") {
		t.Errorf("pod webhook condition %q does not send pods of the resource's schedulers (and unnamed ones)", got)
	}
	opts.Pods.SchedulerName = "toposnap-scheduler"
	mutating, _ := Configurations(opts)
	if !hasWebhook(mutating, "pod-scheduler.toposnap.io") {
		t.Fatal("pod webhook missing with a scheduler name")
	}
	pods := PodWebhook(opts)
	var conditions []string
	for _, condition := range pods.MatchConditions {
		conditions = append(conditions, condition.Expression)
	}
	switch {
	case *pods.ClientConfig.URL != "https://webhook"+PathMutatePod:
		t.Errorf("pod webhook calls %s, want path %s", *pods.ClientConfig.URL, PathMutatePod)
	case *pods.FailurePolicy != admissionregistrationv1.Ignore:
		t.Errorf("pod webhook failurePolicy %s, want Ignore whatever the others use", *pods.FailurePolicy)
	case *pods.SideEffects != admissionregistrationv1.SideEffectClassNone || !strings.Contains(pods.NamespaceSelector.String(), LabelWebhook):
		t.Errorf("pod webhook sideEffects %s, namespaceSelector %s", *pods.SideEffects, pods.NamespaceSelector)
	case len(pods.Rules) != 1 || pods.Rules[0].Resources[0] != "pods" || pods.Rules[0].Operations[0] != admissionregistrationv1.Create:
		t.Errorf("pod webhook rules %+v, want pods CREATE", pods.Rules)
	case !strings.Contains(strings.Join(conditions, " "), "persistentVolumeClaim") ||
		!strings.Contains(strings.Join(conditions, " "), DefaultSchedulerName):
		t.Errorf("pod webhook conditions %q, want claims and the default scheduler", conditions)
	}
}

func hasWebhook(configuration *admissionregistrationv1.MutatingWebhookConfiguration, name string) bool {
	for _, webhook := range configuration.Webhooks {
		if webhook.Name == name {
			return true
		}
	}
	return false
}
