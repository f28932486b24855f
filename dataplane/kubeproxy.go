package dataplane

import (
	"errors"
	"fmt"
	"net/http"

	"connectrpc.com/connect"

	"github.com/kas-project/kas/dataplane/proxy"
	"github.com/kas-project/kas/dataplane/relay"
)

// newKubeProxy builds the Kubernetes API proxy over the node's transport.
func (n *Node) newKubeProxy() (*proxy.Proxy, error) {
	o := n.opts.KubernetesAPI
	o.Auth = n.opts.Authenticator.Auth
	o.Transport = n.transport
	o.WithAgent = WithAgent
	o.Failure = agentFailure
	o.NodeID = n.opts.NodeID
	o.Registry = n.opts.Registry
	o.Logger = n.opts.Logger.With("component", "kubernetes-api-proxy")
	return proxy.New(o)
}

// agentFailure explains to a proxy caller why its request could not be
// sent to the agent, naming the side that failed. Details (node URLs,
// tunnel errors) stay in the node's log.
func agentFailure(agentID int64, err error) (int, string) {
	var ce *connect.Error
	switch {
	case errors.Is(err, ErrNotConnected):
		return http.StatusServiceUnavailable, fmt.Sprintf(
			"kas: agent %d is not connected: no dataplane node holds a tunnel of it (is agentk running, and can it reach kas?)", agentID)
	case errors.Is(err, ErrUnreachable) && errors.As(err, &ce):
		return http.StatusServiceUnavailable, fmt.Sprintf(
			"kas: cannot look up agent %d's tunnels: the control plane is unavailable; retry", agentID)
	case errors.Is(err, relay.ErrUnreachable), errors.Is(err, relay.ErrNoTunnel):
		return http.StatusBadGateway, fmt.Sprintf(
			"kas: relaying to the dataplane node that holds agent %d's tunnel failed", agentID)
	case errors.Is(err, ErrUnreachable):
		return http.StatusBadGateway, fmt.Sprintf(
			"kas: agent %d's tunnels did not take the request in time (the agent may be reconnecting); retry", agentID)
	}
	return http.StatusBadGateway, fmt.Sprintf(
		"kas: the connection to agent %d (its tunnel, or the relay to the node holding it) broke before the agent answered", agentID)
}
