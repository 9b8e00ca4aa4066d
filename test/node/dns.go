package node

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/klog/v2"
)

// clusterDNS answers A queries for <service>.<namespace>.svc.<domain> with
// the Service's ClusterIP, which is all the pods here resolve (the chart's
// scheduler finds the extender that way). Names it does not own are refused:
// pods here reach nothing beyond this machine anyway.
type clusterDNS struct {
	domain   string // "cluster.local"
	services corelisters.ServiceLister
	udp      net.PacketConn
	tcp      net.Listener
}

// answer builds the response to one query message.
func (d *clusterDNS) answer(query []byte) ([]byte, error) {
	var parser dnsmessage.Parser
	header, err := parser.Start(query)
	if err != nil {
		return nil, err
	}
	question, err := parser.Question()
	if err != nil {
		return nil, err
	}
	response := dnsmessage.Header{ID: header.ID, Response: true, Authoritative: true, RecursionDesired: header.RecursionDesired}
	address, owned, found := d.lookup(question.Name.String())
	switch {
	case !owned:
		response.Authoritative = false
		response.RCode = dnsmessage.RCodeRefused
	case !found:
		response.RCode = dnsmessage.RCodeNameError
	}
	builder := dnsmessage.NewBuilder(nil, response)
	builder.EnableCompression()
	if err := builder.StartQuestions(); err != nil {
		return nil, err
	}
	if err := builder.Question(question); err != nil {
		return nil, err
	}
	if err := builder.StartAnswers(); err != nil {
		return nil, err
	}
	// A name that exists answers AAAA and other types with no record
	// (NODATA), so resolvers go on with the A record.
	if found && question.Type == dnsmessage.TypeA && question.Class == dnsmessage.ClassINET {
		header := dnsmessage.ResourceHeader{Name: question.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 5}
		if err := builder.AResource(header, dnsmessage.AResource{A: address.As4()}); err != nil {
			return nil, err
		}
	}
	return builder.Finish()
}

// lookup resolves a fully qualified name: owned says whether it is under
// the cluster domain, found whether a Service with a ClusterIP has it.
func (d *clusterDNS) lookup(fqdn string) (address netip.Addr, owned, found bool) {
	name := strings.ToLower(strings.TrimSuffix(fqdn, "."))
	suffix := ".svc." + d.domain
	if name != d.domain && !strings.HasSuffix(name, "."+d.domain) {
		return netip.Addr{}, false, false
	}
	rest, ok := strings.CutSuffix(name, suffix)
	if !ok {
		return netip.Addr{}, true, false
	}
	service, namespace, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(namespace, ".") {
		return netip.Addr{}, true, false
	}
	svc, err := d.services.Services(namespace).Get(service)
	if err != nil {
		if !apierrors.IsNotFound(err) {
			klog.ErrorS(err, "DNS lookup", "name", fqdn)
		}
		return netip.Addr{}, true, false
	}
	address, err = netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil || !address.Is4() {
		return netip.Addr{}, true, false
	}
	return address, true, true
}

// serve answers on UDP and TCP at address (host:53) until close.
func (d *clusterDNS) serve(address string) error {
	var err error
	if d.udp, err = net.ListenPacket("udp4", address); err != nil {
		return err
	}
	if d.tcp, err = net.Listen("tcp4", address); err != nil {
		_ = d.udp.Close()
		return err
	}
	go d.serveUDP()
	go d.serveTCP()
	return nil
}

func (d *clusterDNS) serveUDP() {
	buf := make([]byte, 1500)
	for {
		n, from, err := d.udp.ReadFrom(buf)
		if err != nil {
			return
		}
		reply, err := d.answer(buf[:n])
		if err != nil {
			continue // not a DNS query: nothing to answer
		}
		_, _ = d.udp.WriteTo(reply, from)
	}
}

func (d *clusterDNS) serveTCP() {
	for {
		conn, err := d.tcp.Accept()
		if err != nil {
			return
		}
		go func() {
			defer func() { _ = conn.Close() }()
			for {
				_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
				var length [2]byte
				if _, err := io.ReadFull(conn, length[:]); err != nil {
					return
				}
				query := make([]byte, binary.BigEndian.Uint16(length[:]))
				if _, err := io.ReadFull(conn, query); err != nil {
					return
				}
				reply, err := d.answer(query)
				if err != nil {
					return
				}
				if _, err := conn.Write(binary.BigEndian.AppendUint16(nil, uint16(len(reply)))); err != nil {
					return
				}
				if _, err := conn.Write(reply); err != nil {
					return
				}
			}
		}()
	}
}

func (d *clusterDNS) close() error {
	var errs []error
	if d.udp != nil {
		errs = append(errs, d.udp.Close())
	}
	if d.tcp != nil {
		errs = append(errs, d.tcp.Close())
	}
	return errors.Join(errs...)
}
