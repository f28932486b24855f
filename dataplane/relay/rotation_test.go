package relay

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kas-project/kas/internal/listen"
)

// TestRelayKeyRotation: a relay server with extra keys accepts callers
// signing with the current key or an extra one, and nobody else.
func TestRelayKeyRotation(t *testing.T) {
	current, old := key(t), key(t)
	srv, err := NewServer(ServerOptions{NodeID: "far", Key: current, ExtraKeys: [][]byte{old}, Tunnels: tunnels{}})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(srv.Handler())
	l := tcpListener(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { listen.Serve(ctx, listen.NewServer(mux, nil), l, time.Second) })
	t.Cleanup(func() { cancel(); wg.Wait(); srv.Wait() })
	url := "grpc://" + l.Addr().String()

	// Agent 8 has no tunnel here: an authenticated caller learns just that.
	for name, k := range map[string][]byte{"current": current, "extra": old} {
		_, err := newDialer(t, DialerOptions{Key: k}).Dial(context.Background(), url, 8)
		if !errors.Is(err, ErrNoTunnel) {
			t.Errorf("%s key: err = %v, want ErrNoTunnel (authenticated)", name, err)
		}
	}
	_, err = newDialer(t, DialerOptions{Key: key(t)}).Dial(context.Background(), url, 8)
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "unauthenticated") {
		t.Errorf("stranger's key: err = %v, want unauthenticated", err)
	}
	if _, err := NewServer(ServerOptions{NodeID: "far", Key: current, ExtraKeys: [][]byte{[]byte("short")}, Tunnels: tunnels{}}); err == nil {
		t.Error("a 5-byte extra key was accepted")
	}
}
