package webhook

import (
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// LabelWebhook set to "disabled" on a namespace keeps its objects away
// from the webhook.
const LabelWebhook = "toposnap.io/webhook"

// CEL conditions that keep the API server from calling the webhook about
// objects it has nothing to say about, so a webhook outage touches as
// little of the cluster as possible.
const (
	// conditionTopologyAware: StorageClasses of our driver or of static local PVs.
	conditionTopologyAware = "object.provisioner in ['" + DriverName + "', '" + NoProvisioner + "']"
	// conditionHasDataSource: claims that restore or clone.
	conditionHasDataSource = "has(object.spec.dataSource) || has(object.spec.dataSourceRef)"
	// conditionLegacySnapshotSource: a claim whose spec.dataSource (without
	// dataSourceRef) names a VolumeSnapshot outside snapshot.storage.k8s.io.
	// The API server silently drops such a dataSource before validation
	// (EnforceDataSourceBackwardsCompatibility), making the claim an empty
	// volume; only a mutating webhook still sees it.
	conditionLegacySnapshotSource = "!has(object.spec.dataSourceRef) && has(object.spec.dataSource) && " +
		"object.spec.dataSource.kind == 'VolumeSnapshot' && " +
		"(!has(object.spec.dataSource.apiGroup) || object.spec.dataSource.apiGroup != 'snapshot.storage.k8s.io')"
	// conditionDefaultSnapshotClass: VolumeSnapshotClasses marked default.
	conditionDefaultSnapshotClass = "has(object.metadata.annotations) && '" + AnnDefaultSnapshotClass + "' in object.metadata.annotations && " +
		"object.metadata.annotations['" + AnnDefaultSnapshotClass + "'] == 'true'"
	// conditionPodHasClaims: pods with a claim or an ephemeral volume, the
	// only ones that can use a toposnap StorageClass.
	conditionPodHasClaims = "has(object.spec.volumes) && object.spec.volumes.exists(v, has(v.persistentVolumeClaim) || has(v.ephemeral))"
)

// conditionPodToSchedule: pods still to be scheduled, by one of schedulers
// (the default one when they name none).
func conditionPodToSchedule(schedulers []string) string {
	quoted := make([]string, 0, len(schedulers)+1)
	quoted = append(quoted, "''")
	for _, name := range schedulers {
		quoted = append(quoted, "'"+name+"'")
	}
	return "(!has(object.spec.schedulerName) || object.spec.schedulerName in [" + strings.Join(quoted, ", ") + "]) && " +
		"(!has(object.spec.nodeName) || object.spec.nodeName == '')"
}

// ConfigurationOptions say how the API server reaches the webhook.
type ConfigurationOptions struct {
	// Name of both configurations.
	Name string
	// ClientConfig returns how to call the route at path (a service or
	// URL plus the CA bundle).
	ClientConfig func(path string) admissionregistrationv1.WebhookClientConfig
	// FailurePolicy applies when the webhook cannot be called: Ignore keeps
	// the cluster working through an outage, Fail enforces every check.
	FailurePolicy admissionregistrationv1.FailurePolicyType
	// TimeoutSeconds bounds each call; 0 means 5.
	TimeoutSeconds int32
	// Pods, when it does anything, adds PodWebhook to the mutating
	// configuration; it must be what the webhook runs with
	// (--scheduler-name, --volume-resource, --volume-resource-schedulers).
	Pods PodOptions
}

// Configurations are the Mutating- and ValidatingWebhookConfiguration that
// route the API server's requests to this webhook: what a deployment (the
// chart) must register. Every webhook skips namespaces labelled
// LabelWebhook=disabled and uses matchConditions so the API server calls
// it only about the objects it decides on.
//
// Besides the StorageClass mutation, the mutating configuration sends
// claims matching conditionLegacySnapshotSource to the claim route, which
// denies them: the validating phase never sees that mistake. With opts.Pods
// doing anything it also holds PodWebhook.
func Configurations(opts ConfigurationOptions) (*admissionregistrationv1.MutatingWebhookConfiguration, *admissionregistrationv1.ValidatingWebhookConfiguration) {
	if opts.TimeoutSeconds == 0 {
		opts.TimeoutSeconds = 5
	}
	if opts.ClientConfig == nil {
		opts.ClientConfig = func(string) admissionregistrationv1.WebhookClientConfig {
			return admissionregistrationv1.WebhookClientConfig{}
		}
	}
	optOut := namespaceOptOut()
	common := func(path string) (admissionregistrationv1.WebhookClientConfig, *admissionregistrationv1.FailurePolicyType, *admissionregistrationv1.SideEffectClass, *int32) {
		return opts.ClientConfig(path), ptr.To(opts.FailurePolicy), ptr.To(admissionregistrationv1.SideEffectClassNone), ptr.To(opts.TimeoutSeconds)
	}
	mutating := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: opts.Name}}
	for _, hook := range []struct {
		name, path, condition string
		rules                 []admissionregistrationv1.RuleWithOperations
	}{
		{"storageclass.toposnap.io", PathMutateStorageClass, conditionTopologyAware, storageClassRules()},
		{"pvc-datasource.toposnap.io", PathValidateClaim, conditionLegacySnapshotSource, claimRules()},
	} {
		clientConfig, failurePolicy, sideEffects, timeout := common(hook.path)
		mutating.Webhooks = append(mutating.Webhooks, admissionregistrationv1.MutatingWebhook{
			Name: hook.name, ClientConfig: clientConfig, Rules: hook.rules,
			FailurePolicy: failurePolicy, SideEffects: sideEffects, TimeoutSeconds: timeout,
			AdmissionReviewVersions: []string{"v1"}, NamespaceSelector: optOut,
			ReinvocationPolicy: ptr.To(admissionregistrationv1.NeverReinvocationPolicy),
			MatchConditions:    []admissionregistrationv1.MatchCondition{{Name: conditionName(hook.name), Expression: hook.condition}},
		})
	}
	if opts.Pods.enabled() {
		mutating.Webhooks = append(mutating.Webhooks, PodWebhook(opts))
	}
	validating := &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: opts.Name}}
	for _, hook := range []struct {
		name, path, condition string
		rules                 []admissionregistrationv1.RuleWithOperations
	}{
		{"pvc.toposnap.io", PathValidateClaim, conditionHasDataSource, claimRules()},
		{"volumesnapshotclass.toposnap.io", PathValidateSnapshotClass, conditionDefaultSnapshotClass, snapshotClassRules()},
	} {
		clientConfig, failurePolicy, sideEffects, timeout := common(hook.path)
		validating.Webhooks = append(validating.Webhooks, admissionregistrationv1.ValidatingWebhook{
			Name: hook.name, ClientConfig: clientConfig, Rules: hook.rules,
			FailurePolicy: failurePolicy, SideEffects: sideEffects, TimeoutSeconds: timeout,
			AdmissionReviewVersions: []string{"v1"}, NamespaceSelector: optOut,
			MatchConditions: []admissionregistrationv1.MatchCondition{{Name: conditionName(hook.name), Expression: hook.condition}},
		})
	}
	return mutating, validating
}

