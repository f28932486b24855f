package controlplane

import (
	"context"

	"google.golang.org/protobuf/types/known/timestamppb"

	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
)

// routingService implements kas.management.v1.RoutingService: the
// node_status and agent_routes views, for operators.
type routingService struct {
	*Server
	managementv1connect.UnimplementedRoutingServiceHandler
}

func (s *routingService) ListNodes(ctx context.Context, _ *managementv1.ListNodesRequest) (*managementv1.ListNodesResponse, error) {
	nodes, err := s.store.ListNodeStatus(ctx)
	if err != nil {
		return nil, s.toConnect(ctx, "ListNodes", err)
	}
	resp := &managementv1.ListNodesResponse{}
	for _, n := range nodes {
		resp.Nodes = append(resp.Nodes, &managementv1.Node{
			NodeId:         n.NodeID,
			BootId:         n.BootID,
			PrivateUrl:     n.PrivateURL,
			Version:        n.Version,
			Draining:       n.Draining,
			RegisteredAt:   timestamppb.New(n.RegisteredAt),
			HeartbeatAt:    timestamppb.New(n.HeartbeatAt),
			LeaseExpiresAt: timestamppb.New(n.LeaseExpiresAt),
			State:          n.State,
			Tunnels:        n.Tunnels,
		})
	}
	return resp, nil
}

func (s *routingService) ListRoutes(ctx context.Context, req *managementv1.ListRoutesRequest) (*managementv1.ListRoutesResponse, error) {
	const op = "ListRoutes"
	if req.GetAgentId() < 0 {
		return nil, s.toConnect(ctx, op, invalid("agent_id", "must not be negative"))
	}
	routes, err := s.store.ListAgentRoutes(ctx, req.GetAgentId())
	if err != nil {
		return nil, s.toConnect(ctx, op, err)
	}
	resp := &managementv1.ListRoutesResponse{}
	for _, r := range routes {
		resp.Routes = append(resp.Routes, &managementv1.Route{
			AgentId:             r.AgentID,
			NodeId:              r.NodeID,
			PrivateUrl:          r.PrivateURL,
			Tunnels:             r.Tunnels,
			ConnectedSince:      timestamppb.New(r.ConnectedSince),
			HeartbeatAgeSeconds: r.HeartbeatAge.Seconds(),
			State:               r.State,
		})
	}
	return resp, nil
}
