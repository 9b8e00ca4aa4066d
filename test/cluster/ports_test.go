package cluster

import (
	"fmt"
	"net"
	"testing"
)

func TestFreePortsAreDistinctAndBindable(t *testing.T) {
	for _, n := range []int{0, 1, 5, 20} {
		t.Run(fmt.Sprintf("%d ports", n), func(t *testing.T) {
			ports, err := freePorts(n)
			if err != nil {
				t.Fatalf("freePorts(%d): %v", n, err)
			}
			seen := map[int]bool{}
			for _, port := range ports {
				if seen[port] {
					t.Fatalf("port %d returned twice in %v", port, ports)
				}
				seen[port] = true
				l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
				if err != nil {
					t.Fatalf("port %d is not free: %v", port, err)
				}
				_ = l.Close()
			}
			if len(ports) != n {
				t.Errorf("got %d ports, want %d", len(ports), n)
			}
		})
	}
}
