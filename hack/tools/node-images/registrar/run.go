package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// Options are the registrar's flags.
type Options struct {
	CSIAddress              string
	KubeletRegistrationPath string
	RegistrationDir         string
	HTTPEndpoint            string
	ConnectTimeout          time.Duration
}

// Run registers the driver and serves until ctx ends or the kubelet reports
// that registration failed; then the socket is removed so the kubelet does
// not dial a dead registrar.
func Run(ctx context.Context, opts Options) error {
	if opts.KubeletRegistrationPath == "" {
		return errors.New("--kubelet-registration-path is required")
	}
	driverName, err := waitForDriverName(ctx, opts.CSIAddress, opts.ConnectTimeout)
	if err != nil {
		return err
	}
	klog.InfoS("CSI driver found", "driver", driverName, "csiAddress", opts.CSIAddress)
	socketPath := filepath.Join(opts.RegistrationDir, driverName+"-reg.sock")
	// A socket left by a previous container would refuse the bind.
	if err := os.Remove(socketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", socketPath, err)
	}
	listener, err := net.Listen("unix", socketPath)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", socketPath, err)
	}
	defer func() { _ = os.Remove(socketPath) }()

	registration := newRegistrationServer(driverName, opts.KubeletRegistrationPath)
	server := grpc.NewServer()
	registerapi.RegisterRegistrationServer(server, registration)
	serveErr := make(chan error, 1)
	go func() { serveErr <- server.Serve(listener) }()
	defer server.Stop()
	klog.InfoS("Serving plugin registration", "socket", socketPath, "endpoint", opts.KubeletRegistrationPath)

	if opts.HTTPEndpoint != "" {
		healthServer := &http.Server{Addr: opts.HTTPEndpoint, Handler: healthHandler(socketPath, registration), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := healthServer.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				klog.ErrorS(err, "Health endpoint stopped", "address", opts.HTTPEndpoint)
			}
		}()
		defer func() { _ = healthServer.Close() }()
	}

	select {
	case <-ctx.Done():
		klog.InfoS("Stopping", "reason", context.Cause(ctx))
		return nil
	case err := <-serveErr:
		return fmt.Errorf("serve registration: %w", err)
	case err := <-registration.failed:
		// Exiting lets the kubelet restart the container, which registers
		// again from scratch, as the upstream registrar does.
		return err
	}
}

// waitForDriverName asks the driver its name, retrying until it answers:
// the driver container may start after this one.
func waitForDriverName(ctx context.Context, address string, callTimeout time.Duration) (string, error) {
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", fmt.Errorf("dial CSI driver at %s: %w", address, err)
	}
	defer func() { _ = conn.Close() }()
	identity := csi.NewIdentityClient(conn)
	for {
		callCtx, cancel := context.WithTimeout(ctx, callTimeout)
		info, err := identity.GetPluginInfo(callCtx, &csi.GetPluginInfoRequest{})
		cancel()
		if err == nil && info.GetName() != "" {
			return info.GetName(), nil
		}
		klog.V(2).InfoS("CSI driver not answering yet", "csiAddress", address, "err", err)
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("CSI driver at %s never answered GetPluginInfo: %w", address, errors.Join(err, ctx.Err()))
		case <-time.After(time.Second):
		}
	}
}

// registrationServer answers the kubelet's plugin watcher.
type registrationServer struct {
	registerapi.UnimplementedRegistrationServer
	driverName string
	endpoint   string

	mu         sync.Mutex
	registered bool
	failed     chan error
}

func newRegistrationServer(driverName, endpoint string) *registrationServer {
	return &registrationServer{driverName: driverName, endpoint: endpoint, failed: make(chan error, 1)}
}

// GetInfo tells the kubelet what registers and which socket to dial.
func (s *registrationServer) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              s.driverName,
		Endpoint:          s.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

// NotifyRegistrationStatus records the kubelet's verdict; a refusal ends
// the registrar.
func (s *registrationServer) NotifyRegistrationStatus(_ context.Context, status *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	s.mu.Lock()
	s.registered = status.GetPluginRegistered()
	s.mu.Unlock()
	if !status.GetPluginRegistered() {
		klog.ErrorS(nil, "Kubelet refused the registration", "driver", s.driverName, "error", status.GetError())
		select {
		case s.failed <- fmt.Errorf("kubelet refused registration of %s: %s", s.driverName, status.GetError()):
		default:
		}
		return &registerapi.RegistrationStatusResponse{}, nil
	}
	klog.InfoS("Registered with the kubelet", "driver", s.driverName)
	return &registerapi.RegistrationStatusResponse{}, nil
}

func (s *registrationServer) isRegistered() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.registered
}

// healthHandler serves /healthz: healthy while the registration socket
// exists and the kubelet has accepted the driver. A socket removed under
// the registrar (the kubelet's directory wiped) makes it unhealthy, so the
// kubelet restarts it and registration happens again.
func healthHandler(socketPath string, registration *registrationServer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if _, err := os.Stat(socketPath); err != nil {
			http.Error(w, fmt.Sprintf("registration socket: %v", err), http.StatusServiceUnavailable)
			return
		}
		if !registration.isRegistered() {
			http.Error(w, "not registered with the kubelet yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	return mux
}
