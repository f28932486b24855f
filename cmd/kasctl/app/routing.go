package app

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
)

// Dataplane nodes and tunnel routes, for operators: the RoutingService.

func runRoutes(ctx context.Context, cli CLI, g *globals, args []string) error {
	fs := newFlagSet("routes")
	g.register(fs)
	agentID := fs.Int64("agent-id", 0, "only this agent's routes")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs("routes", rest); err != nil {
		return err
	}
	s, cancel, err := g.dial(ctx, fs)
	if err != nil {
		return err
	}
	defer cancel()
	resp, err := s.routing.ListRoutes(s.ctx, &managementv1.ListRoutesRequest{AgentId: *agentID})
	if err != nil {
		return s.fail(err)
	}
	var agents []int64 // for -o id: each routed agent once
	seen := map[int64]bool{}
	for _, r := range resp.GetRoutes() {
		if !seen[r.GetAgentId()] {
			seen[r.GetAgentId()] = true
			agents = append(agents, r.GetAgentId())
		}
	}
	return s.out(cli.Stdout, resp, func(tw *tabwriter.Writer) {
		row(tw, "AGENT", "NODE", "PRIVATE URL", "TUNNELS", "CONNECTED SINCE", "HEARTBEAT AGE", "STATE")
		for _, r := range resp.GetRoutes() {
			age := time.Duration(r.GetHeartbeatAgeSeconds() * float64(time.Second)).Round(100 * time.Millisecond)
			row(tw, r.GetAgentId(), r.GetNodeId(), r.GetPrivateUrl(), r.GetTunnels(), when(r.GetConnectedSince()), age, r.GetState())
		}
	}, agents...)
}

func runNodes(ctx context.Context, cli CLI, g *globals, args []string) error {
	fs := newFlagSet("nodes")
	g.register(fs)
	rest, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := noArgs("nodes", rest); err != nil {
		return err
	}
	s, cancel, err := g.dial(ctx, fs)
	if err != nil {
		return err
	}
	defer cancel()
	resp, err := s.routing.ListNodes(s.ctx, &managementv1.ListNodesRequest{})
	if err != nil {
		return s.fail(err)
	}
	if g.output == outputID {
		for _, n := range resp.GetNodes() {
			fmt.Fprintln(cli.Stdout, n.GetNodeId())
		}
		return nil
	}
	return s.out(cli.Stdout, resp, func(tw *tabwriter.Writer) {
		row(tw, "NODE", "PRIVATE URL", "STATE", "TUNNELS", "VERSION", "REGISTERED", "HEARTBEAT", "LEASE EXPIRES")
		for _, n := range resp.GetNodes() {
			row(tw, n.GetNodeId(), n.GetPrivateUrl(), n.GetState(), n.GetTunnels(), orDash(n.GetVersion()),
				when(n.GetRegisteredAt()), when(n.GetHeartbeatAt()), when(n.GetLeaseExpiresAt()))
		}
	})
}
