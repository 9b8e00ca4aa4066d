package node

import (
	"encoding/json"
	"fmt"
)

// cniConfig is the pod network: one Linux bridge on the host with pods on
// host-local addresses in subnet. Pods get no default route, only one to
// serviceCIDR through the bridge's address: they reach each other and the
// Services, whose addresses are this host's (services.go), and nothing
// beyond this machine. No masquerade and no port mapping, so no iptables
// rule is written. containerd adds the loopback interface itself. IPAM
// state lives under the node's directory.
func cniConfig(bridge, subnet, serviceCIDR, ipamDir string) ([]byte, error) {
	config := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "toposnap-node",
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      bridge,
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"dataDir": ipamDir,
					"ranges":  [][]map[string]string{{{"subnet": subnet}}},
					"routes":  []map[string]string{{"dst": serviceCIDR}},
				},
			},
		},
	}
	data, err := json.MarshalIndent(config, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode CNI config: %w", err)
	}
	return data, nil
}
