package node

import (
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// containerd's config carries what this VM needs and keeps all state under
// the node's directory.
func TestContainerdConfig(t *testing.T) {
	config, err := renderContainerdConfig(containerdSettings{
		Root: "/n/root", State: "/n/state", Socket: "/n/containerd.sock", Opt: "/n/opt",
		SandboxImage: SandboxImage, CNIBinDir: "/usr/lib/cni", CNIConfDir: "/n/net.d",
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"restrict_oom_score_adj = true", "SystemdCgroup = false", `sandbox_image = "registry.k8s.io/pause:3.10.2"`,
		`root = "/n/root"`, `state = "/n/state"`, `address = "/n/containerd.sock"`, `conf_dir = "/n/net.d"`,
	} {
		if !strings.Contains(string(config), want) {
			t.Errorf("containerd config lacks %q:\n%s", want, config)
		}
	}
}

// The kubelet runs with what this VM needs (no OOM score change, cgroups v1
// through cgroupfs) and serves its InternalIP as in a real cluster: no
// anonymous access, webhook authentication and authorization.
func TestKubeletConfig(t *testing.T) {
	data, err := kubeletConfig(kubeletSettings{Address: NodeIP, Port: 10250, HealthzPort: 10248, ClusterDNS: ClusterDNSIP, ClusterDomain: ClusterDomain, ImageGCHighPercent: 95,
		ClientCAFile: "/c/ca.crt", TLSCertFile: "/n/kubelet.crt", TLSPrivateKeyFile: "/n/kubelet.key"})
	if err != nil {
		t.Fatal(err)
	}
	var config map[string]any
	if err := yaml.Unmarshal(data, &config); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"oomScoreAdj": float64(0), "failCgroupV1": false, "cgroupDriver": "cgroupfs",
		"address": NodeIP, "readOnlyPort": float64(0), "kind": "KubeletConfiguration",
		"tlsCertFile": "/n/kubelet.crt", "tlsPrivateKeyFile": "/n/kubelet.key",
	}
	for key, value := range want {
		if config[key] != value {
			t.Errorf("kubelet config %s = %v, want %v", key, config[key], value)
		}
	}
	auth := config["authentication"].(map[string]any)
	if auth["anonymous"].(map[string]any)["enabled"] != false || auth["webhook"].(map[string]any)["enabled"] != true ||
		auth["x509"].(map[string]any)["clientCAFile"] != "/c/ca.crt" {
		t.Errorf("kubelet authentication = %v, want no anonymous access, webhook and the cluster's CA", auth)
	}
	if mode := config["authorization"].(map[string]any)["mode"]; mode != "Webhook" {
		t.Errorf("kubelet authorization mode = %v, want Webhook", mode)
	}
}

// Pods get a route to the Services and no default route: nothing they send
// leaves this machine.
func TestCNIConfigRoutesOnlyTheServiceRange(t *testing.T) {
	data, err := cniConfig(bridge, PodSubnet, ServiceCIDR, "/n/ipam")
	if err != nil {
		t.Fatal(err)
	}
	config := string(data)
	if !strings.Contains(config, `"dst": "`+ServiceCIDR+`"`) || strings.Contains(config, "0.0.0.0/0") || !strings.Contains(config, `"ipMasq": false`) {
		t.Fatalf("CNI config routes more than the service range or masquerades:\n%s", config)
	}
}
