package dataplane

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kas-project/kas/dataplane/agentserver"
	"github.com/kas-project/kas/dataplane/discovery"
	"github.com/kas-project/kas/dataplane/proxy"
	"github.com/kas-project/kas/dataplane/relay"
	"github.com/kas-project/kas/dataplane/tunnel"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/listen"
	"github.com/kas-project/kas/internal/ratelimit"
)

// Options configure a Node. Validate reports every problem at once.
type Options struct {
	// NodeID names the node; stable across restarts (the pod name).
	NodeID string
	// Version is the node's software version, reported to the control plane.
	Version string
	// ControlPlaneURL is where the node calls the control plane
	// (dataplane.controlplane_url): http://, https:// or unix:///path.
	ControlPlaneURL string
	// PrivateAPISecretKey (32 bytes) signs the node's calls to the control
	// plane and to other nodes, and verifies other nodes' calls.
	PrivateAPISecretKey []byte
	// ExtraPrivateAPISecretKeys verify other nodes' calls too, during a key
	// rotation (32 bytes each); nothing signs with them.
	ExtraPrivateAPISecretKeys [][]byte

	// AgentListener (dataplane.agent.listen, 8150) and PrivateAPIListener
	// (dataplane.private_api.listen, 8155) are opened by the caller, for
	// example with listen.Listen. The node closes them.
	AgentListener      net.Listener
	PrivateAPIListener net.Listener
	// KubernetesAPIListener (dataplane.kubernetes_api.listen, 8154), when
	// set, serves the Kubernetes API proxy (package proxy). The node
	// closes it.
	KubernetesAPIListener net.Listener
	// KubernetesAPI tunes the proxy (path prefix, decision cache, clock);
	// its AuthService client, transport, IDs, registry and logger are set
	// by the node.
	KubernetesAPI proxy.Options
	// OwnPrivateAPI holds the raw OWN_PRIVATE_API_* values. Its listener
	// fields are filled in from PrivateAPIListener.
	OwnPrivateAPI discovery.PrivateURLOptions
	// PrivateAPIRootCAs verify other nodes over grpcs://; nil means the
	// system roots (SSL_CERT_FILE and SSL_CERT_DIR are honoured).
	PrivateAPIRootCAs *x509.CertPool

	// Tunnel tunes every agent tunnel.
	Tunnel tunnel.Config
	// DrainDelay is the least time tunnels get to move after GOAWAY before
	// the idle ones are closed (unless all are gone sooner). Default 5 s.
	DrainDelay time.Duration
	// DrainGrace bounds the drain: tunnels still open this long after it
	// began are closed at once. Default 30 s; at least DrainDelay.
	DrainGrace time.Duration
	// DialTimeout bounds DialAgent, retries included, when the agent has
	// tunnels but none answers yet (it is moving between nodes). Default 5 s.
	DialTimeout time.Duration
	// RelayOpenTimeout bounds one relay attempt to another node. Default 3 s.
	RelayOpenTimeout time.Duration
	// ConfigPollInterval is how often the node asks the control plane for
	// new configuration versions of the agents it holds, to deliver them
	// (package agentconfig). Default DefaultConfigPollInterval (3 s).
	ConfigPollInterval time.Duration
	// RetryAfter is sent with the agent endpoint's 503 answers (draining,
	// control plane unavailable), rounded up to whole seconds. Default 5 s.
	RetryAfter time.Duration
	// AgentFailedAuth limits failed handshakes per client on the agent
	// listener (agentserver.Options.FailedAuth); nil limits nothing. The
	// proxy's limiter is KubernetesAPI.FailedAuth.
	AgentFailedAuth *ratelimit.Limiter

	// Authenticator, Resolver and Registrar tune the discovery parts (TTLs,
	// backoff, clock). Their control-plane clients default to ones for
	// ControlPlaneURL; IDs, URLs and loggers are set by the node.
	Authenticator discovery.AuthenticatorOptions
	Resolver      discovery.ResolverOptions
	Registrar     discovery.RegistrarOptions

	// Registry receives the node's metrics; nil means none.
	Registry prometheus.Registerer
	Logger   *slog.Logger
}

