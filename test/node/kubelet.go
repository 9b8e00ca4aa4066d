package node

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"
)

// kubeletSettings fill the KubeletConfiguration.
type kubeletSettings struct {
	Address            string // where the kubelet serves (logs, exec)
	Port, HealthzPort  int
	ClientCAFile       string // the cluster's CA: the API server's client certificate
	TLSCertFile        string // serving certificate for Address, signed by the cluster's CA
	TLSPrivateKeyFile  string
	RuntimeEndpoint    string // unix://… of containerd
	ClusterDNS         string
	ClusterDomain      string
	ResolvConf         string
	StaticPodPath      string
	PodLogsDir         string
	ImageGCHighPercent int
}

// kubeletConfig is the node's KubeletConfiguration. What this VM needs:
//   - oomScoreAdj 0: the kubelet may not lower its own OOM score without
//     CAP_SYS_RESOURCE, which this VM takes away;
//   - cgroups v1 (hybrid): failCgroupV1 false, cgroupDriver cgroupfs.
//
// It serves on the node's InternalIP as a kubelet of a real cluster does:
// no anonymous access, x509 client certificates of the cluster's CA and
// bearer tokens checked by the API server (webhook), every request
// authorized by SubjectAccessReview (the API server's own certificate holds
// system:kubelet-api-admin through test/cluster's binding).
//
// Eviction thresholds are low so that a busy shared disk does not evict
// test pods; swap is tolerated (the kubelet then gives pods none).
func kubeletConfig(s kubeletSettings) ([]byte, error) {
	config := map[string]any{
		"apiVersion":               "kubelet.config.k8s.io/v1beta1",
		"kind":                     "KubeletConfiguration",
		"address":                  s.Address,
		"port":                     s.Port,
		"readOnlyPort":             0,
		"healthzBindAddress":       "127.0.0.1",
		"healthzPort":              s.HealthzPort,
		"containerRuntimeEndpoint": s.RuntimeEndpoint,
		"imageServiceEndpoint":     s.RuntimeEndpoint,
		"cgroupDriver":             "cgroupfs",
		"failCgroupV1":             false,
		"oomScoreAdj":              0,
		"failSwapOn":               false,
		"clusterDNS":               []string{s.ClusterDNS},
		"clusterDomain":            s.ClusterDomain,
		"resolvConf":               s.ResolvConf,
		"staticPodPath":            s.StaticPodPath,
		"podLogsDir":               s.PodLogsDir,
		"tlsCertFile":              s.TLSCertFile,
		"tlsPrivateKeyFile":        s.TLSPrivateKeyFile,
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": true, "cacheTTL": "30s"},
			"x509":      map[string]any{"clientCAFile": s.ClientCAFile},
		},
		"authorization": map[string]any{
			"mode":    "Webhook",
			"webhook": map[string]any{"cacheAuthorizedTTL": "30s", "cacheUnauthorizedTTL": "10s"},
		},
		"evictionHard": map[string]string{
			"memory.available":  "100Mi",
			"nodefs.available":  "1%",
			"imagefs.available": "1%",
		},
		"imageGCHighThresholdPercent": s.ImageGCHighPercent,
		"imageGCLowThresholdPercent":  s.ImageGCHighPercent - 1,
		"serializeImagePulls":         false,
		"rotateCertificates":          false,
		"serverTLSBootstrap":          false,
		"nodeStatusReportFrequency":   "10s",
		"syncFrequency":               "10s",
		"fileCheckFrequency":          "5s",
		"volumeStatsAggPeriod":        "10s",
		"shutdownGracePeriod":         "0s",
	}
	data, err := yaml.Marshal(config)
	if err != nil {
		return nil, fmt.Errorf("encode kubelet config: %w", err)
	}
	return data, nil
}

// removeNotReadyTaint takes the node.kubernetes.io/not-ready taint, which
// the kubelet registers its Node with, off the Ready node: that is the node
// lifecycle controller's job, and a cluster with Node objects of its own
// beside the real node (the demo) runs without it (nothing renews those
// nodes' leases).
func removeNotReadyTaint(ctx context.Context, client kubernetes.Interface, name string) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		node, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		var kept []corev1.Taint
		for _, taint := range node.Spec.Taints {
			if taint.Key != corev1.TaintNodeNotReady && taint.Key != corev1.TaintNodeUnreachable {
				kept = append(kept, taint)
			}
		}
		if len(kept) == len(node.Spec.Taints) {
			return nil
		}
		node.Spec.Taints = kept
		_, err = client.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("remove the not-ready taint of node %s: %w", name, err)
	}
	return nil
}

// hasNotReadyTaint reports whether the named node still carries the
// not-ready or unreachable taint.
func hasNotReadyTaint(ctx context.Context, client kubernetes.Interface, name string) (bool, error) {
	node, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, err
	}
	for _, taint := range node.Spec.Taints {
		if taint.Key == corev1.TaintNodeNotReady || taint.Key == corev1.TaintNodeUnreachable {
			return true, nil
		}
	}
	return false, nil
}

// nodeReady reports whether the named node exists and is Ready.
func nodeReady(ctx context.Context, client kubernetes.Interface, name string) (bool, string, error) {
	node, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, "not registered", nil
	}
	if err != nil {
		return false, "", err
	}
	for _, condition := range node.Status.Conditions {
		if condition.Type == corev1.NodeReady {
			return condition.Status == corev1.ConditionTrue, condition.Message, nil
		}
	}
	return false, "no Ready condition", nil
}
