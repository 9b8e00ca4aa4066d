package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// serviceProxy makes Services reachable on this machine, as kube-proxy would
// but in user space and without iptables: each ClusterIP is added to the
// loopback interface and every TCP port of the Service is a listener that
// forwards connections to a ready endpoint. Pods reach those addresses
// through their route to the service CIDR (cni.go), the API server (which
// calls webhooks at their ClusterIP) and the host directly.
//
// The "kubernetes" Service has no endpoints here (the API server runs with
// --endpoint-reconciler-type=none on loopback), so it forwards to the API
// server's own loopback address.
type serviceProxy struct {
	apiserver string   // host:port the kubernetes Service forwards to
	skip      []string // namespace/name of Services served otherwise (the DNS)
	services  corelisters.ServiceLister
	slices    discoverylisters.EndpointSliceLister

	mu        sync.Mutex
	listeners map[string]*portListener // by ip:port
	addresses map[netip.Addr]bool      // added to loopback by us
	next      atomic.Uint64            // round-robin over endpoints
	stopped   bool
}

// portListener forwards one ClusterIP:port.
type portListener struct {
	listener net.Listener
	service  string // namespace/name
	portName string
}

// newServiceProxy builds the proxy on informers from factory, which the
// caller starts.
func newServiceProxy(factory informers.SharedInformerFactory, apiserver string, skip ...string) *serviceProxy {
	p := &serviceProxy{
		apiserver: apiserver,
		skip:      skip,
		services:  factory.Core().V1().Services().Lister(),
		slices:    factory.Discovery().V1().EndpointSlices().Lister(),
		listeners: map[string]*portListener{},
		addresses: map[netip.Addr]bool{},
	}
	resync := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { p.sync() },
		UpdateFunc: func(any, any) { p.sync() },
		DeleteFunc: func(any) { p.sync() },
	}
	_, _ = factory.Core().V1().Services().Informer().AddEventHandler(resync)
	return p
}

// desiredPort is one ClusterIP:port a Service asks for.
type desiredPort struct {
	address  netip.Addr
	port     int32
	service  string
	portName string
}

// desiredPorts lists the TCP ClusterIP ports of services, leaving out
// headless ones, those without a ClusterIP and the skipped ones.
func desiredPorts(services []*corev1.Service, skip []string) map[string]desiredPort {
	want := map[string]desiredPort{}
	for _, svc := range services {
		key := svc.Namespace + "/" + svc.Name
		if containsString(skip, key) {
			continue
		}
		address, err := netip.ParseAddr(svc.Spec.ClusterIP)
		if err != nil || !address.Is4() {
			continue // "", "None" or IPv6: nothing to serve
		}
		for _, port := range svc.Spec.Ports {
			if port.Protocol != "" && port.Protocol != corev1.ProtocolTCP {
				continue
			}
			ipPort := net.JoinHostPort(address.String(), strconv.Itoa(int(port.Port)))
			want[ipPort] = desiredPort{address: address, port: port.Port, service: key, portName: port.Name}
		}
	}
	return want
}

// sync opens listeners for new Service ports and closes those of removed
// ones. Failures are logged and retried at the next change.
func (p *serviceProxy) sync() {
	services, err := p.services.List(labels.Everything())
	if err != nil {
		klog.ErrorS(err, "List Services")
		return
	}
	want := desiredPorts(services, p.skip)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return
	}
	for ipPort, l := range p.listeners {
		if d, ok := want[ipPort]; !ok || d.service != l.service || d.portName != l.portName {
			_ = l.listener.Close()
			delete(p.listeners, ipPort)
		}
	}
	for ipPort, d := range want {
		if _, ok := p.listeners[ipPort]; ok {
			continue
		}
		if err := p.addAddress(d.address); err != nil {
			klog.ErrorS(err, "Add Service address", "service", d.service, "address", d.address)
			continue
		}
		listener, err := net.Listen("tcp4", ipPort)
		if err != nil {
			klog.ErrorS(err, "Listen for Service", "service", d.service, "address", ipPort)
			continue
		}
		l := &portListener{listener: listener, service: d.service, portName: d.portName}
		p.listeners[ipPort] = l
		go p.serve(l)
		klog.V(2).InfoS("Proxying Service", "service", d.service, "port", d.portName, "address", ipPort)
	}
}

