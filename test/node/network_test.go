package node

import (
	"net"
	"net/netip"
	"reflect"
	"sort"
	"strings"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

func service(namespace, name, clusterIP string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       corev1.ServiceSpec{ClusterIP: clusterIP, Ports: ports},
	}
}

// Only TCP ports of Services with an IPv4 ClusterIP are proxied; the DNS
// Service, served by the node itself, is left out.
func TestDesiredPorts(t *testing.T) {
	services := []*corev1.Service{
		service("default", "kubernetes", "10.96.0.1", corev1.ServicePort{Name: "https", Port: 443, Protocol: corev1.ProtocolTCP}),
		service("kube-system", "kube-dns", "10.96.0.10", corev1.ServicePort{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP}),
		service("ns", "headless", "None", corev1.ServicePort{Name: "web", Port: 80}),
		service("ns", "udp", "10.96.3.3", corev1.ServicePort{Name: "syslog", Port: 514, Protocol: corev1.ProtocolUDP}),
		service("ns", "webhook", "10.96.4.4", corev1.ServicePort{Name: "https", Port: 443}, corev1.ServicePort{Name: "metrics", Port: 8080, Protocol: corev1.ProtocolTCP}),
	}
	got := desiredPorts(services, []string{"kube-system/kube-dns"})
	var keys []string
	for key := range got {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	want := []string{"10.96.0.1:443", "10.96.4.4:443", "10.96.4.4:8080"}
	if !reflect.DeepEqual(keys, want) {
		t.Fatalf("proxied ports = %v, want %v", keys, want)
	}
	if d := got["10.96.4.4:8080"]; d.service != "ns/webhook" || d.portName != "metrics" {
		t.Errorf("10.96.4.4:8080 proxies %s port %q, want ns/webhook port metrics", d.service, d.portName)
	}
}

// Connections go only to ready endpoints of the Service's named port.
func TestReadyTargets(t *testing.T) {
	slices := []*discoveryv1.EndpointSlice{{
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("https"), Port: ptr.To[int32](9443)}, {Name: ptr.To("metrics"), Port: ptr.To[int32](9090)}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.0.5"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
			{Addresses: []string{"10.244.0.6"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}},
			{Addresses: []string{"10.244.0.7"}}, // unknown readiness counts as ready, as in kube-proxy
		},
	}, {
		AddressType: discoveryv1.AddressTypeIPv6,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("https"), Port: ptr.To[int32](9443)}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"fd00::5"}}},
	}}
	got := readyTargets(slices, "https")
	want := []string{"10.244.0.5:9443", "10.244.0.7:9443"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("readyTargets = %v, want %v", got, want)
	}
}

// The cluster DNS answers Service names under the cluster domain, says a
// missing one does not exist (so resolvers try the next search domain),
// and refuses names it does not own.
func TestClusterDNSAnswers(t *testing.T) {
	indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	_ = indexer.Add(service("toposnap-system", "toposnap-extender", "10.96.7.7"))
	_ = indexer.Add(service("ns", "headless", "None"))
	dns := &clusterDNS{domain: "cluster.local", services: corelisters.NewServiceLister(indexer)}
	tests := []struct {
		name     string
		qtype    dnsmessage.Type
		rcode    dnsmessage.RCode
		answerIP string
	}{
		{"toposnap-extender.toposnap-system.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, "10.96.7.7"},
		{"TOPOSNAP-extender.toposnap-system.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, "10.96.7.7"},
		{"toposnap-extender.toposnap-system.svc.cluster.local.", dnsmessage.TypeAAAA, dnsmessage.RCodeSuccess, ""},
		{"toposnap-extender.toposnap-system.svc.toposnap-system.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeNameError, ""},
		{"missing.ns.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeNameError, ""},
		{"headless.ns.svc.cluster.local.", dnsmessage.TypeA, dnsmessage.RCodeNameError, ""},
		{"example.com.", dnsmessage.TypeA, dnsmessage.RCodeRefused, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name+" "+tt.qtype.String(), func(t *testing.T) {
			query := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 42, RecursionDesired: true})
			_ = query.StartQuestions()
			_ = query.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(tt.name), Type: tt.qtype, Class: dnsmessage.ClassINET})
			packet, err := query.Finish()
			if err != nil {
				t.Fatal(err)
			}
			reply, err := dns.answer(packet)
			if err != nil {
				t.Fatalf("answer: %v", err)
			}
			var msg dnsmessage.Message
			if err := msg.Unpack(reply); err != nil {
				t.Fatalf("unpack reply: %v", err)
			}
			var answers []string
			for _, answer := range msg.Answers {
				if a, ok := answer.Body.(*dnsmessage.AResource); ok {
					answers = append(answers, netip.AddrFrom4(a.A).String())
				}
			}
			if msg.ID != 42 || msg.RCode != tt.rcode || strings.Join(answers, ",") != tt.answerIP {
				t.Fatalf("reply id %d rcode %v answers %v; want id 42 rcode %v answers %q", msg.ID, msg.RCode, answers, tt.rcode, tt.answerIP)
			}
		})
	}
}

// The bridge gets a MAC of its own before any pod joins, and keeps the
// node's address: a bridge that borrows its ports' lowest MAC changes it
// under running pods.
func TestBridgeHasAFixedMAC(t *testing.T) {
	steps := bridgeSteps("br0", "02:00:00:00:00:01", "10.244.0.1", "10.244.0.0/24")
	want := [][]string{
		{"link", "add", "name", "br0", "address", "02:00:00:00:00:01", "type", "bridge"},
		{"link", "set", "br0", "address", "02:00:00:00:00:01"},
		{"addr", "add", "10.244.0.1/24", "dev", "br0"},
		{"link", "set", "br0", "up"},
	}
	if !reflect.DeepEqual(steps, want) {
		t.Fatalf("bridge steps = %v, want %v", steps, want)
	}
	if mac, err := net.ParseMAC(bridgeMAC); err != nil || mac[0]&0x02 == 0 || mac[0]&0x01 != 0 {
		t.Errorf("bridgeMAC %s is not a locally administered unicast address (%v)", bridgeMAC, err)
	}
}
