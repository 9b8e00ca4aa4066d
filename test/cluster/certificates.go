package cluster

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// kubeletAPIAdminRole is the bootstrap ClusterRole that lets its holder use
// every kubelet API (logs, exec, port-forward, metrics, nodes/proxy).
const kubeletAPIAdminRole = "system:kubelet-api-admin"

// bindKubeletClient lets the API server's kubelet client identity use the
// kubelet API, so kubelets can authorize it by webhook (SubjectAccessReview)
// instead of allowing everyone.
func bindKubeletClient(ctx context.Context, client kubernetes.Interface) error {
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "toposnap:" + kubeletClientUser},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: kubeletAPIAdminRole},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: kubeletClientUser}},
	}
	_, err := client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("bind %s to %s: %w", kubeletClientUser, kubeletAPIAdminRole, err)
	}
	return nil
}

// CAFile is the path of the cluster's CA certificate (PEM): it signs every
// certificate of the cluster, and clients and kubelets trust it.
func (c *Cluster) CAFile() string { return c.layout.pki("ca.crt") }

// IssueClientCertificate signs a client certificate for user in groups
// with the cluster's CA, e.g. a kubelet's system:node:<name> in
// system:nodes. It returns the certificate and its new key, PEM encoded.
func (c *Cluster) IssueClientCertificate(user string, groups ...string) (certPEM, keyPEM []byte, err error) {
	return c.issue(clientSpec(user, groups...))
}

// IssueServingCertificate signs a serving certificate for the given names
// and addresses with the cluster's CA, which the API server verifies
// kubelets against (--kubelet-certificate-authority).
func (c *Cluster) IssueServingCertificate(commonName string, dnsNames []string, ips []net.IP) (certPEM, keyPEM []byte, err error) {
	return c.issue(certSpec{commonName: commonName, dnsNames: dnsNames, ips: ips, usage: x509.ExtKeyUsageServerAuth})
}

// RunsNodeLifecycleController says whether the controller manager runs the
// node lifecycle controller (Options.NodeLifecycleController): then it, not
// whoever starts a kubelet, takes a Ready node's not-ready taint off.
func (c *Cluster) RunsNodeLifecycleController() bool { return c.nodeLifecycle }

func (c *Cluster) issue(spec certSpec) (certPEM, keyPEM []byte, err error) {
	if c.ca == nil {
		return nil, nil, fmt.Errorf("issue a certificate for %q: this cluster holds no CA", spec.commonName)
	}
	pair, err := c.ca.issue(spec, time.Now())
	if err != nil {
		return nil, nil, err
	}
	return pair.CertPEM, pair.KeyPEM, nil
}