// Defaults.
const (
	DefaultDrainDelay       = 5 * time.Second
	DefaultDrainGrace       = 30 * time.Second
	DefaultDialTimeout      = 5 * time.Second
	DefaultRelayOpenTimeout = 3 * time.Second
)

// Validate checks o and fills defaults, reporting every problem at once.
// It derives the private URL (see PrivateURL) and builds the control-plane
// clients, without any network call.
func (o *Options) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if o.NodeID == "" {
		add(errors.New("dataplane: node ID is required"))
	}
	if len(o.PrivateAPISecretKey) != authn.KeySize {
		add(fmt.Errorf("private_api_secret_key: must be %d bytes", authn.KeySize))
	}
	if o.AgentListener == nil {
		add(errors.New("dataplane.agent.listen: listener is required"))
	}
	if o.PrivateAPIListener == nil {
		add(errors.New("dataplane.private_api.listen: listener is required"))
	} else {
		a := o.PrivateAPIListener.Addr()
		o.OwnPrivateAPI.ListenNetwork, o.OwnPrivateAPI.ListenAddress = a.Network(), a.String()
		if _, err := discovery.PrivateURL(o.OwnPrivateAPI); err != nil {
			add(err)
		}
	}
	if o.KubernetesAPIListener != nil {
		add(o.KubernetesAPI.Validate())
	}
	if err := o.Tunnel.Validate(); err != nil {
		add(fmt.Errorf("dataplane tunnel: %w", err))
	}
	if o.DrainDelay <= 0 {
		o.DrainDelay = DefaultDrainDelay
	}
	if o.DrainGrace <= 0 {
		o.DrainGrace = DefaultDrainGrace
	}
	if o.DrainGrace < o.DrainDelay {
		add(fmt.Errorf("dataplane: drain grace (%v) must not be shorter than the drain delay (%v)", o.DrainGrace, o.DrainDelay))
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.RelayOpenTimeout <= 0 {
		o.RelayOpenTimeout = DefaultRelayOpenTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}

	hc, base, err := controlPlaneClient(o.ControlPlaneURL)
	if err != nil {
		add(fmt.Errorf("dataplane.controlplane_url: %w", err))
	} else if len(o.PrivateAPISecretKey) == authn.KeySize {
		signed := connect.WithInterceptors(authn.ClientInterceptor(
			authn.NewSigner(o.PrivateAPISecretKey, authn.IssuerDataplane, authn.AudienceDataplane, o.NodeID)),
			idempotencyKeys())
		nodes := dataplanev1connect.NewNodeServiceClient(hc, base, signed)
		if o.Authenticator.Auth == nil {
			o.Authenticator.Auth = dataplanev1connect.NewAuthServiceClient(hc, base, signed)
		}
		if o.Resolver.Nodes == nil {
			o.Resolver.Nodes = nodes
		}
		if o.Registrar.Nodes == nil {
			o.Registrar.Nodes = nodes
		}
	}
	if o.Authenticator.Auth != nil {
		o.Authenticator.Logger = o.Logger.With("component", "agent-auth")
		add(o.Authenticator.Validate())
	}
	if o.Resolver.Nodes != nil {
		o.Resolver.SelfID, o.Resolver.Logger = o.NodeID, o.Logger.With("component", "routes")
		add(o.Resolver.Validate())
	}
	return errors.Join(errs...)
}

// controlPlaneClient returns the HTTP client and base URL for the control
// plane at raw (http://, https:// or unix:///path).
func controlPlaneClient(raw string) (*http.Client, string, error) {
	tr, base, err := listen.ClientTransport(raw)
	if err != nil {
		return nil, "", err
	}
	// Keep as many idle connections as calls run at once (handshake token
	// checks, rechecks, registrations, resolutions, proxy decisions), so
	// that a reconnect storm does not open a connection per call.
	tr.MaxIdleConnsPerHost = 2 * agentserver.DefaultMaxTokenChecks
	return &http.Client{Transport: tr}, base, nil
}

