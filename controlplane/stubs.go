package controlplane

// Placeholder service types; each moves to its own file as it is implemented.

import (
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
)

type nodeService struct {
	*Server
	dataplanev1connect.UnimplementedNodeServiceHandler
}
type authService struct {
	*Server
	dataplanev1connect.UnimplementedAuthServiceHandler
}
