package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"
)

// pipePair starts a node (server) and agent (client) session over net.Pipe
// and closes both when the test ends.
func pipePair(t testing.TB, nodeCfg, agentCfg Config) (node, agent *Session) {
	t.Helper()
	a, b := net.Pipe()
	return sessionPair(t, a, b, nodeCfg, agentCfg)
}

func sessionPair(t testing.TB, nodeConn, agentConn net.Conn, nodeCfg, agentCfg Config) (node, agent *Session) {
	t.Helper()
	node, err := Server(nodeConn, nodeCfg)
	if err != nil {
		t.Fatal(err)
	}
	agent, err = Client(agentConn, agentCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		node.Close()
		agent.Close()
	})
	return node, agent
}

// serveEcho accepts streams on s and echoes each one until the peer's
// CloseWrite, then half-closes. It returns when s ends; the test waits.
func serveEcho(t testing.TB, s *Session) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			st, err := s.Accept(context.Background())
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer st.Close()
				if _, err := io.Copy(st, st); err != nil {
					return
				}
				st.CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() {
		s.Close()
		wg.Wait()
	})
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// roundTrip writes data on a new stream, half-closes, and checks the echo.
func roundTrip(ctx context.Context, s *Session, data []byte) error {
	st, err := s.Open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := st.Write(data)
		if err == nil {
			err = st.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(st)
	if werr := <-errc; werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("echo differs: sent %d bytes, got %d", len(data), len(got))
	}
	return nil
}

func echoManyStreams(t *testing.T, node *Session, streams, size int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		data := randomBytes(t, size+i)
		wg.Go(func() { errs <- roundTrip(t.Context(), node, data) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestEchoManyStreamsPipe(t *testing.T) {
	node, agent := pipePair(t, Config{}, Config{})
	serveEcho(t, agent)
	echoManyStreams(t, node, 64, 300<<10)

	waitFor(t, "streams to be forgotten", func() bool { return node.NumStreams() == 0 && agent.NumStreams() == 0 })
	ns, as := node.Stats(), agent.Stats()
	if ns.StreamsOpened != 64 || ns.StreamsClosed != 64 || as.StreamsAccepted != 64 || as.StreamsClosed != 64 {
		t.Errorf("stream counters: node %+v, agent %+v", ns, as)
	}
	if ns.BytesOut != ns.BytesIn || ns.BytesOut != as.BytesIn || as.BytesOut != as.BytesIn {
		t.Errorf("byte counters: node %+v, agent %+v", ns, as)
	}
	if c := node.committed.Load(); c != 0 {
		t.Errorf("node still commits %d bytes of receive buffer", c)
	}
}

// waitFor polls cond until it holds; the test's own timeout bounds it.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i > 20000 {
			t.Fatalf("timed out waiting for %s", what)
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond) // a poll interval, not a wait for an event
	}
}

func TestHalfClose(t *testing.T) {
	node, agent := pipePair(t, Config{}, Config{})
	st, err := node.Open(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("request"))
	st.CloseWrite()
	if _, err := st.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after CloseWrite: %v, want net.ErrClosed", err)
	}
	ast, err := agent.Accept(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	req, err := io.ReadAll(ast)
	if err != nil || string(req) != "request" {
		t.Fatalf("agent read %q, %v", req, err)
	}
	// The agent can still answer after the node's half-close.
	ast.Write([]byte("response"))
	ast.Close()
	resp, err := io.ReadAll(st)
	if err != nil || string(resp) != "response" {
		t.Fatalf("node read %q, %v", resp, err)
	}
	st.Close()
	waitFor(t, "streams to end", func() bool { return node.NumStreams() == 0 && agent.NumStreams() == 0 })
}
