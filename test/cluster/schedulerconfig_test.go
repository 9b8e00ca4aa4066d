package cluster

import (
	"reflect"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func TestRenderSchedulerConfig(t *testing.T) {
	const kubeconfig = "/cluster/pki/kube-scheduler.kubeconfig"
	extender := "- urlPrefix: http://127.0.0.1:8888\n  filterVerb: filter\n  nodeCacheCapable: true"
	tests := []struct {
		name    string
		config  string
		want    map[string]any // dotted path (numbers index lists) -> value
		wantErr string
	}{
		{
			name:   "default config gets the scheduler's kubeconfig and no leader election",
			config: DefaultSchedulerConfig(""),
			want: map[string]any{
				"apiVersion":                  schedulerConfigAPIVersion,
				"clientConnection.kubeconfig": kubeconfig,
				"leaderElection.leaderElect":  false,
				"extenders":                   nil,
			},
		},
		{
			name:   "extenders are rendered under extenders",
			config: DefaultSchedulerConfig(extender),
			want: map[string]any{
				"extenders.0.urlPrefix":        "http://127.0.0.1:8888",
				"extenders.0.nodeCacheCapable": true,
				"clientConnection.kubeconfig":  kubeconfig,
			},
		},
		{
			name:   "caller's kubeconfig and other client settings are kept",
			config: "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nclientConnection:\n  kubeconfig: /mine\n  qps: 500\n",
			want:   map[string]any{"clientConnection.kubeconfig": "/mine", "clientConnection.qps": float64(500)},
		},
		{
			name:    "another kind is rejected",
			config:  "apiVersion: v1\nkind: ConfigMap\n",
			wantErr: "want KubeSchedulerConfiguration",
		},
		{
			name:    "missing apiVersion is rejected",
			config:  "kind: KubeSchedulerConfiguration\n",
			wantErr: "no apiVersion",
		},
		{
			name:    "invalid YAML is rejected",
			config:  "kind: [",
			wantErr: "parse scheduler config",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := renderSchedulerConfig(tt.config, kubeconfig)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("renderSchedulerConfig: %v", err)
			}
			var doc any
			if err := yaml.Unmarshal(out, &doc); err != nil {
				t.Fatalf("rendered config is not YAML: %v\n%s", err, out)
			}
			for path, want := range tt.want {
				if got := lookup(doc, path); !reflect.DeepEqual(got, want) {
					t.Errorf("%s = %#v, want %#v in\n%s", path, got, want, out)
				}
			}
		})
	}
}

// lookup follows a dotted path of map keys and list indexes through doc.
func lookup(doc any, path string) any {
	for key := range strings.SplitSeq(path, ".") {
		switch node := doc.(type) {
		case map[string]any:
			doc = node[key]
		case []any:
			i, err := strconv.Atoi(key)
			if err != nil || i < 0 || i >= len(node) {
				return nil
			}
			doc = node[i]
		default:
			return nil
		}
	}
	return doc
}
