package cluster

import (
	"crypto/x509"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// What the cluster issues for a real node verifies as the API server and
// the kubelet need: the kubelet's serving certificate for its InternalIP
// only, its client certificate as system:node:<name> in system:nodes, and
// nothing without a CA.
func TestIssuedNodeCertificates(t *testing.T) {
	ca := mustAuthority(t, "test-ca", time.Now())
	c := &Cluster{ca: ca}
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)

	certPEM, keyPEM, err := c.IssueServingCertificate("node-a", []string{"node-a"}, []net.IP{net.ParseIP("10.244.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	serving := parseLeaf(t, keyPair{CertPEM: certPEM, KeyPEM: keyPEM})
	for host, valid := range map[string]bool{"10.244.0.1": true, "node-a": true, "127.0.0.1": false} {
		_, err := serving.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		if (err == nil) != valid {
			t.Errorf("serving certificate for %s: verify error %v, want valid %v", host, err, valid)
		}
	}

	certPEM, keyPEM, err = c.IssueClientCertificate("system:node:node-a", "system:nodes")
	if err != nil {
		t.Fatal(err)
	}
	client := parseLeaf(t, keyPair{CertPEM: certPEM, KeyPEM: keyPEM})
	if _, err := client.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate does not verify: %v", err)
	}
	if client.Subject.CommonName != "system:node:node-a" || !slices.Equal(client.Subject.Organization, []string{"system:nodes"}) {
		t.Errorf("client subject = %v", client.Subject)
	}

	if _, _, err := (&Cluster{}).IssueClientCertificate("anyone"); err == nil {
		t.Error("a cluster without a CA issued a certificate")
	}
}

// The API server reaches kubelets by InternalIP with its own client
// certificate, which is not in system:masters, and verifies them.
func TestAPIServerTalksToKubeletsAsItself(t *testing.T) {
	args := strings.Join(apiserverArgs(layout{"/c"}, ports{}), " ")
	for _, want := range []string{
		"--kubelet-preferred-address-types=InternalIP,",
		"--kubelet-client-certificate=/c/pki/apiserver-kubelet-client.crt",
		"--kubelet-client-key=/c/pki/apiserver-kubelet-client.key",
		"--kubelet-certificate-authority=/c/pki/ca.crt",
		"--enable-aggregator-routing=true",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("kube-apiserver args lack %s", want)
		}
	}
	creds, err := newCredentials(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	leaf := parseLeaf(t, creds.kubeletClient)
	if leaf.Subject.CommonName != kubeletClientUser || len(leaf.Subject.Organization) != 0 {
		t.Errorf("kubelet client subject = %v, want CN=%s and no group", leaf.Subject, kubeletClientUser)
	}
}

// The node lifecycle controller runs only when asked, and only for real
// kubelets.
func TestNodeLifecycleController(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr bool
		want    string
	}{
		{"off by default", Options{BinDir: "/b", Dir: "/d"}, false, "--controllers=*,-node-lifecycle-controller"},
		{"on for real kubelets", Options{BinDir: "/b", Dir: "/d", WithoutKwok: true, Nodes: nil, NodeLifecycleController: true}, false, "--controllers=*"},
		{"refused with kwok", Options{BinDir: "/b", Dir: "/d", NodeLifecycleController: true}, true, ""},
		{"refused with fake nodes", Options{BinDir: "/b", Dir: "/d", WithoutKwok: true, Nodes: SeedNodes(), NodeLifecycleController: true}, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, _, err := tt.opts.withDefaults()
			if (err != nil) != tt.wantErr {
				t.Fatalf("withDefaults error = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if opts.NodeLifecycleController && len(opts.Nodes) != 0 {
				t.Errorf("fake nodes %v registered beside real kubelets", nodeNames(opts.Nodes))
			}
			args := controllerManagerArgs(layout{opts.Dir}, ports{}, opts.NodeLifecycleController)
			if !slices.Contains(args, tt.want) {
				t.Errorf("controller manager args %v lack %s", args, tt.want)
			}
		})
	}
}
