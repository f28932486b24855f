package agentserver

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// TestOpenSaysMovingRightAfterTheLastTunnelCloses: for MovingWindow after
// an agent's last tunnel here closed, Open's ErrNoTunnel comes with
// ErrMoving, so that DialAgent waits for the agent's new tunnel instead of
// answering "not connected"; an agent never seen, or gone longer, is not
// moving.
func TestOpenSaysMovingRightAfterTheLastTunnelCloses(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	if _, err := e.srv.Open(ctx, e.agent); !errors.Is(err, ErrNoTunnel) || errors.Is(err, ErrMoving) {
		t.Fatalf("agent never seen: %v; want ErrNoTunnel alone", err)
	}
	var accepted atomic.Int64
	sess := e.dial(t, &accepted)
	sess.Close()
	waitFor(t, "tunnel gone", func() bool { return e.srv.Tunnels() == 0 })
	_, err := e.srv.Open(ctx, e.agent)
	if !errors.Is(err, ErrNoTunnel) || !errors.Is(err, ErrMoving) {
		t.Fatalf("right after the last tunnel closed: %v; want ErrNoTunnel and ErrMoving", err)
	}
	if e.srv.moving(e.agent, time.Now().Add(MovingWindow+time.Millisecond)) {
		t.Error("still moving after the window")
	}
	// Old departures are forgotten as new ones come.
	e.srv.mu.Lock()
	later := time.Now().Add(MovingWindow + time.Second)
	e.srv.departedLocked(e.agent+1, later)
	_, kept := e.srv.left[e.agent]
	n := len(e.srv.leftOrder)
	e.srv.mu.Unlock()
	if kept || n != 1 {
		t.Errorf("after the window: agent kept %v, %d departures; want forgotten, 1", kept, n)
	}
}
