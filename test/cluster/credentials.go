package cluster

import (
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ServiceCIDR is the cluster's Service range (--service-cluster-ip-range);
// its first address is the "kubernetes" Service, which the serving
// certificate must name. A real node (test/node) routes and proxies it.
const (
	ServiceCIDR           = "10.96.0.0/16"
	serviceClusterIPRange = ServiceCIDR
	kubernetesServiceIP   = "10.96.0.1"
)

// Identities of the control plane's clients. The component names match the
// users the API server's bootstrap RBAC policy already grants, as in kubeadm.
const (
	adminUser             = "kubernetes-admin"
	mastersGroup          = "system:masters"
	controllerManagerUser = "system:kube-controller-manager"
	schedulerUser         = "system:kube-scheduler"
	kubeconfigCluster     = "toposnap"
	// kubeletClientUser is the API server's identity towards kubelets (logs,
	// exec, port-forward, nodes/proxy), bound to system:kubelet-api-admin
	// rather than put in system:masters, as kubeadm's apiserver-kubelet-client.
	kubeletClientUser = "kube-apiserver-kubelet-client"
)

// credentials are every certificate and key of one cluster.
type credentials struct {
	ca                *authority
	apiserver         keyPair
	admin             keyPair
	controllerManager keyPair
	scheduler         keyPair
	kubeletClient     keyPair
	// loopbackServing is the serving certificate of the controller manager
	// and the scheduler, so their health endpoints verify against the CA.
	loopbackServing keyPair
	// serviceAccountKey signs service-account tokens; serviceAccountPublic verifies them.
	serviceAccountKey    []byte
	serviceAccountPublic []byte
}

// newCredentials creates a CA and everything it signs for one cluster.
func newCredentials(now time.Time) (*credentials, error) {
	ca, err := newAuthority("toposnap-ca", now)
	if err != nil {
		return nil, err
	}
	creds := &credentials{ca: ca}
	leaves := []struct {
		spec certSpec
		into *keyPair
	}{
		{apiserverServingSpec(), &creds.apiserver},
		{clientSpec(adminUser, mastersGroup), &creds.admin},
		{clientSpec(controllerManagerUser), &creds.controllerManager},
		{clientSpec(schedulerUser), &creds.scheduler},
		{clientSpec(kubeletClientUser), &creds.kubeletClient},
		{loopbackServingSpec(), &creds.loopbackServing},
	}
	for _, leaf := range leaves {
		if *leaf.into, err = ca.issue(leaf.spec, now); err != nil {
			return nil, err
		}
	}
	creds.serviceAccountKey, creds.serviceAccountPublic, err = newServiceAccountKey()
	if err != nil {
		return nil, err
	}
	return creds, nil
}

// apiserverServingSpec names every address a client inside or outside the
// cluster may use for the API server.
func apiserverServingSpec() certSpec {
	return certSpec{
		commonName: "kube-apiserver",
		dnsNames: []string{
			"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local",
		},
		ips:   []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP(kubernetesServiceIP)},
		usage: x509.ExtKeyUsageServerAuth,
	}
}

// loopbackServingSpec is for components that serve only on 127.0.0.1.
func loopbackServingSpec() certSpec {
	return certSpec{
		commonName: "kube-control-plane-loopback",
		dnsNames:   []string{"localhost"},
		ips:        []net.IP{net.ParseIP("127.0.0.1")},
		usage:      x509.ExtKeyUsageServerAuth,
	}
}

// clientSpec is a client certificate for user in groups; the API server maps
// CN to the user name and O to groups.
func clientSpec(user string, groups ...string) certSpec {
	return certSpec{commonName: user, organizations: groups, usage: x509.ExtKeyUsageClientAuth}
}

// write stores the credentials the components read from files, with private
// keys readable only by their owner.
func (c *credentials) write(l layout) error {
	files := []struct {
		name    string
		content []byte
		mode    os.FileMode
	}{
		{"ca.crt", c.ca.pair.CertPEM, 0o644},
		{"ca.key", c.ca.pair.KeyPEM, 0o600},
		{"apiserver.crt", c.apiserver.CertPEM, 0o644},
		{"apiserver.key", c.apiserver.KeyPEM, 0o600},
		{"loopback-serving.crt", c.loopbackServing.CertPEM, 0o644},
		{"loopback-serving.key", c.loopbackServing.KeyPEM, 0o600},
		{"apiserver-kubelet-client.crt", c.kubeletClient.CertPEM, 0o644},
		{"apiserver-kubelet-client.key", c.kubeletClient.KeyPEM, 0o600},
		{"sa.key", c.serviceAccountKey, 0o600},
		{"sa.pub", c.serviceAccountPublic, 0o644},
	}
	for _, f := range files {
		if err := os.WriteFile(l.pki(f.name), f.content, f.mode); err != nil {
			return fmt.Errorf("write %s: %w", f.name, err)
		}
	}
	return nil
}

// writeKubeconfigs writes the admin kubeconfig and one per component, each
// self-contained (certificates embedded) and pointing at server.
func (c *credentials) writeKubeconfigs(l layout, server string) error {
	kubeconfigs := []struct {
		path string
		user string
		pair keyPair
	}{
		{l.adminKubeconfig(), adminUser, c.admin},
		{l.componentKubeconfig(componentControllerManager), controllerManagerUser, c.controllerManager},
		{l.componentKubeconfig(componentScheduler), schedulerUser, c.scheduler},
	}
	for _, k := range kubeconfigs {
		if err := writeKubeconfig(k.path, server, c.ca.pair.CertPEM, k.user, k.pair); err != nil {
			return err
		}
	}
	return nil
}

// writeKubeconfig writes a kubeconfig for user, authenticated by pair, to path.
func writeKubeconfig(path, server string, caPEM []byte, user string, pair keyPair) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[kubeconfigCluster] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: pair.CertPEM, ClientKeyData: pair.KeyPEM}
	cfg.Contexts[kubeconfigCluster] = &clientcmdapi.Context{Cluster: kubeconfigCluster, AuthInfo: user}
	cfg.CurrentContext = kubeconfigCluster
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}
