package cluster

import (
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"
)

const (
	schedulerConfigAPIVersion = "kubescheduler.config.k8s.io/v1"
	schedulerConfigKind       = "KubeSchedulerConfiguration"
)

// DefaultSchedulerConfig returns the KubeSchedulerConfiguration Start uses
// when Options.SchedulerConfig is empty, with extenders (a YAML sequence of
// Extender entries, as under the config's "extenders:" key; may be empty)
// added. It leaves clientConnection.kubeconfig unset: Start fills it in.
//
//	cluster.DefaultSchedulerConfig(`- urlPrefix: http://127.0.0.1:8888
//	  filterVerb: filter
//	  nodeCacheCapable: true`)
func DefaultSchedulerConfig(extenders string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: %s\nkind: %s\n", schedulerConfigAPIVersion, schedulerConfigKind)
	b.WriteString("leaderElection:\n  leaderElect: false\n")
	if extenders = strings.TrimSpace(extenders); extenders != "" {
		b.WriteString("extenders:\n")
		for line := range strings.SplitSeq(extenders, "\n") {
			b.WriteString("  " + line + "\n")
		}
	}
	return b.String()
}

// renderSchedulerConfig checks that config is a KubeSchedulerConfiguration and
// points its clientConnection.kubeconfig at kubeconfig unless the config
// already names one. kube-scheduler ignores its --kubeconfig flag when it is
// given --config, so the file must carry the path itself.
func renderSchedulerConfig(config, kubeconfig string) ([]byte, error) {
	var doc map[string]any
	if err := yaml.Unmarshal([]byte(config), &doc); err != nil {
		return nil, fmt.Errorf("parse scheduler config: %w", err)
	}
	if kind, _ := doc["kind"].(string); kind != schedulerConfigKind {
		return nil, fmt.Errorf("scheduler config has kind %q, want %s", kind, schedulerConfigKind)
	}
	if _, ok := doc["apiVersion"].(string); !ok {
		return nil, fmt.Errorf("scheduler config has no apiVersion (want %s)", schedulerConfigAPIVersion)
	}
	connection, ok := doc["clientConnection"].(map[string]any)
	if !ok {
		if doc["clientConnection"] != nil {
			return nil, fmt.Errorf("scheduler config: clientConnection is not a mapping")
		}
		connection = map[string]any{}
		doc["clientConnection"] = connection
	}
	if path, _ := connection["kubeconfig"].(string); path == "" {
		connection["kubeconfig"] = kubeconfig
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("encode scheduler config: %w", err)
	}
	return out, nil
}
