package startup

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// apiProxy forwards TCP connections to the API server while it is up.
// While it is down nothing listens at its address and the connections it
// carried are cut, as when kube-apiserver restarts: clients get
// "connection refused".
type apiProxy struct {
	address, target string

	mu       sync.Mutex
	listener net.Listener
	conns    map[net.Conn]struct{}
}

// newAPIProxy reserves a loopback address for a proxy to target, down.
func newAPIProxy(target string) (*apiProxy, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("reserve a proxy address: %w", err)
	}
	address := listener.Addr().String()
	listener.Close()
	return &apiProxy{address: address, target: target, conns: map[net.Conn]struct{}{}}, nil
}

// Up starts forwarding.
func (p *apiProxy) Up() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.listener != nil {
		return nil
	}
	listener, err := net.Listen("tcp", p.address)
	if err != nil {
		return fmt.Errorf("proxy listen on %s: %w", p.address, err)
	}
	p.listener = listener
	go p.accept(listener)
	return nil
}

// Down stops listening and cuts every forwarded connection.
func (p *apiProxy) Down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.listener != nil {
		p.listener.Close()
		p.listener = nil
	}
	for conn := range p.conns {
		_ = conn.Close()
		delete(p.conns, conn)
	}
}

func (p *apiProxy) accept(listener net.Listener) {
	for {
		client, err := listener.Accept()
		if err != nil {
			return // closed by Down
		}
		server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			_ = client.Close()
			continue
		}
		if !p.track(client, server) {
			continue
		}
		go p.pipe(client, server)
		go p.pipe(server, client)
	}
}

// track records a forwarded pair, or closes it if the proxy went down
// meanwhile.
func (p *apiProxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.listener == nil {
		for _, conn := range conns {
			_ = conn.Close()
		}
		return false
	}
	for _, conn := range conns {
		p.conns[conn] = struct{}{}
	}
	return true
}

func (p *apiProxy) pipe(to, from net.Conn) {
	_, _ = io.Copy(to, from)
	_ = to.Close()
	_ = from.Close()
	p.mu.Lock()
	delete(p.conns, to)
	delete(p.conns, from)
	p.mu.Unlock()
}

func TestAPIProxyRefusesWhileDown(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			conn, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(conn, conn); _ = conn.Close() }()
		}
	}()
	proxy, err := newAPIProxy(echo.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	refused := func() bool {
		_, err := net.Dial("tcp", proxy.address)
		return errors.Is(err, syscall.ECONNREFUSED)
	}
	if !refused() {
		t.Fatal("a new proxy accepts connections; it starts down")
	}
	if err := proxy.Up(); err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", proxy.address)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	if _, err := conn.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 4)
	if _, err := io.ReadFull(conn, reply); err != nil || string(reply) != "ping" {
		t.Fatalf("through the proxy: %q, %v", reply, err)
	}
	proxy.Down()
	if !refused() {
		t.Fatal("the proxy accepts connections while down")
	}
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Read(reply); err == nil {
		t.Fatal("a connection forwarded before Down still carries data")
	}
	if err := proxy.Up(); err != nil {
		t.Fatalf("up again on the same address: %v", err)
	}
	defer proxy.Down()
	if refused() {
		t.Fatal("the proxy refuses connections once up again")
	}
}
