package controlplane

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kas-project/kas/controlplane/store"
	dataplanev1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
)

// MaxTunnelsPerCall bounds RegisterTunnels and UnregisterTunnels batches.
const MaxTunnelsPerCall = 1000

// nodeService implements kas.dataplane.v1.NodeService: dataplane nodes,
// their leases and their tunnels. A tunnel lives as long as its node's
// lease, so one heartbeat renews all of a node's tunnels.
type nodeService struct {
	*Server
}

var _ dataplanev1connect.NodeServiceHandler = (*nodeService)(nil)

// lease returns the times of a node write at the server's clock now.
func (s *Server) lease() store.Lease {
	now := s.now()
	return store.Lease{
		Now:         now,
		ExpiresAt:   now.Add(s.opts.LeaseTTL),
		SweepBefore: now.Add(-s.opts.StaleGrace),
	}
}

func (s *nodeService) RegisterNode(ctx context.Context, req *dataplanev1.RegisterNodeRequest) (*dataplanev1.RegisterNodeResponse, error) {
	const op = "RegisterNode"
	if err := checkNode(req.NodeId, req.BootId); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	if err := checkPrivateURL(req.PrivateUrl); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	if len(req.Version) > 128 {
		return nil, s.toConnect(ctx, op, invalid("version", "at most 128 characters"))
	}
	l := s.lease()
	n := store.Node{NodeID: req.NodeId, BootID: req.BootId, PrivateURL: req.PrivateUrl, Version: req.Version}
	if err := s.store.RegisterNode(ctx, n, l); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	s.log.InfoContext(ctx, "node registered", "node_id", req.NodeId, "boot_id", req.BootId, "private_url", req.PrivateUrl)
	return &dataplanev1.RegisterNodeResponse{
		LeaseTtl:          durationpb.New(s.opts.LeaseTTL),
		HeartbeatInterval: durationpb.New(s.opts.HeartbeatInterval),
		LeaseExpiresAt:    timestamppb.New(l.ExpiresAt),
	}, nil
}

func (s *nodeService) Heartbeat(ctx context.Context, req *dataplanev1.HeartbeatRequest) (*dataplanev1.HeartbeatResponse, error) {
	const op = "Heartbeat"
	if err := checkNode(req.NodeId, req.BootId); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	expires, err := s.store.Heartbeat(ctx, req.NodeId, req.BootId, s.lease())
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	return &dataplanev1.HeartbeatResponse{LeaseExpiresAt: timestamppb.New(expires)}, nil
}

func (s *nodeService) SetDraining(ctx context.Context, req *dataplanev1.SetDrainingRequest) (*dataplanev1.SetDrainingResponse, error) {
	const op = "SetDraining"
	if err := checkNode(req.NodeId, req.BootId); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	if err := s.store.SetDraining(ctx, req.NodeId, req.BootId); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	s.log.InfoContext(ctx, "node draining", "node_id", req.NodeId)
	return &dataplanev1.SetDrainingResponse{}, nil
}

func (s *nodeService) DeregisterNode(ctx context.Context, req *dataplanev1.DeregisterNodeRequest) (*dataplanev1.DeregisterNodeResponse, error) {
	const op = "DeregisterNode"
	if err := checkNode(req.NodeId, req.BootId); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	if err := s.store.DeregisterNode(ctx, req.NodeId, req.BootId); err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	s.log.InfoContext(ctx, "node deregistered", "node_id", req.NodeId)
	return &dataplanev1.DeregisterNodeResponse{}, nil
}

func (s *nodeService) RegisterTunnels(ctx context.Context, req *dataplanev1.RegisterTunnelsRequest) (*dataplanev1.RegisterTunnelsResponse, error) {
	const op = "RegisterTunnels"
	now := s.now()
	ts, err := checkTunnels(req.NodeId, req.BootId, req.Tunnels, true, now)
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	if len(ts) == 0 {
		return &dataplanev1.RegisterTunnelsResponse{}, nil
	}
	n, err := s.store.RegisterTunnels(ctx, req.NodeId, req.BootId, now, ts)
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	return &dataplanev1.RegisterTunnelsResponse{Applied: int32(n)}, nil
}

func (s *nodeService) UnregisterTunnels(ctx context.Context, req *dataplanev1.UnregisterTunnelsRequest) (*dataplanev1.UnregisterTunnelsResponse, error) {
	const op = "UnregisterTunnels"
	now := s.now()
	ts, err := checkTunnels(req.NodeId, req.BootId, req.Tunnels, false, now)
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	if len(ts) == 0 {
		return &dataplanev1.UnregisterTunnelsResponse{}, nil
	}
	n, err := s.store.UnregisterTunnels(ctx, req.NodeId, req.BootId, now, ts)
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	return &dataplanev1.UnregisterTunnelsResponse{Applied: int32(n)}, nil
}

