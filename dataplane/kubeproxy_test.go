package dataplane

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/kas-project/kas/dataplane/relay"
)

// Each way a dial can fail gets its code and names its side; no internal
// detail reaches the message.
func TestAgentFailureNamesTheSide(t *testing.T) {
	cpDown := connect.NewError(connect.CodeUnavailable, errors.New("dial tcp 10.0.0.1:8153: connection refused"))
	relayDown := fmt.Errorf("relay to grpc://10.0.0.2:8155: %w", relay.ErrUnreachable)
	for _, c := range []struct {
		name string
		err  error
		code int
		msg  string
	}{
		{"not connected", fmt.Errorf("dial agent 7: %w", ErrNotConnected), http.StatusServiceUnavailable, "agent 7 is not connected"},
		{"route lookup failed", fmt.Errorf("dial agent 7: %w: look up its tunnels: resolve agent 7: %w", ErrUnreachable, cpDown),
			http.StatusServiceUnavailable, "control plane is unavailable"},
		{"relay failed", fmt.Errorf("dial agent 7: %w: %w", ErrUnreachable, relayDown), http.StatusBadGateway, "relaying to the dataplane node"},
		{"relay had no tunnel", fmt.Errorf("dial agent 7: %w: %w", ErrUnreachable, relay.ErrNoTunnel), http.StatusBadGateway, "relaying"},
		{"tunnels busy", fmt.Errorf("dial agent 7: %w: going away", ErrUnreachable), http.StatusBadGateway, "did not take the request in time"},
		{"stream broke", io.ErrUnexpectedEOF, http.StatusBadGateway, "broke before the agent answered"},
	} {
		code, msg := agentFailure(7, c.err)
		if code != c.code || !strings.Contains(msg, c.msg) {
			t.Errorf("%s: %d %q, want %d and %q", c.name, code, msg, c.code, c.msg)
		}
		if strings.Contains(msg, "10.0.0.") {
			t.Errorf("%s: message leaks an address: %q", c.name, msg)
		}
	}
}
