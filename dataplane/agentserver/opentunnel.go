package agentserver

import (
	"context"
	"fmt"
	"net"
)

// OpenTunnel opens a stream on one given tunnel of the agent, for what
// must reach every agentk process rather than any one (an agent's
// configuration: each of its replicas holds tunnels of its own). Errors
// wrap ErrNoTunnel when the tunnel is not, or no longer, open here.
func (s *Server) OpenTunnel(ctx context.Context, agentID int64, tunnelID string) (net.Conn, error) {
	s.mu.Lock()
	var e *entry
	for _, c := range s.byAgent[agentID] {
		if c.id == tunnelID {
			e = c
			break
		}
	}
	s.mu.Unlock()
	if e == nil {
		return nil, fmt.Errorf("open stream on tunnel %s of agent %d: %w", tunnelID, agentID, ErrNoTunnel)
	}
	st, err := e.sess.Open(ctx)
	if err != nil {
		return nil, fmt.Errorf("open stream on tunnel %s of agent %d: %w", tunnelID, agentID, err)
	}
	return st, nil
}
