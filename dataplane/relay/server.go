// Package relay is the private API between dataplane nodes (port 8155): a
// node that must reach an agent whose tunnel another node holds opens a
// kas.relay.v1 Relay stream to that node, which splices it onto a stream of
// one of its own tunnels. One hop only: the relay server uses local tunnels
// and nothing else, so a relayed stream is never relayed again.
//
// Server is the Connect handler (gRPC over h2c or TLS, or a unix socket);
// every call must carry a JWT signed with private_api_secret_key for the
// audience authn.AudiencePrivateAPI. Dialer is the client: Dial returns the
// relayed stream as a net.Conn.
//
// Wire contract: the first request message is the RelayHeader; the server
// answers RelayOpened once the agent stream is open, or fails the call with
// CodeNotFound when it cannot open one here (no tunnel, tunnels draining,
// tunnels full) so the caller tries another node. Then both sides send data
// messages. The caller's CloseRequest half-closes the agent stream; the end
// of the agent's side ends the call (the caller reads io.EOF).
package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"

	"connectrpc.com/connect"

	"github.com/kas-project/kas/dataplane/agentserver"
	relayv1 "github.com/kas-project/kas/gen/kas/relay/v1"
	"github.com/kas-project/kas/gen/kas/relay/v1/relayv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/obs"
)

// MaxChunk is the most stream data put in one relay message.
const MaxChunk = 32 << 10

// maxMessage bounds a received relay message (a chunk plus framing).
const maxMessage = MaxChunk + 1024

// Tunnels opens streams on the node's own tunnels; *agentserver.Server is
// one. Open's errors wrapping agentserver.ErrNoTunnel or
// agentserver.ErrDraining, or any other error, all mean "not here".
type Tunnels interface {
	Open(ctx context.Context, agentID int64) (net.Conn, error)
}

// ServerOptions configure a Server.
type ServerOptions struct {
	// NodeID names this node in errors and logs.
	NodeID string
	// Key is private_api_secret_key (32 bytes).
	Key []byte
	// ExtraKeys are accepted as well during a key rotation (32 bytes each).
	ExtraKeys [][]byte
	// Tunnels are the node's own tunnels.
	Tunnels Tunnels
	Logger  *slog.Logger
}

