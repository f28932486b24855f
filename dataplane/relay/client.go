package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/kas-project/kas/dataplane/discovery"
	relayv1 "github.com/kas-project/kas/gen/kas/relay/v1"
	"github.com/kas-project/kas/gen/kas/relay/v1/relayv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/obs"
)

// Errors of Dial.
var (
	// ErrNoTunnel: the node answered that it cannot reach the agent (no
	// tunnel, or its tunnels are going away or full). Try another node.
	ErrNoTunnel = errors.New("node has no usable tunnel of the agent")
	// ErrUnreachable: the node could not be reached or did not answer in
	// time, or refused this node's credentials.
	ErrUnreachable = errors.New("node unreachable")
)

// DialerOptions configure a Dialer.
type DialerOptions struct {
	// NodeID is this node's ID, sent as from_node_id and as the JWT subject.
	NodeID string
	// Key is private_api_secret_key (32 bytes).
	Key []byte
	// ServerName is the TLS server name expected from every node over
	// grpcs:// (OWN_PRIVATE_API_HOST); empty means the host of the URL.
	ServerName string
	// RootCAs verify the nodes' certificates over grpcs://; nil means the
	// system roots (which honour SSL_CERT_FILE and SSL_CERT_DIR).
	RootCAs *x509.CertPool
	// OpenTimeout bounds connecting to a node and its answer. Default 5 s.
	OpenTimeout time.Duration
	// CloseLinger bounds how long a closed conn lets the far side finish
	// (so data written before Close is delivered) before the call is
	// cancelled. Default 10 s.
	CloseLinger time.Duration
	Logger      *slog.Logger
}