// Node is a dataplane node.
type Node struct {
	opts       Options
	log        *slog.Logger
	privateURL string

	auth      *discovery.AgentAuthenticator
	resolver  *discovery.Resolver
	registrar *discovery.Registrar
	agents    *agentserver.Server
	relaySrv  *relay.Server
	dialer    *relay.Dialer
	transport *http.Transport
	kubeProxy *proxy.Proxy // nil without KubernetesAPIListener

	agentHTTP   *http.Server
	privateHTTP *http.Server
	proxyHTTP   *http.Server // nil without KubernetesAPIListener

	draining atomic.Bool
	running  atomic.Bool
	abort    chan struct{} // closed by Close
	runDone  chan struct{} // closed when Run returns
	stopOnce sync.Once
	relOnce  sync.Once

	badMu sync.Mutex
	bad   map[string]time.Time // node ID → until when it is tried last

	dials dialCounters

	configs *configPusher
}

// New validates opts and builds the node. It makes no network call; Run
// serves.
func New(opts Options) (_ *Node, err error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	privateURL, _ := discovery.PrivateURL(opts.OwnPrivateAPI) // checked by Validate
	n := &Node{
		opts:       opts,
		log:        opts.Logger.With("node_id", opts.NodeID),
		privateURL: privateURL,
		abort:      make(chan struct{}),
		runDone:    make(chan struct{}),
		bad:        make(map[string]time.Time),
	}
	defer func() {
		if err != nil {
			n.release()
		}
	}()
	if n.auth, err = discovery.NewAgentAuthenticator(opts.Authenticator); err != nil {
		return nil, err
	}
	if n.resolver, err = discovery.NewResolver(opts.Resolver); err != nil {
		return nil, err
	}
	ro := opts.Registrar
	ro.NodeID, ro.PrivateURL, ro.Version = opts.NodeID, privateURL, opts.Version
	ro.ControlPlaneURL, ro.Logger = opts.ControlPlaneURL, opts.Logger.With("component", "registrar")
	if n.registrar, err = discovery.NewRegistrar(ro); err != nil {
		return nil, err
	}
	n.configs = newConfigPusher(n.registrar, opts.Authenticator.Auth, nil, opts.ConfigPollInterval,
		opts.Logger.With("component", "agent-config"))
	if n.agents, err = agentserver.New(agentserver.Options{
		NodeID: opts.NodeID, Auth: n.auth, Registrar: n.configs, Tunnel: opts.Tunnel,
		RetryAfter: opts.RetryAfter, RecheckInterval: opts.Authenticator.RecheckInterval,
		FailedAuth: opts.AgentFailedAuth,
		Logger:     opts.Logger.With("component", "agent-server"),
	}); err != nil {
		return nil, err
	}
	n.configs.open = n.agents.OpenTunnel
	if n.relaySrv, err = relay.NewServer(relay.ServerOptions{
		NodeID: opts.NodeID, Key: opts.PrivateAPISecretKey, ExtraKeys: opts.ExtraPrivateAPISecretKeys, Tunnels: acceptedTunnels{n.agents},
		Logger: opts.Logger.With("component", "relay-server"),
	}); err != nil {
		return nil, err
	}
	if n.dialer, err = relay.NewDialer(relay.DialerOptions{
		NodeID: opts.NodeID, Key: opts.PrivateAPISecretKey, ServerName: opts.OwnPrivateAPI.ServerName(),
		RootCAs: opts.PrivateAPIRootCAs, OpenTimeout: opts.RelayOpenTimeout,
		Logger: opts.Logger.With("component", "relay-dialer"),
	}); err != nil {
		return nil, err
	}
	n.transport = n.newTransport()
	if opts.KubernetesAPIListener != nil {
		if n.kubeProxy, err = n.newKubeProxy(); err != nil {
			return nil, err
		}
		n.proxyHTTP = listen.NewServer(n.kubeProxy, n.log)
	}

	n.agentHTTP = listen.NewServer(n.agents, n.log)
	mux := http.NewServeMux()
	mux.Handle(n.relaySrv.Handler())
	n.privateHTTP = listen.NewServer(mux, n.log)
	n.privateHTTP.HTTP2 = &http.HTTP2Config{
		MaxConcurrentStreams:          1000,
		MaxReceiveBufferPerConnection: 4<<20 - 1,
		MaxReceiveBufferPerStream:     1 << 20,
		SendPingTimeout:               15 * time.Second,
		PingTimeout:                   10 * time.Second,
	}
	if opts.Registry != nil {
		if err := opts.Registry.Register(newCollector(n)); err != nil {
			return nil, fmt.Errorf("register dataplane metrics: %w", err)
		}
	}
	return n, nil
}

