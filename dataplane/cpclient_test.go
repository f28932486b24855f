package dataplane

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"

	dataplanev1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
)

type configsOnly struct {
	dataplanev1connect.UnimplementedAuthServiceHandler
}

func (configsOnly) GetAgentConfigs(context.Context, *dataplanev1.GetAgentConfigsRequest) (*dataplanev1.GetAgentConfigsResponse, error) {
	return &dataplanev1.GetAgentConfigsResponse{}, nil
}

// TestControlPlaneCallsSurviveAClosedKeepAlive: when the control plane
// closes a kept-alive connection just as a call goes out on it (a replica
// shutting down), the node's call is sent again on a new connection, with
// the same idempotency key; without the key it fails.
func TestControlPlaneCallsSurviveAClosedKeepAlive(t *testing.T) {
	for _, withKeys := range []bool{true, false} {
		_, h := dataplanev1connect.NewAuthServiceHandler(configsOnly{})
		keys := make(chan string, 10)
		var n atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			keys <- r.Header.Get(idempotencyKeyHeader)
			if n.Add(1) == 2 { // the second request: the connection closes under it
				c, _, err := http.NewResponseController(w).Hijack()
				if err == nil {
					c.Close()
				}
				return
			}
			h.ServeHTTP(w, r)
		}))
		t.Cleanup(srv.Close)
		var opts []connect.ClientOption
		if withKeys {
			opts = append(opts, connect.WithInterceptors(idempotencyKeys()))
		}
		c := dataplanev1connect.NewAuthServiceClient(srv.Client(), srv.URL, opts...)
		req := &dataplanev1.GetAgentConfigsRequest{Known: []*dataplanev1.AgentConfigVersion{{AgentId: 1, Version: -1}}}
		if _, err := c.GetAgentConfigs(t.Context(), req); err != nil {
			t.Fatal(err)
		}
		first := <-keys
		_, err := c.GetAgentConfigs(t.Context(), req) // on the kept-alive connection
		switch {
		case withKeys && err != nil:
			t.Fatalf("with idempotency keys: %v", err)
		case withKeys:
			dropped, resent := <-keys, <-keys
			if first == "" || dropped == "" || first == dropped || resent != dropped || n.Load() != 3 {
				t.Errorf("keys %q, %q (dropped), %q (resent), %d requests; want a new key, resent as is", first, dropped, resent, n.Load())
			}
		case err == nil:
			t.Fatal("without idempotency keys the call survived: the test no longer shows what the keys do")
		}
	}
}
