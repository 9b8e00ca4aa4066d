// Package node runs a real Kubernetes node beside a test/cluster control
// plane: containerd (Debian's, with its own config, root and socket under
// the node's work directory) and a kubelet v1.37.2, joined with a client
// certificate from the cluster's CA. Pods really run: images are built
// locally (hack/node-images.sh, `make image`) and imported with `ctr -n
// k8s.io images import`, since nothing can be pulled here.
//
// The control plane listens on loopback only and there is neither
// kube-proxy nor cluster DNS, so the node brings the two things pods need
// to reach Services: every ClusterIP is bound on the host's loopback
// interface and proxied in user space to a ready endpoint (the "kubernetes"
// Service to the API server), and a small DNS server answers
// <service>.<namespace>.svc.cluster.local at the kubelet's clusterDNS.
//
// The node claims host-wide names (the loopback addresses of Services, the
// CNI bridge, kubelet's cgroups), so only one node runs on a machine at a
// time: Start takes a lock that a second node waits for.
//
// InstallToposnap installs charts/toposnap on the node with helm and the
// local images. hack/node-setup.sh installs containerd, runc, the CNI
// plugins and busybox; hack/build-node-bins.sh builds the kubelet.
package node