// Validate checks o and fills defaults, reporting every problem at once.
func (o *DialerOptions) Validate() error {
	var errs []error
	if o.NodeID == "" {
		errs = append(errs, errors.New("relay dialer: node ID is required"))
	}
	if len(o.Key) != authn.KeySize {
		errs = append(errs, fmt.Errorf("relay dialer: private_api_secret_key must be %d bytes", authn.KeySize))
	}
	if o.OpenTimeout <= 0 {
		o.OpenTimeout = 5 * time.Second
	}
	if o.CloseLinger <= 0 {
		o.CloseLinger = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return errors.Join(errs...)
}

// Dialer opens relay streams to other nodes. It keeps one HTTP/2 client per
// node URL.
type Dialer struct {
	opts   DialerOptions
	signer *authn.Signer
	ctx    context.Context // ends on Close: every relayed conn is cancelled
	cancel context.CancelFunc
	wg     sync.WaitGroup // receive loops

	mu         sync.Mutex
	clients    map[string]relayv1connect.RelayServiceClient
	transports []*http.Transport

	ok, noTunnel, unreachable, bytesIn, bytesOut atomic.Uint64
}

// NewDialer validates opts and returns a Dialer. Close it when done.
func NewDialer(opts DialerOptions) (*Dialer, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Dialer{
		opts:    opts,
		signer:  authn.NewSigner(opts.Key, authn.IssuerDataplane, authn.AudiencePrivateAPI, opts.NodeID),
		ctx:     ctx,
		cancel:  cancel,
		clients: make(map[string]relayv1connect.RelayServiceClient),
	}, nil
}

// Close cancels every relayed conn, waits for them and closes idle
// connections to other nodes.
func (d *Dialer) Close() error {
	d.cancel()
	d.wg.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, t := range d.transports {
		t.CloseIdleConnections()
	}
	return nil
}

// DialerStats are the Dialer's counters.
type DialerStats struct {
	// OK counts relays opened.
	OK uint64
	// NoTunnel counts relays the far node refused for want of a tunnel.
	NoTunnel uint64
	// Unreachable counts relays that failed to reach the far node.
	Unreachable uint64
	// BytesOut is data sent to agents through other nodes; BytesIn data
	// received from them.
	BytesOut, BytesIn uint64
}

// Stats returns the counters.
func (d *Dialer) Stats() DialerStats {
	return DialerStats{OK: d.ok.Load(), NoTunnel: d.noTunnel.Load(), Unreachable: d.unreachable.Load(),
		BytesOut: d.bytesOut.Load(), BytesIn: d.bytesIn.Load()}
}

// Dial opens a stream to agentID through the node at privateURL (grpc://,
// grpcs:// or unix://). Only dial URLs the control plane returned for
// registered nodes. ctx bounds the opening only, as with net.Dialer; the
// conn lives until it is closed or either side ends it. Errors wrap
// ErrNoTunnel or ErrUnreachable.
func (d *Dialer) Dial(ctx context.Context, privateURL string, agentID int64) (net.Conn, error) {
	client, err := d.client(privateURL)
	if err != nil {
		d.unreachable.Add(1)
		return nil, fmt.Errorf("relay to %s: %w: %w", privateURL, ErrUnreachable, err)
	}
	sctx, cancel := context.WithCancel(d.ctx)
	timedOut := atomic.Bool{}
	timer := time.AfterFunc(d.opts.OpenTimeout, func() { timedOut.Store(true); cancel() })
	stopCtx := context.AfterFunc(ctx, cancel)
	fail := func(err error) (net.Conn, error) {
		timer.Stop()
		stopCtx()
		cancel()
		switch {
		case connect.CodeOf(err) == connect.CodeNotFound:
			d.noTunnel.Add(1)
			msg := err.Error()
			var ce *connect.Error
			if errors.As(err, &ce) {
				msg = ce.Message()
			}
			return nil, fmt.Errorf("relay to %s: %s: %w", privateURL, msg, ErrNoTunnel)
		case timedOut.Load():
			d.unreachable.Add(1)
			return nil, fmt.Errorf("relay to %s: %w: no answer within %v", privateURL, ErrUnreachable, d.opts.OpenTimeout)
		case ctx.Err() != nil:
			return nil, fmt.Errorf("relay to %s: %w", privateURL, context.Cause(ctx))
		}
		d.unreachable.Add(1)
		return nil, fmt.Errorf("relay to %s: %w: %w", privateURL, ErrUnreachable, err)
	}

	stream, err := client.Relay(sctx)
	if err != nil {
		return fail(err)
	}
	err = stream.Send(&relayv1.RelayRequest{Msg: &relayv1.RelayRequest_Header{Header: &relayv1.RelayHeader{
		AgentId: agentID, RequestId: obs.RequestID(ctx), FromNodeId: d.opts.NodeID,
	}}})
	var resp *relayv1.RelayResponse
	if err == nil || errors.Is(err, io.EOF) {
		resp, err = stream.Receive() // after a failed Send, Receive has the reason
	}
	if err == nil && resp.GetOpened() == nil {
		err = connect.NewError(connect.CodeInternal, errors.New("far node answered without opening the stream"))
	}
	if err != nil {
		stream.CloseResponse()
		return fail(err)
	}
	if !timer.Stop() || !stopCtx() {
		stream.CloseResponse()
		return fail(context.Canceled)
	}
	d.ok.Add(1)
	c := &conn{
		d:      d,
		stream: stream,
		cancel: cancel,
		recv:   make(chan []byte),
		closed: make(chan struct{}),
		laddr:  addr("node " + d.opts.NodeID),
		raddr:  addr(fmt.Sprintf("agent %d via %s", agentID, privateURL)),
	}
	d.wg.Add(1)
	go c.recvLoop()
	return c, nil
}

// client returns the Connect client for a node URL, creating it on first use.
func (d *Dialer) client(raw string) (relayv1connect.RelayServiceClient, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if c := d.clients[raw]; c != nil {
		return c, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errors.New("not a URL")
	}
	h2 := &http.HTTP2Config{
		// Find a vanished node on a pooled connection: ping after 15 s of
		// silence, give up 10 s later.
		SendPingTimeout:               15 * time.Second,
		PingTimeout:                   10 * time.Second,
		MaxReceiveBufferPerConnection: 4<<20 - 1,
		MaxReceiveBufferPerStream:     1 << 20,
	}
	tr := &http.Transport{
		Protocols:           new(http.Protocols),
		HTTP2:               h2,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: d.opts.OpenTimeout,
		DialContext:         (&net.Dialer{Timeout: d.opts.OpenTimeout, KeepAlive: 15 * time.Second}).DialContext,
	}
	var base string
	switch u.Scheme {
	case discovery.SchemeGRPC:
		if u.Host == "" {
			return nil, errors.New("no host")
		}
		base = "http://" + u.Host
		tr.Protocols.SetUnencryptedHTTP2(true)
	case discovery.SchemeGRPCS:
		if u.Host == "" {
			return nil, errors.New("no host")
		}
		base = "https://" + u.Host
		tr.Protocols.SetHTTP2(true)
		tr.TLSClientConfig = &tls.Config{ServerName: d.opts.ServerName, RootCAs: d.opts.RootCAs, MinVersion: tls.VersionTLS12}
	case discovery.SchemeUnix:
		if u.Path == "" {
			return nil, errors.New("no socket path")
		}
		path := u.Path
		base = "http://unix.invalid"
		tr.Protocols.SetUnencryptedHTTP2(true)
		dialer := &net.Dialer{Timeout: d.opts.OpenTimeout}
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", path)
		}
	default:
		return nil, fmt.Errorf("unsupported scheme %q (want grpc, grpcs or unix)", u.Scheme)
	}
	c := relayv1connect.NewRelayServiceClient(&http.Client{Transport: tr}, base,
		connect.WithGRPC(),
		connect.WithInterceptors(authn.ClientInterceptor(d.signer)),
		connect.WithReadMaxBytes(maxMessage),
		connect.WithAcceptCompression("gzip", nil, nil),
	)
	d.clients[raw] = c
	d.transports = append(d.transports, tr)
	return c, nil
}

type addr string

func (a addr) Network() string { return "kas-relay" }
func (a addr) String() string  { return string(a) }