// PodWebhook is the mutating webhook that sends pods to PathMutatePod,
// which moves those using toposnap StorageClasses to the webhook's
// --scheduler-name and gives them its --volume-resource (Configurations
// includes it when opts.Pods does anything). Whatever opts.FailurePolicy
// says, its failurePolicy is Ignore: when the webhook is down pods keep
// their scheduler and go without the resource, so they still run (placed
// without the extender's checks: docs/operations.md), instead of every pod
// in the cluster failing to be created. Match conditions keep the API
// server from calling it about pods without claims, already on a node, or
// for a scheduler it has nothing to do with.
func PodWebhook(opts ConfigurationOptions) admissionregistrationv1.MutatingWebhook {
	if opts.TimeoutSeconds == 0 {
		opts.TimeoutSeconds = 5
	}
	clientConfig := admissionregistrationv1.WebhookClientConfig{}
	if opts.ClientConfig != nil {
		clientConfig = opts.ClientConfig(PathMutatePod)
	}
	return admissionregistrationv1.MutatingWebhook{
		Name: "pod-scheduler.toposnap.io", ClientConfig: clientConfig, Rules: podRules(),
		FailurePolicy: ptr.To(admissionregistrationv1.Ignore), SideEffects: ptr.To(admissionregistrationv1.SideEffectClassNone),
		TimeoutSeconds: ptr.To(opts.TimeoutSeconds), AdmissionReviewVersions: []string{"v1"}, NamespaceSelector: namespaceOptOut(),
		ReinvocationPolicy: ptr.To(admissionregistrationv1.NeverReinvocationPolicy),
		MatchConditions: []admissionregistrationv1.MatchCondition{
			{Name: "pod-with-claims", Expression: conditionPodHasClaims},
			{Name: "pod-to-schedule", Expression: conditionPodToSchedule(opts.Pods.Schedulers())},
		},
	}
}

// namespaceOptOut selects every namespace not labelled LabelWebhook=disabled.
func namespaceOptOut() *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
		{Key: LabelWebhook, Operator: metav1.LabelSelectorOpNotIn, Values: []string{"disabled"}},
	}}
}

// conditionName names a webhook's only match condition.
func conditionName(webhook string) string {
	return strings.TrimSuffix(webhook, ".toposnap.io") + "-objects"
}

func rules(resource metav1.GroupVersionResource, scope admissionregistrationv1.ScopeType, operations ...admissionregistrationv1.OperationType) []admissionregistrationv1.RuleWithOperations {
	return []admissionregistrationv1.RuleWithOperations{{
		Operations: operations,
		Rule: admissionregistrationv1.Rule{
			APIGroups: []string{resource.Group}, APIVersions: []string{resource.Version},
			Resources: []string{resource.Resource}, Scope: &scope,
		},
	}}
}

// storageClassRules: CREATE only, as the binding mode is immutable.
func storageClassRules() []admissionregistrationv1.RuleWithOperations {
	return rules(storageClassesResource, admissionregistrationv1.ClusterScope, admissionregistrationv1.Create)
}

// claimRules: CREATE only, as the data source is immutable.
func claimRules() []admissionregistrationv1.RuleWithOperations {
	return rules(claimsResource, admissionregistrationv1.NamespacedScope, admissionregistrationv1.Create)
}

// podRules: CREATE only, as spec.schedulerName is immutable.
func podRules() []admissionregistrationv1.RuleWithOperations {
	return rules(podsResource, admissionregistrationv1.NamespacedScope, admissionregistrationv1.Create)
}

func snapshotClassRules() []admissionregistrationv1.RuleWithOperations {
	return rules(snapshotClassesResource, admissionregistrationv1.ClusterScope, admissionregistrationv1.Create, admissionregistrationv1.Update)
}
