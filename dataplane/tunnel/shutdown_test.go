package tunnel

import (
	"net"
	"testing"
	"testing/synctest"
)

// gatedConn holds its reads until gate is closed: a peer that has not read
// yet what was sent to it.
type gatedConn struct {
	net.Conn
	gate chan struct{}
}

func (c gatedConn) Read(p []byte) (int, error) {
	<-c.gate
	return c.Conn.Read(p)
}

// TestShutdownRefusesOpensInFlight: an idle agent shuts its tunnel down
// while the node, which has not read the GOAWAY yet, opens a stream. The
// stream must be refused (Retryable: the node sends the request over
// another tunnel), not lost with the connection, so Shutdown waits until
// the node has read the GOAWAY.
func TestShutdownRefusesOpensInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := net.Pipe()
		gate := make(chan struct{})
		node, agent := sessionPair(t, gatedConn{Conn: a, gate: gate}, b, Config{}, Config{})
		serveEcho(t, agent)
		shut := make(chan error, 1)
		go func() { shut <- agent.Shutdown(t.Context()) }()
		synctest.Wait()

		st, err := node.Open(t.Context())
		if err != nil {
			t.Fatalf("open before reading the GOAWAY: %v", err)
		}
		st.Write([]byte("request"))
		synctest.Wait()
		select {
		case err := <-shut:
			t.Fatalf("Shutdown returned before the node read the GOAWAY: %v", err)
		default:
		}

		close(gate)
		buf := make([]byte, 16)
		if _, err := st.Read(buf); !Retryable(err) {
			t.Errorf("stream opened as the agent shut down: %v, want a Retryable error (refused)", err)
		}
		if err := <-shut; err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		<-agent.Done()
	})
}

// TestWaitAccepted: nil once the peer accepted the stream; the refusal
// (Retryable) when the peer had already sent GOAWAY.
func TestWaitAccepted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := net.Pipe()
		gate := make(chan struct{})
		close(gate)
		node, agent := sessionPair(t, gatedConn{Conn: a, gate: gate}, b, Config{}, Config{})
		serveEcho(t, agent)
		st, err := node.Open(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if err := st.WaitAccepted(t.Context()); err != nil {
			t.Errorf("WaitAccepted on a stream the agent takes: %v", err)
		}
		st.Close()
	})
	synctest.Test(t, func(t *testing.T) {
		a, b := net.Pipe()
		gate := make(chan struct{})
		node, agent := sessionPair(t, gatedConn{Conn: a, gate: gate}, b, Config{}, Config{})
		serveEcho(t, agent)
		agent.GoAway()
		synctest.Wait()
		st, err := node.Open(t.Context()) // before the node reads the GOAWAY
		if err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		close(gate)
		if err := st.WaitAccepted(t.Context()); !Retryable(err) {
			t.Errorf("WaitAccepted on a stream the retiring agent refused: %v, want Retryable", err)
		}
	})
}
