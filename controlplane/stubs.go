package controlplane

// Placeholder service types; each moves to its own file as it is implemented.

import (
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
)

type agentService struct {
	*Server
	managementv1connect.UnimplementedAgentServiceHandler
}
type credentialService struct {
	*Server
	managementv1connect.UnimplementedCredentialServiceHandler
}
type routingService struct {
	*Server
	managementv1connect.UnimplementedRoutingServiceHandler
}
type nodeService struct {
	*Server
	dataplanev1connect.UnimplementedNodeServiceHandler
}
type authService struct {
	*Server
	dataplanev1connect.UnimplementedAuthServiceHandler
}
