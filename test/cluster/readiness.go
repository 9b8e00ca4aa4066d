package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

const (
	pollInterval = 250 * time.Millisecond
	// readinessTimeout bounds each start-up step; the API server on a busy
	// 2-core machine is the slowest, at ~10 s.
	readinessTimeout = 90 * time.Second
	probeTimeout     = 2 * time.Second
)

// readiness is one start-up condition and the component to blame when it is
// not met in time.
type readiness struct {
	component string
	what      string
	// check returns nil once the condition holds, else why it does not yet.
	check func(ctx context.Context) error
}

// waitFor polls r until it holds, failing early if any component exits.
// Errors quote the log of the component at fault.
func (c *Cluster) waitFor(ctx context.Context, r readiness) error {
	var notYet error
	err := wait.PollUntilContextTimeout(ctx, pollInterval, readinessTimeout, true, func(ctx context.Context) (bool, error) {
		if p := c.exitedProcess(); p != nil {
			return false, p.exitError()
		}
		err := r.check(ctx)
		if err != nil && ctx.Err() != nil {
			// Cut short by the deadline: the previous answer says more.
			return false, nil
		}
		notYet = err
		return err == nil, nil
	})
	if err == nil {
		return nil
	}
	if notYet == nil || !wait.Interrupted(err) {
		return fmt.Errorf("wait for %s: %w", r.what, err)
	}
	tail := ""
	if p := c.process(r.component); p != nil {
		tail = p.logTail()
	}
	return fmt.Errorf("wait for %s: %w; last problem: %w%s", r.what, err, notYet, tail)
}

// etcdHealthy holds once etcd reports itself healthy.
func etcdHealthy(p ports) readiness {
	client := &http.Client{Timeout: probeTimeout}
	url := loopbackURL("http", p.etcdClient) + "/health"
	return readiness{component: componentEtcd, what: "etcd health", check: func(ctx context.Context) error {
		body, err := probe(ctx, client, url)
		if err != nil {
			return err
		}
		if !strings.Contains(body, `"health":"true"`) {
			return fmt.Errorf("etcd reports %s", body)
		}
		return nil
	}}
}

// apiserverReady holds once every /readyz check of the API server passes.
func apiserverReady(client kubernetes.Interface) readiness {
	return readiness{component: componentAPIServer, what: "kube-apiserver /readyz", check: func(ctx context.Context) error {
		_, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err
	}}
}

// componentHealthy holds once a component's health endpoint on the loopback
// port answers 200 over TLS verified against caPEM.
func componentHealthy(component string, port int, path string, caPEM []byte) readiness {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{
		Timeout:   probeTimeout,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}},
	}
	url := loopbackURL("https", port) + path
	return readiness{component: component, what: component + " " + path, check: func(ctx context.Context) error {
		_, err := probe(ctx, client, url)
		return err
	}}
}

// defaultServiceAccount holds once the controller manager has created the
// default namespace's service account, without which no pod can be created.
func defaultServiceAccount(client kubernetes.Interface) readiness {
	return readiness{component: componentControllerManager, what: "service account default/default", check: func(ctx context.Context) error {
		_, err := client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		return err
	}}
}

// nodesUsable holds once every named node is Ready and free of the
// not-ready and unreachable taints.
func nodesUsable(client kubernetes.Interface, names []string) readiness {
	return readiness{component: componentKwok, what: "nodes Ready", check: func(ctx context.Context) error {
		list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		var problems []error
		for _, name := range names {
			if problem := nodeProblem(list.Items, name); problem != "" {
				problems = append(problems, errors.New(problem))
			}
		}
		return errors.Join(problems...)
	}}
}

// kwokHoldsLeases holds once kwok holds every named node's lease, the sign
// that it plays their kubelets and will run the pods bound to them.
func kwokHoldsLeases(client kubernetes.Interface, names []string) readiness {
	return readiness{component: componentKwok, what: "kwok to hold the node leases", check: func(ctx context.Context) error {
		for _, name := range names {
			lease, err := client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
				return fmt.Errorf("lease of node %s has no holder", name)
			}
		}
		return nil
	}}
}

// probe GETs url and returns the body of a 200 answer.
func probe(ctx context.Context, client *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return string(body), nil
}

// nodeNames returns the names of nodes, in order.
func nodeNames(nodes []corev1.Node) []string {
	names := make([]string, len(nodes))
	for i, node := range nodes {
		names[i] = node.Name
	}
	return names
}