// Validate checks o and fills defaults, reporting every problem at once.
func (o *ServerOptions) Validate() error {
	var errs []error
	if o.NodeID == "" {
		errs = append(errs, errors.New("relay server: node ID is required"))
	}
	if len(o.Key) != authn.KeySize {
		errs = append(errs, fmt.Errorf("relay server: private_api_secret_key must be %d bytes", authn.KeySize))
	}
	for _, k := range o.ExtraKeys {
		if len(k) != authn.KeySize {
			errs = append(errs, fmt.Errorf("relay server: every extra private_api_secret_key must be %d bytes", authn.KeySize))
			break
		}
	}
	if o.Tunnels == nil {
		errs = append(errs, errors.New("relay server: tunnels are required"))
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return errors.Join(errs...)
}

// Server serves RelayService.
type Server struct {
	opts ServerOptions
	log  *slog.Logger
	wg   sync.WaitGroup // receive pumps, which may outlive their handler briefly

	ok, notHere, failed, bytesIn, bytesOut atomic.Uint64
}

// NewServer validates opts and returns a Server.
func NewServer(opts ServerOptions) (*Server, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	return &Server{opts: opts, log: opts.Logger.With("node_id", opts.NodeID)}, nil
}

// Handler returns the path and handler to mount on the private API server.
// Calls without a valid private-API JWT fail with CodeUnauthenticated.
func (s *Server) Handler() (string, http.Handler) {
	verifier := authn.NewVerifier(s.opts.Key, authn.IssuerDataplane, authn.AudiencePrivateAPI, s.opts.ExtraKeys...)
	return relayv1connect.NewRelayServiceHandler(s,
		connect.WithInterceptors(authn.ServerInterceptor(verifier)),
		connect.WithReadMaxBytes(maxMessage),
		connect.WithCompression("gzip", nil, nil), // bulk data: never spend CPU compressing it
	)
}

// Wait waits for the receive pumps of finished calls; call it after the
// private API server has shut down.
func (s *Server) Wait() { s.wg.Wait() }

// ServerStats are the Server's counters.
type ServerStats struct {
	// OK counts relays spliced onto a local tunnel.
	OK uint64
	// NotHere counts relays refused because no local tunnel could take them.
	NotHere uint64
	// Failed counts malformed relay calls.
	Failed uint64
	// BytesIn is data received from callers (towards agents); BytesOut
	// data sent to them.
	BytesIn, BytesOut uint64
}

// Stats returns the counters.
func (s *Server) Stats() ServerStats {
	return ServerStats{OK: s.ok.Load(), NotHere: s.notHere.Load(), Failed: s.failed.Load(),
		BytesIn: s.bytesIn.Load(), BytesOut: s.bytesOut.Load()}
}

// Relay implements RelayService.Relay.
func (s *Server) Relay(ctx context.Context, stream *connect.BidiStream[relayv1.RelayRequest, relayv1.RelayResponse]) error {
	first, err := stream.Receive()
	if err != nil {
		s.failed.Add(1)
		return connect.NewError(connect.CodeInvalidArgument, errors.New("relay: expected a header message"))
	}
	h := first.GetHeader()
	if h == nil || h.GetAgentId() <= 0 {
		s.failed.Add(1)
		return connect.NewError(connect.CodeInvalidArgument, errors.New("relay: the first message must be a header with a positive agent_id"))
	}
	agentID := h.GetAgentId()
	ctx = obs.WithAgentID(ctx, agentID)
	if id := h.GetRequestId(); id != "" {
		ctx = obs.WithRequestID(ctx, id)
	}
	log := s.log.With("from_node_id", h.GetFromNodeId())

	conn, err := s.opts.Tunnels.Open(ctx, agentID)
	if err != nil {
		s.notHere.Add(1)
		log.DebugContext(ctx, "relay refused: no usable tunnel here", "err", err)
		return connect.NewError(connect.CodeNotFound, notHereError(agentID, s.opts.NodeID, err))
	}
	defer conn.Close()
	// The caller cancelled: unblock the reader below.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := stream.Send(&relayv1.RelayResponse{Msg: &relayv1.RelayResponse_Opened{Opened: &relayv1.RelayOpened{}}}); err != nil {
		return err
	}
	s.ok.Add(1)

	// Caller → agent. This pump may block in Receive after the handler
	// returns; connect closes the request body then, which ends it.
	s.wg.Go(func() {
		for {
			msg, err := stream.Receive()
			if errors.Is(err, io.EOF) {
				if cw, ok := conn.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
				return
			}
			if err != nil {
				conn.Close()
				return
			}
			data := msg.GetData()
			if len(data) == 0 {
				continue
			}
			s.bytesIn.Add(uint64(len(data)))
			if _, err := conn.Write(data); err != nil {
				return // the agent side failed; the reader below sees it too
			}
		}
	})

	// Agent → caller, until the agent's side ends.
	buf := make([]byte, MaxChunk)
	for {
		n, rerr := conn.Read(buf)
		if n > 0 {
			s.bytesOut.Add(uint64(n))
			if err := stream.Send(&relayv1.RelayResponse{Msg: &relayv1.RelayResponse_Data{Data: buf[:n]}}); err != nil {
				return nil // the caller went away
			}
		}
		switch {
		case rerr == nil:
		case errors.Is(rerr, io.EOF):
			return nil
		case ctx.Err() != nil:
			return nil
		default:
			log.DebugContext(ctx, "relayed agent stream failed", "err", rerr)
			return connect.NewError(connect.CodeAborted, errors.New("agent stream aborted"))
		}
	}
}

// notHereError is the text the caller sees: which agent and node, and
// why, without internal detail.
func notHereError(agentID int64, nodeID string, err error) error {
	switch {
	case errors.Is(err, agentserver.ErrNoTunnel):
		return fmt.Errorf("no tunnel for agent %d on node %s", agentID, nodeID)
	case errors.Is(err, agentserver.ErrDraining):
		return fmt.Errorf("the tunnels of agent %d on node %s are going away", agentID, nodeID)
	}
	return fmt.Errorf("cannot open a stream to agent %d on node %s", agentID, nodeID)
}