// addAddress puts address on the loopback interface, once.
func (p *serviceProxy) addAddress(address netip.Addr) error {
	if p.addresses[address] {
		return nil
	}
	if err := addLoopbackAddress(address); err != nil {
		return err
	}
	p.addresses[address] = true
	return nil
}

// serve accepts connections until the listener closes.
func (p *serviceProxy) serve(l *portListener) {
	for {
		conn, err := l.listener.Accept()
		if err != nil {
			return
		}
		go p.forward(conn, l)
	}
}

// forward connects conn to an endpoint of the listener's Service and copies
// both ways until either side closes.
func (p *serviceProxy) forward(conn net.Conn, l *portListener) {
	defer func() { _ = conn.Close() }()
	targets, err := p.endpoints(l.service, l.portName)
	if err != nil || len(targets) == 0 {
		klog.V(2).InfoS("No endpoint for Service", "service", l.service, "port", l.portName, "err", err)
		return
	}
	start := int(p.next.Add(1))
	var upstream net.Conn
	for i := range targets {
		target := targets[(start+i)%len(targets)]
		if upstream, err = net.DialTimeout("tcp", target, 5*time.Second); err == nil {
			break
		}
		klog.V(2).InfoS("Endpoint unreachable", "service", l.service, "endpoint", target, "err", err)
	}
	if upstream == nil {
		return
	}
	defer func() { _ = upstream.Close() }()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tcp, ok := dst.(*net.TCPConn); ok {
			_ = tcp.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(upstream, conn)
	go pipe(conn, upstream)
	<-done
	<-done
}

// endpoints lists host:port of the ready endpoints of a Service's port.
func (p *serviceProxy) endpoints(service, portName string) ([]string, error) {
	if service == "default/kubernetes" {
		return []string{p.apiserver}, nil
	}
	namespace, name, _ := strings.Cut(service, "/")
	selector := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name})
	slices, err := p.slices.EndpointSlices(namespace).List(selector)
	if err != nil {
		return nil, err
	}
	return readyTargets(slices, portName), nil
}

// readyTargets are the ready IPv4 endpoints of the named port across slices.
func readyTargets(slices []*discoveryv1.EndpointSlice, portName string) []string {
	var targets []string
	for _, slice := range slices {
		if slice.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		var port *int32
		for _, p := range slice.Ports {
			if p.Name != nil && *p.Name == portName && p.Port != nil {
				port = p.Port
			}
		}
		if port == nil {
			continue
		}
		for _, endpoint := range slice.Endpoints {
			if endpoint.Conditions.Ready != nil && !*endpoint.Conditions.Ready {
				continue
			}
			for _, address := range endpoint.Addresses {
				targets = append(targets, net.JoinHostPort(address, strconv.Itoa(int(*port))))
			}
		}
	}
	return targets
}

// stop closes every listener and removes the addresses it added.
func (p *serviceProxy) stop() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = true
	for ipPort, l := range p.listeners {
		_ = l.listener.Close()
		delete(p.listeners, ipPort)
	}
	var errs []error
	for address := range p.addresses {
		if err := removeLoopbackAddress(address); err != nil {
			errs = append(errs, err)
		}
		delete(p.addresses, address)
	}
	return errors.Join(errs...)
}

// addLoopbackAddress adds address/32 to lo; one already there is fine.
func addLoopbackAddress(address netip.Addr) error {
	out, err := exec.Command("ip", "addr", "add", address.String()+"/32", "dev", "lo").CombinedOutput()
	if err != nil && !strings.Contains(string(out), "File exists") {
		return fmt.Errorf("ip addr add %s dev lo: %w: %s", address, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// removeLoopbackAddress removes address/32 from lo; one already gone is fine.
func removeLoopbackAddress(address netip.Addr) error {
	out, err := exec.Command("ip", "addr", "del", address.String()+"/32", "dev", "lo").CombinedOutput()
	if err != nil && !strings.Contains(string(out), "Cannot assign") {
		return fmt.Errorf("ip addr del %s dev lo: %w: %s", address, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func containsString(list []string, s string) bool {
	for _, item := range list {
		if item == s {
			return true
		}
	}
	return false
}

// waitForInformers waits for the informers' first lists.
func waitForInformers(ctx context.Context, factory informers.SharedInformerFactory) error {
	for informer, synced := range factory.WaitForCacheSync(ctx.Done()) {
		if !synced {
			return fmt.Errorf("informer %v never synced", informer)
		}
	}
	return nil
}