// ID returns the node's ID.
func (n *Node) ID() string { return n.opts.NodeID }

// PrivateURL returns the URL other nodes dial to relay through this one.
func (n *Node) PrivateURL() string { return n.privateURL }

// Tunnels returns the number of agent tunnels open on this node.
func (n *Node) Tunnels() int { return n.agents.Tunnels() }

// AgentTunnels returns the number of agentID's tunnels open on this node.
func (n *Node) AgentTunnels(agentID int64) int { return n.agents.AgentTunnels(agentID) }

// Registered reports whether the control plane knows the node.
func (n *Node) Registered() bool { return n.registrar.Registered() }

// WaitSynced blocks until the control plane has confirmed every tunnel
// event recorded before the call (see discovery.Registrar.WaitSynced).
func (n *Node) WaitSynced(ctx context.Context) error { return n.registrar.WaitSynced(ctx) }

// Ready reports whether the node should get traffic: registered with the
// control plane and not draining. It is the /readyz check.
func (n *Node) Ready(context.Context) error {
	switch {
	case n.draining.Load():
		return errors.New("draining")
	case !n.registrar.Registered():
		return errors.New("not registered with the control plane yet")
	}
	return nil
}

// Run serves until ctx ends, then drains (see the package comment) and
// returns nil, or until Close, then returns at once. A server that fails
// makes Run drain and return its error. Run may be called once.
func (n *Node) Run(ctx context.Context) error {
	if !n.running.CompareAndSwap(false, true) {
		return errors.New("dataplane: Run called twice")
	}
	defer close(n.runDone)
	defer n.release()

	srvCtx, stopServers := context.WithCancel(context.Background())
	defer stopServers()
	regCtx, stopRegistrar := context.WithCancel(context.Background())
	defer stopRegistrar()
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	serve := func(setting string, srv *http.Server, l net.Listener) {
		n.log.Info("listening", "listener", setting, "network", l.Addr().Network(), "address", l.Addr().String())
		wg.Go(func() {
			err := listen.Serve(srvCtx, srv, l, 5*time.Second)
			if errors.Is(err, listen.ErrShutdownCut) {
				n.log.Warn("shutdown cut requests still running", "listener", setting)
				return
			}
			if err != nil {
				errc <- fmt.Errorf("%s: %w", setting, err)
			}
		})
	}
	serve("dataplane.agent.listen", n.agentHTTP, n.opts.AgentListener)
	serve("dataplane.private_api.listen", n.privateHTTP, n.opts.PrivateAPIListener)
	if n.proxyHTTP != nil {
		serve("dataplane.kubernetes_api.listen", n.proxyHTTP, n.opts.KubernetesAPIListener)
	}
	regDone := make(chan struct{})
	go func() {
		defer close(regDone)
		n.registrar.Run(regCtx)
	}()
	cfgCtx, stopConfigs := context.WithCancel(context.Background())
	defer stopConfigs()
	cfgDone := make(chan struct{})
	go func() {
		defer close(cfgDone)
		n.configs.run(cfgCtx)
	}()
	n.log.Info("dataplane node started", "private_url", n.privateURL, "version", n.opts.Version)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		n.log.Error("server failed; draining", "err", runErr)
	case <-n.abort:
	}
	if !isClosed(n.abort) {
		n.drain() // Close during the drain cuts it short
	}
	stopRegistrar() // already stopped by Deregister after a full drain
	<-regDone
	stopConfigs()
	<-cfgDone
	if isClosed(n.abort) {
		// As a killed process: no drain, no deregistration, and the
		// control plane hears nothing about the tunnels closing now.
		n.agentHTTP.Close()
		n.privateHTTP.Close()
		if n.proxyHTTP != nil {
			n.proxyHTTP.Close()
		}
		n.agents.Close()
		runErr = nil // a server failing as its listener closes under it is part of being stopped
	}
	stopServers()
	wg.Wait()
	if n.kubeProxy != nil {
		// http.Server.Shutdown does not wait for upgraded connections
		// (exec, port-forward): cut and wait for what is left.
		n.kubeProxy.Close()
	}
	n.relaySrv.Wait()
	n.log.Info("dataplane node stopped")
	return runErr
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// drain moves agents away and deregisters, make before break.
func (n *Node) drain() {
	start := time.Now()
	n.agents.Refuse()
	n.draining.Store(true) // /readyz fails from now on
	n.log.Info("draining", "delay", n.opts.DrainDelay, "grace", n.opts.DrainGrace, "tunnels", n.agents.Tunnels())
	ctx, cancel := context.WithTimeout(context.Background(), n.opts.DrainGrace)
	defer cancel()
	// Until the drain ends: Close cuts it short, and pooled HTTP
	// connections, which would keep tunnel streams open, are dropped while
	// idle.
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		idle := time.NewTicker(250 * time.Millisecond)
		defer idle.Stop()
		for {
			select {
			case <-idle.C:
				n.transport.CloseIdleConnections()
			case <-n.abort:
				cancel()
				return
			case <-ctx.Done():
				return
			}
		}
	})

	if err := n.registrar.Drain(ctx); err != nil {
		n.log.Warn("cannot mark the node draining in the control plane yet; the registrar retries", "err", err)
	}
	n.agents.Drain()
	n.transport.CloseIdleConnections()
	delayCtx, cancelDelay := context.WithTimeout(ctx, n.opts.DrainDelay)
	n.agents.Wait(delayCtx) // every tunnel gone already, or the delay is over
	cancelDelay()
	if err := n.agents.Shutdown(ctx); err != nil {
		n.log.Warn("drain grace ended: closed the tunnels still open", "err", err)
	}
	if n.kubeProxy != nil {
		// Proxy requests in flight (watches, exec sessions, also those
		// relayed to other nodes) get the rest of the grace.
		if err := n.kubeProxy.Wait(ctx); err != nil {
			n.log.Warn("drain grace ended with Kubernetes API proxy requests still running; they are cut", "err", err)
		}
	}
	n.log.Info("tunnels drained", "took", time.Since(start).Round(time.Millisecond))
	if isClosed(n.abort) {
		return // closed: as a killed process, leave the lease to expire
	}

	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	if err := n.registrar.Deregister(dctx); err != nil {
		n.log.Warn("cannot deregister from the control plane; its lease will expire", "err", err)
	}
}

// Close stops the node at once, as a killed process would: tunnels and
// servers are closed, nothing is drained and the node is not deregistered
// (the control plane forgets it when its lease expires). It waits for Run
// to return, and releases everything New acquired. Idempotent.
func (n *Node) Close() error {
	n.stopOnce.Do(func() { close(n.abort) })
	if n.running.Load() {
		<-n.runDone
	}
	n.release()
	return nil
}

// release closes what New acquired. Run calls it on return.
func (n *Node) release() {
	n.relOnce.Do(func() {
		if n.opts.AgentListener != nil {
			n.opts.AgentListener.Close()
		}
		if n.opts.PrivateAPIListener != nil {
			n.opts.PrivateAPIListener.Close()
		}
		if n.opts.KubernetesAPIListener != nil {
			n.opts.KubernetesAPIListener.Close()
		}
		if n.kubeProxy != nil {
			n.kubeProxy.Close()
		}
		if n.agents != nil {
			n.agents.Close()
		}
		if n.transport != nil {
			n.transport.CloseIdleConnections()
		}
		if n.dialer != nil {
			n.dialer.Close()
		}
		if n.resolver != nil {
			n.resolver.Close()
		}
		if n.auth != nil {
			n.auth.Close()
		}
	})
}