func (s *nodeService) ResolveAgent(ctx context.Context, req *dataplanev1.ResolveAgentRequest) (*dataplanev1.ResolveAgentResponse, error) {
	const op = "ResolveAgent"
	if req.AgentId <= 0 {
		return nil, s.toConnect(ctx, op, invalid("agent_id", "must be positive"))
	}
	nodes, err := s.store.ResolveAgent(ctx, req.AgentId, s.now())
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	resp := &dataplanev1.ResolveAgentResponse{Nodes: make([]*dataplanev1.AgentNode, len(nodes))}
	for i, n := range nodes {
		resp.Nodes[i] = &dataplanev1.AgentNode{NodeId: n.NodeID, PrivateUrl: n.PrivateURL, Draining: n.Draining, Tunnels: n.Tunnels}
	}
	return resp, nil
}

// GC deletes expired nodes (beyond StaleGrace) with their tunnels, old
// tombstones and long-expired credentials, at the server's clock. It is
// what `kas controlplane gc` runs; nothing depends on it running, since
// registrations and heartbeats sweep routing as they go.
func (s *Server) GC(ctx context.Context) (nodes, tunnels int64, err error) {
	return s.store.GC(ctx, s.now(), s.opts.StaleGrace)
}

func checkNode(nodeID, bootID string) error {
	if len(nodeID) < 1 || len(nodeID) > 253 {
		return invalid("node_id", "must be 1 to 253 characters")
	}
	if err := validText("node_id", nodeID, 253, true); err != nil {
		return err
	}
	if len(bootID) < 1 || len(bootID) > 128 {
		return invalid("boot_id", "must be 1 to 128 characters")
	}
	return validText("boot_id", bootID, 128, true)
}

// checkPrivateURL accepts grpc://host:port, grpcs://host:port and
// unix:///absolute/path: what another node can dial.
func checkPrivateURL(raw string) error {
	const want = "want grpc://host:port, grpcs://host:port or unix:///absolute/path"
	if raw == "" {
		return invalid("private_url", "required; %s", want)
	}
	if len(raw) > 2048 {
		return invalid("private_url", "at most 2048 characters")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return invalid("private_url", "%q does not parse; %s", raw, want)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return invalid("private_url", "%q: %s, without user, query or fragment", raw, want)
	}
	switch u.Scheme {
	case "grpc", "grpcs":
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil || host == "" {
			return invalid("private_url", "%q: needs a host and a port; %s", raw, want)
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return invalid("private_url", "%q: port %q is not 1-65535", raw, port)
		}
		if u.Path != "" && u.Path != "/" {
			return invalid("private_url", "%q: a %s URL has no path", raw, u.Scheme)
		}
	case "unix":
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") {
			return invalid("private_url", "%q: a unix URL needs an absolute path, like unix:///run/kas/private-api.sock", raw)
		}
	default:
		return invalid("private_url", "%q: unsupported scheme %q; %s", raw, u.Scheme, want)
	}
	return nil
}

// checkTunnels validates a batch and converts it for the store.
func checkTunnels(nodeID, bootID string, in []*dataplanev1.Tunnel, register bool, now time.Time) ([]store.Tunnel, error) {
	if err := checkNode(nodeID, bootID); err != nil {
		return nil, err
	}
	if len(in) > MaxTunnelsPerCall {
		return nil, invalid("tunnels", "at most %d per call, got %d", MaxTunnelsPerCall, len(in))
	}
	seen := make(map[string]int, len(in))
	out := make([]store.Tunnel, len(in))
	for i, t := range in {
		field := func(name string) string { return fmt.Sprintf("tunnels[%d].%s", i, name) }
		if t == nil {
			return nil, invalid(fmt.Sprintf("tunnels[%d]", i), "must not be null")
		}
		if len(t.TunnelId) < 1 || len(t.TunnelId) > 128 {
			return nil, invalid(field("tunnel_id"), "must be 1 to 128 characters")
		}
		if err := validText(field("tunnel_id"), t.TunnelId, 128, true); err != nil {
			return nil, err
		}
		if j, dup := seen[t.TunnelId]; dup {
			return nil, invalid(field("tunnel_id"), "%q is also tunnels[%d]", t.TunnelId, j)
		}
		seen[t.TunnelId] = i
		if t.Seq < 0 {
			return nil, invalid(field("seq"), "must not be negative")
		}
		st := store.Tunnel{TunnelID: t.TunnelId, Seq: t.Seq}
		if register {
			if t.AgentId <= 0 {
				return nil, invalid(field("agent_id"), "must be positive")
			}
			if err := validText(field("agent_version"), t.AgentVersion, 128, false); err != nil {
				return nil, err
			}
			st.AgentID, st.AgentVersion, st.ConnectedAt = t.AgentId, t.AgentVersion, now
			if t.ConnectedAt != nil {
				if err := t.ConnectedAt.CheckValid(); err != nil {
					return nil, invalid(field("connected_at"), "not a valid time")
				}
				st.ConnectedAt = t.ConnectedAt.AsTime()
			}
		}
		out[i] = st
	}
	return out, nil
}
