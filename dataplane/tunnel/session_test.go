package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// Most tests run the two ends over net.Pipe inside a synctest bubble:
// synctest.Wait replaces polling, and timers (keepalive, dead-man, open
// timeout, deadlines) run on the bubble's fake clock.

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

// serveEcho accepts streams on s and echoes each until the peer's
// CloseWrite, then closes it. Its goroutines end with s.
func serveEcho(t testing.TB, s *Session) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			st, err := s.Accept(context.Background())
			if err != nil {
				return
			}
			wg.Go(func() {
				defer st.Close()
				if _, err := io.Copy(st, st); err == nil {
					st.CloseWrite()
				}
			})
		}
	})
	t.Cleanup(func() {
		s.Close()
		wg.Wait()
	})
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// roundTrip sends data on a new stream, half-closes, and checks the echo.
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
		data := randomBytes(size + i*997)
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
	synctest.Test(t, func(t *testing.T) {
		node, agent := pipePair(t, Config{}, Config{})
		serveEcho(t, agent)
		echoManyStreams(t, node, 64, 200<<10)
		synctest.Wait()

		if n, m := node.NumStreams(), agent.NumStreams(); n != 0 || m != 0 {
			t.Errorf("live streams after all closed: node %d, agent %d", n, m)
		}
		ns, as := node.Stats(), agent.Stats()
		if ns.StreamsOpened != 64 || ns.StreamsClosed != 64 || as.StreamsAccepted != 64 || as.StreamsClosed != 64 {
			t.Errorf("stream counters: node %+v, agent %+v", ns, as)
		}
		if ns.BytesOut == 0 || ns.BytesOut != ns.BytesIn || ns.BytesOut != as.BytesIn || as.BytesOut != as.BytesIn {
			t.Errorf("byte counters: node %+v, agent %+v", ns, as)
		}
		if c := node.committed.Load(); c != 0 {
			t.Errorf("node still commits %d bytes of receive buffer", c)
		}
		if c := agent.committed.Load(); c != 0 {
			t.Errorf("agent still commits %d bytes of receive buffer", c)
		}
	})
}

func TestHalfClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		node, agent := pipePair(t, Config{}, Config{})
		st, err := node.Open(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		st.Write([]byte("request"))
		if err := st.CloseWrite(); err != nil {
			t.Fatal(err)
		}
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
		// The agent answers after the node's half-close, then closes.
		ast.Write([]byte("response"))
		ast.Close()
		resp, err := io.ReadAll(st)
		if err != nil || string(resp) != "response" {
			t.Fatalf("node read %q, %v", resp, err)
		}
		synctest.Wait()
		if n := node.NumStreams() + agent.NumStreams(); n != 0 {
			t.Errorf("%d streams left after both sides finished", n)
		}
		if err := st.Close(); err != nil {
			t.Errorf("close after both sides finished: %v", err)
		}
	})
}

// A stream whose reader stops must not slow the others, and must pin no
// more than its window.
func TestStalledStreamDoesNotBlockOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{StreamWindow: 1 << 20, MaxReceiveBuffer: 8 << 20}
		node, agent := pipePair(t, cfg, cfg)

		// The agent serves the first stream by writing forever, the rest by
		// echoing.
		var (
			stalledWritten atomic.Int64
			wg             sync.WaitGroup
		)
		first := true
		wg.Go(func() {
			for {
				st, err := agent.Accept(context.Background())
				if err != nil {
					return
				}
				if first {
					first = false
					wg.Go(func() {
						buf := make([]byte, 32<<10)
						for {
							n, err := st.Write(buf)
							stalledWritten.Add(int64(n))
							if err != nil {
								return
							}
						}
					})
					continue
				}
				wg.Go(func() {
					defer st.Close()
					if _, err := io.Copy(st, st); err == nil {
						st.CloseWrite()
					}
				})
			}
		})
		t.Cleanup(func() { agent.Close(); wg.Wait() })

		stalled, err := node.Open(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		// Read 2 MiB, so the stream has grown to its full window, then stop
		// reading, like a watch whose client got stuck.
		if _, err := io.CopyN(io.Discard, stalled, 2<<20); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // the agent's writer is now blocked on the window

		// The others go through in full while the stalled stream stays stuck.
		echoManyStreams(t, node, 8, 4<<20)
		synctest.Wait()

		stalled.mu.Lock()
		buffered, window := stalled.buffered, stalled.window
		stalled.mu.Unlock()
		// Credit is returned in quarter windows, so up to a quarter of the
		// window may be held back when the reader stops.
		if window != cfg.StreamWindow || buffered > window || buffered < window*3/4 {
			t.Errorf("stalled stream buffers %d bytes with window %d; want its window %d, at most", buffered, window, cfg.StreamWindow)
		}
		// Everything sent arrived (the blocked Write has not reported its
		// last partial chunk yet).
		if got, want := stalledWritten.Load(), int64(2<<20+buffered); got > want || got <= want-32<<10 {
			t.Errorf("agent's finished writes into the stalled stream: %d bytes, want %d (read + buffered) less a partial write", got, want)
		}
		if c := node.committed.Load(); c != int64(cfg.StreamWindow) {
			t.Errorf("node commits %d bytes of receive buffer, want only the stalled window %d", c, cfg.StreamWindow)
		}

		// Reading again drains it.
		if _, err := io.CopyN(io.Discard, stalled, 4<<20); err != nil {
			t.Fatal(err)
		}
		stalled.Close()
	})
}

// Many stalled streams cannot push a session past its receive budget: new
// streams are refused instead, and the tunnel stays usable.
func TestReceiveBudgetBoundsMemory(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{StreamWindow: 256 << 10, MaxReceiveBuffer: 1 << 20}
		node, agent := pipePair(t, cfg, Config{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				st, err := agent.Accept(context.Background())
				if err != nil {
					return
				}
				wg.Go(func() { io.Copy(st, zeros{}) })
			}
		})
		t.Cleanup(func() { agent.Close(); wg.Wait() })

		var open []*Stream
		for range 64 {
			st, err := node.Open(t.Context())
			if errors.Is(err, ErrTooManyStreams) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			// Carry enough to grow the window, then stall.
			if _, err := io.CopyN(io.Discard, st, InitialWindow); err != nil {
				t.Fatal(err)
			}
			open = append(open, st)
		}
		synctest.Wait()
		if len(open) == 0 || len(open) == 64 {
			t.Fatalf("%d streams opened; want the budget to stop them in between", len(open))
		}
		if c := node.committed.Load(); c > int64(cfg.MaxReceiveBuffer) {
			t.Errorf("node commits %d bytes, over its budget %d", c, cfg.MaxReceiveBuffer)
		}
		var buffered int
		for _, st := range open {
			st.mu.Lock()
			buffered += st.buffered
			st.mu.Unlock()
		}
		if buffered > cfg.MaxReceiveBuffer {
			t.Errorf("streams buffer %d bytes, over the budget %d", buffered, cfg.MaxReceiveBuffer)
		}
		for _, st := range open {
			st.Reset()
		}
		synctest.Wait()
		if c := node.committed.Load(); c != 0 {
			t.Errorf("node commits %d bytes after every stream was reset", c)
		}
		if _, err := node.Open(t.Context()); err != nil {
			t.Errorf("open after the streams were reset: %v", err)
		}
	})
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestResetOneStream(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		node, agent := pipePair(t, Config{}, Config{})
		a, err := node.Open(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		b, err := node.Open(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		a.Write([]byte("hello"))
		b.Write([]byte("hello"))
		aa, _ := agent.Accept(t.Context())
		ab, _ := agent.Accept(t.Context())

		// The agent is blocked reading a when the node resets it.
		readErr := make(chan error, 1)
		go func() {
			buf := make([]byte, 5)
			io.ReadFull(aa, buf)
			_, err := aa.Read(buf)
			readErr <- err
		}()
		synctest.Wait()
		if err := a.Reset(); err != nil {
			t.Fatal(err)
		}
		if err := <-readErr; !errors.Is(err, ErrReset) {
			t.Errorf("agent read on reset stream: %v, want ErrReset", err)
		}
		if _, err := aa.Write([]byte("x")); !errors.Is(err, ErrReset) {
			t.Errorf("agent write on reset stream: %v, want ErrReset", err)
		}
		if _, err := a.Read(make([]byte, 1)); !errors.Is(err, ErrReset) {
			t.Errorf("node read on stream it reset: %v, want ErrReset", err)
		}
		if err := a.Reset(); err != nil {
			t.Errorf("second reset: %v", err)
		}

		// b and the tunnel are unaffected.
		buf := make([]byte, 5)
		if _, err := io.ReadFull(ab, buf); err != nil || string(buf) != "hello" {
			t.Fatalf("other stream read %q, %v", buf, err)
		}
		ab.Write([]byte("world"))
		if _, err := io.ReadFull(b, buf); err != nil || string(buf) != "world" {
			t.Fatalf("other stream got %q, %v", buf, err)
		}
		if node.Err() != nil || agent.Err() != nil {
			t.Fatalf("tunnel died: %v / %v", node.Err(), agent.Err())
		}
		synctest.Wait()
		if ns, as := node.Stats(), agent.Stats(); ns.StreamsReset != 1 || as.StreamsReset != 1 || node.NumStreams() != 1 || agent.NumStreams() != 1 {
			t.Errorf("after one reset: node %+v (%d live), agent %+v (%d live)", ns, node.NumStreams(), as, agent.NumStreams())
		}
	})
}

func TestCloseIsIdempotent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		node, agent := pipePair(t, Config{}, Config{})
		st, err := node.Open(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			if err := st.Close(); err != nil {
				t.Errorf("stream close %d: %v", i, err)
			}
		}
		if _, err := st.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
			t.Errorf("read after close: %v, want net.ErrClosed", err)
		}
		if _, err := st.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Errorf("write after close: %v, want net.ErrClosed", err)
		}
		for i := range 2 {
			if err := node.Close(); err != nil {
				t.Errorf("session close %d: %v", i, err)
			}
		}
		if !errors.Is(node.Err(), ErrClosed) {
			t.Errorf("node Err after Close: %v, want ErrClosed", node.Err())
		}
		<-agent.Done()
		if !errors.Is(agent.Err(), ErrPeerClosed) {
			t.Errorf("agent Err after the node closed: %v, want ErrPeerClosed", agent.Err())
		}
		if _, err := node.Open(t.Context()); !errors.Is(err, ErrClosed) {
			t.Errorf("open after close: %v, want ErrClosed", err)
		}
		if _, err := agent.Accept(t.Context()); !errors.Is(err, ErrPeerClosed) {
			t.Errorf("accept after the peer closed: %v, want ErrPeerClosed", err)
		}
		if err := st.Close(); err != nil {
			t.Errorf("stream close after session close: %v", err)
		}
	})
}

func TestCloseFailsOpenStreams(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		node, agent := pipePair(t, Config{}, Config{})
		st, _ := node.Open(t.Context())
		st.Write([]byte("partial"))
		ast, _ := agent.Accept(t.Context())
		got := make([]byte, 7)
		io.ReadFull(ast, got)
		errc := make(chan error, 1)
		go func() {
			_, err := ast.Read(got)
			errc <- err
		}()
		synctest.Wait()
		node.Close()
		if err := <-errc; !errors.Is(err, ErrPeerClosed) {
			t.Errorf("agent read when the node closed the tunnel: %v, want ErrPeerClosed", err)
		}
		if _, err := st.Write([]byte("x")); !errors.Is(err, ErrClosed) {
			t.Errorf("node write after its Close: %v, want ErrClosed", err)
		}
	})
}

func TestOpenTimeoutWhenPeerNeverAccepts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{OpenTimeout: 5 * time.Second}
		node, agent := pipePair(t, cfg, Config{}) // the agent never calls Accept
		start := time.Now()
		st, err := node.Open(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Write([]byte("request before accept")); err != nil {
			t.Fatalf("early data: %v", err)
		}
		_, err = st.Read(make([]byte, 1))
		if !errors.Is(err, ErrOpenTimeout) {
			t.Fatalf("read on a stream never accepted: %v, want ErrOpenTimeout", err)
		}
		if d := time.Since(start); d != cfg.OpenTimeout {
			t.Errorf("open failed after %v, want %v", d, cfg.OpenTimeout)
		}
		if Retryable(err) {
			t.Errorf("Retryable(%v) = true; the peer may have accepted as the reset left", err)
		}
		synctest.Wait()
		if n := agent.NumStreams(); n != 0 {
			t.Errorf("agent still holds %d streams after the open timed out", n)
		}
		// The agent's late Accept does not return the dead stream.
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		if _, err := agent.Accept(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("accept after the opener gave up: %v, want nothing to accept", err)
		}
		if node.Stats().StreamsReset != 1 {
			t.Errorf("node stats %+v, want one reset", node.Stats())
		}
	})
}

func TestOpenContextCancelledBeforeAccept(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		node, _ := pipePair(t, Config{}, Config{})
		ctx, cancel := context.WithCancel(t.Context())
		st, err := node.Open(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cancel()
		if _, err := st.Read(make([]byte, 1)); !errors.Is(err, ErrOpenTimeout) || !errors.Is(err, context.Canceled) {
			t.Errorf("read after the open's context ended: %v, want ErrOpenTimeout and context.Canceled", err)
		}
	})
}

func TestAcceptedStreamOutlivesOpenContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		node, agent := pipePair(t, Config{}, Config{})
		serveEcho(t, agent)
		ctx, cancel := context.WithCancel(t.Context())
		st, err := node.Open(ctx)
		if err != nil {
			t.Fatal(err)
		}
		st.Write([]byte("ping"))
		buf := make([]byte, 4)
		if _, err := io.ReadFull(st, buf); err != nil {
			t.Fatal(err)
		}
		cancel()
		synctest.Wait()
		st.Write([]byte("pong"))
		if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "pong" {
			t.Errorf("after the open's context ended: %q, %v", buf, err)
		}
	})
}

func TestRefusedWhenBacklogFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		node, agent := pipePair(t, Config{}, Config{AcceptBacklog: 1})
		first, _ := node.Open(t.Context())
		second, _ := node.Open(t.Context())
		_, err := second.Read(make([]byte, 1))
		if !errors.Is(err, ErrRefused) || !Retryable(err) {
			t.Errorf("second open with a full backlog: %v, want a retryable ErrRefused", err)
		}
		if _, err := second.Write([]byte("x")); !errors.Is(err, ErrRefused) {
			t.Errorf("write on refused stream: %v, want ErrRefused", err)
		}
		ast, err := agent.Accept(t.Context())
		if err != nil || ast.ID() != first.ID() {
			t.Fatalf("accept: %v, %v", ast, err)
		}
		if s := agent.Stats(); s.StreamsRefused != 1 || s.StreamsAccepted != 1 {
			t.Errorf("agent stats %+v, want 1 accepted and 1 refused", s)
		}
	})
}

func TestGoAway(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		node, agent := pipePair(t, Config{}, Config{})
		serveEcho(t, agent)
		st, err := node.Open(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		node.GoAway()
		node.GoAway()
		<-agent.GoneAway()

		if _, err := node.Open(t.Context()); !errors.Is(err, ErrGoingAway) || !Retryable(err) {
			t.Errorf("node open after GoAway: %v, want ErrGoingAway", err)
		}
		if _, err := agent.Open(t.Context()); !errors.Is(err, ErrGoingAway) {
			t.Errorf("agent open after receiving GOAWAY: %v, want ErrGoingAway", err)
		}
		select {
		case <-node.GoneAway():
			t.Error("node's GoneAway closed though only the node sent GOAWAY")
		default:
		}

		// The open stream carries on; Shutdown waits for it.
		shut := make(chan error, 1)
		go func() { shut <- node.Shutdown(t.Context()) }()
		synctest.Wait()
		select {
		case err := <-shut:
			t.Fatalf("Shutdown returned with a stream open: %v", err)
		default:
		}
		st.Write([]byte("still here"))
		st.CloseWrite()
		got, err := io.ReadAll(st)
		if err != nil || string(got) != "still here" {
			t.Fatalf("stream during drain: %q, %v", got, err)
		}
		st.Close()
		if err := <-shut; err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		<-agent.Done()
		if !errors.Is(agent.Err(), ErrPeerClosed) {
			t.Errorf("agent Err: %v, want ErrPeerClosed", agent.Err())
		}
	})
}

func TestShutdownGivesUpAtDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		node, agent := pipePair(t, Config{}, Config{})
		serveEcho(t, agent)
		st, _ := node.Open(t.Context())
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if err := node.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown with a stream open: %v, want DeadlineExceeded", err)
		}
		if _, err := st.Write([]byte("x")); !errors.Is(err, ErrClosed) {
			t.Errorf("write after forced shutdown: %v, want ErrClosed", err)
		}
	})
}

// lossyConn delivers nothing once cut: writes vanish and reads wait until
// the conn itself is closed, like a peer whose host disappeared without
// closing the TCP connection (even the peer's Close goes unnoticed).
type lossyConn struct {
	net.Conn
	cut    atomic.Bool
	closed chan struct{}
	once   sync.Once
}

func newLossyConn(c net.Conn) *lossyConn { return &lossyConn{Conn: c, closed: make(chan struct{})} }

func (c *lossyConn) Write(p []byte) (int, error) {
	if c.cut.Load() {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *lossyConn) Read(p []byte) (int, error) {
	n, err := 0, error(nil)
	if !c.cut.Load() {
		n, err = c.Conn.Read(p)
	}
	if c.cut.Load() {
		<-c.closed
		return 0, net.ErrClosed
	}
	return n, err
}

func (c *lossyConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func TestDeadPeerClosesTunnel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{KeepaliveInterval: 10 * time.Second, DeadPeerTimeout: 30 * time.Second}
		a, b := net.Pipe()
		la, lb := newLossyConn(a), newLossyConn(b)
		node, agent := sessionPair(t, la, lb, cfg, cfg)
		serveEcho(t, agent)

		// Idle for a long time: keepalives keep it up.
		time.Sleep(10 * cfg.DeadPeerTimeout)
		if node.Err() != nil || agent.Err() != nil {
			t.Fatalf("idle tunnel died: %v / %v", node.Err(), agent.Err())
		}
		st, _ := node.Open(t.Context())
		st.Write([]byte("x"))
		if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}

		la.cut.Store(true)
		lb.cut.Store(true)
		start := time.Now()
		<-node.Done()
		<-agent.Done()
		for _, s := range []*Session{node, agent} {
			if !errors.Is(s.Err(), ErrDeadPeer) {
				t.Errorf("Err = %v, want ErrDeadPeer", s.Err())
			}
		}
		if d := time.Since(start); d < cfg.DeadPeerTimeout || d > cfg.DeadPeerTimeout+cfg.KeepaliveInterval {
			t.Errorf("dead peer noticed after %v, want between %v and %v", d, cfg.DeadPeerTimeout, cfg.DeadPeerTimeout+cfg.KeepaliveInterval)
		}
		if _, err := st.Read(make([]byte, 1)); !errors.Is(err, ErrDeadPeer) {
			t.Errorf("stream read on the dead tunnel: %v, want ErrDeadPeer", err)
		}
	})
}

// stuckConn stops reading: the peer's writes block, as when the network or
// the peer stops taking bytes.
type stuckConn struct {
	net.Conn
	stuck atomic.Bool
	wake  chan struct{}
}

func (c *stuckConn) Read(p []byte) (int, error) {
	if c.stuck.Load() {
		<-c.wake // closed by Close
		return 0, net.ErrClosed
	}
	return c.Conn.Read(p)
}

func (c *stuckConn) Close() error {
	select {
	case <-c.wake:
	default:
		close(c.wake)
	}
	return c.Conn.Close()
}

func TestWriteTimeoutClosesTunnel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := Config{WriteTimeout: 20 * time.Second}
		a, b := net.Pipe()
		sb := &stuckConn{Conn: b, wake: make(chan struct{})}
		node, _ := sessionPair(t, a, sb, cfg, Config{})
		st, _ := node.Open(t.Context())
		sb.stuck.Store(true)
		synctest.Wait()
		start := time.Now()
		go st.Write(make([]byte, 1000)) // blocks in the pipe nobody reads
		<-node.Done()
		if !errors.Is(node.Err(), ErrWriteTimeout) {
			t.Errorf("Err = %v, want ErrWriteTimeout", node.Err())
		}
		if d := time.Since(start); d < cfg.WriteTimeout || d > cfg.WriteTimeout*3/2 {
			t.Errorf("stuck write noticed after %v, want about %v", d, cfg.WriteTimeout)
		}
	})
}

func TestDeadlines(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		node, agent := pipePair(t, Config{}, Config{})
		st, _ := node.Open(t.Context())
		st.Write([]byte("x"))
		ast, _ := agent.Accept(t.Context())

		st.SetReadDeadline(time.Now().Add(time.Second))
		start := time.Now()
		_, err := st.Read(make([]byte, 1))
		var ne net.Error
		if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("read past deadline: %v, want a timeout", err)
		}
		if d := time.Since(start); d != time.Second {
			t.Errorf("deadline hit after %v, want 1s", d)
		}
		// A new deadline revives reads; data arriving in time is returned.
		st.SetReadDeadline(time.Now().Add(time.Minute))
		go func() {
			time.Sleep(time.Second)
			ast.Write([]byte("y"))
		}()
		buf := make([]byte, 1)
		if _, err := st.Read(buf); err != nil || buf[0] != 'y' {
			t.Errorf("read with an extended deadline: %q, %v", buf, err)
		}
		st.SetReadDeadline(time.Time{})

		// A write blocked on a full window gives up at its deadline and
		// reports what went out.
		ast.SetWriteDeadline(time.Now().Add(time.Second))
		n, err := ast.Write(make([]byte, 2*InitialWindow))
		if !errors.Is(err, os.ErrDeadlineExceeded) || n != InitialWindow-1 {
			t.Errorf("write into a full window: %d, %v; want %d bytes and a timeout", n, err, InitialWindow-1)
		}
		ast.SetWriteDeadline(time.Time{})
	})
}

func TestSessionDeathFailsStreams(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := net.Pipe()
		node, agent := sessionPair(t, a, b, Config{}, Config{})
		st, _ := node.Open(t.Context())
		st.Write([]byte("x"))
		ast, _ := agent.Accept(t.Context())
		ast.Write([]byte("last words"))
		synctest.Wait()
		b.Close() // the agent's connection breaks without a CLOSE frame
		<-node.Done()
		if err := node.Err(); err == nil || errors.Is(err, ErrPeerClosed) {
			t.Errorf("node Err = %v, want a connection error", err)
		}
		// Data received before the break is still readable.
		got := make([]byte, 10)
		if _, err := io.ReadFull(st, got); err != nil || string(got) != "last words" {
			t.Errorf("buffered data after tunnel death: %q, %v", got, err)
		}
		if _, err := st.Read(got); err == nil || !errors.Is(err, node.Err()) && err.Error() != node.Err().Error() {
			t.Errorf("read after tunnel death: %v, want the tunnel's error %v", err, node.Err())
		}
	})
}

func TestProtocolErrorsCloseTunnel(t *testing.T) {
	frame := func(typ frameType, id, val uint32, payload ...byte) []byte {
		return append(appendHeader(nil, header{typ: typ, id: id, val: val}), payload...)
	}
	for _, tc := range []struct {
		name  string
		bytes []byte
		close bool // close the connection after writing
		want  error
	}{
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), false, ErrProtocol},
		{"unknown frame type", frame(0x7f, 0, 0), false, ErrProtocol},
		{"open with the node's parity", frame(typeOpen, 2, 0), false, ErrProtocol},
		{"open twice", append(frame(typeOpen, 1, 0), frame(typeOpen, 1, 0)...), false, ErrProtocol},
		{"data past the window", append(frame(typeOpen, 1, 0), frame(typeData, 1, InitialWindow+1)...), false, ErrProtocol},
		{"oversized data", frame(typeData, 1, MaxMessageSize), false, ErrProtocol},
		{"data after fin", append(append(frame(typeOpen, 1, 0), frame(typeFin, 1, 0)...), frame(typeData, 1, 1, 'x')...), false, ErrProtocol},
		{"window overflow", append(frame(typeOpen, 1, 0), frame(typeWindow, 1, math.MaxUint32)...), false, ErrProtocol},
		{"truncated header", []byte{byte(typeData), 0, 0}, true, io.ErrUnexpectedEOF},
		{"truncated payload", append(frame(typeOpen, 1, 0), frame(typeData, 1, 100, 'x', 'y')...), true, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				a, b := net.Pipe()
				node, err := Server(a, Config{})
				if err != nil {
					t.Fatal(err)
				}
				defer node.Close()
				go io.Copy(io.Discard, b) // take whatever the node sends
				b.Write(tc.bytes)
				if tc.close {
					b.Close()
				}
				<-node.Done()
				if !errors.Is(node.Err(), tc.want) {
					t.Errorf("Err = %v, want %v", node.Err(), tc.want)
				}
				b.Close()
			})
		})
	}
}

func TestStreamIDsWrapAround(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		node, agent := pipePair(t, Config{}, Config{})
		serveEcho(t, agent)
		keep, err := node.Open(t.Context()) // ID 2 stays open across the wrap
		if err != nil {
			t.Fatal(err)
		}
		node.mu.Lock()
		node.nextID = math.MaxUint32 - 1
		node.mu.Unlock()
		var ids []uint32
		for range 3 {
			st, err := node.Open(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, st.ID())
			if err := roundTripOn(st, []byte("wrap")); err != nil {
				t.Errorf("stream %d: %v", st.ID(), err)
			}
		}
		if want := []uint32{math.MaxUint32 - 1, 4, 6}; fmt.Sprint(ids) != fmt.Sprint(want) {
			t.Errorf("IDs across the wrap: %v, want %v (skipping 0 and the live 2)", ids, want)
		}
		keep.Close()
	})
}

func roundTripOn(st *Stream, data []byte) error {
	defer st.Close()
	if _, err := st.Write(data); err != nil {
		return err
	}
	st.CloseWrite()
	got, err := io.ReadAll(st)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("got %q", got)
	}
	return nil
}

// A peer flooding PINGs while reading nothing cannot grow the control
// queue without bound.
func TestControlQueueIsBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := net.Pipe()
		sb := &stuckConn{Conn: b, wake: make(chan struct{})}
		sb.stuck.Store(true)
		node, err := Server(a, Config{})
		if err != nil {
			t.Fatal(err)
		}
		defer node.Close()
		ping := appendHeader(nil, header{typ: typePing})
		go func() {
			for {
				if _, err := b.Write(ping); err != nil {
					return
				}
			}
		}()
		<-node.Done()
		if !errors.Is(node.Err(), ErrProtocol) || !strings.Contains(node.Err().Error(), "control queue") {
			t.Errorf("Err = %v, want a protocol error about the control queue", node.Err())
		}
		sb.Close()
	})
}

func TestConfigValidateReportsEveryProblem(t *testing.T) {
	err := Config{
		StreamWindow:      1,
		MaxStreams:        -1,
		OpenTimeout:       -time.Second,
		KeepaliveInterval: time.Minute,
		DeadPeerTimeout:   time.Second,
		MaxWriteSize:      MaxMessageSize + 1,
	}.Validate()
	for _, field := range []string{"StreamWindow", "MaxStreams", "OpenTimeout", "DeadPeerTimeout", "MaxWriteSize"} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("Validate() = %v, want a problem with %s", err, field)
		}
	}
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("zero Config: %v", err)
	}
	if _, err := Server(nil, Config{MaxStreams: -1}); err == nil {
		t.Error("Server accepted an invalid Config")
	}
}

// recConn records the type of the first frame of every Write, and can hold
// Writes until released.
type recConn struct {
	net.Conn
	mu     sync.Mutex
	firsts []frameType
	hold   chan struct{} // if set, the next Write waits for it to close
}

func (c *recConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	hold := c.hold
	c.hold = nil
	c.firsts = append(c.firsts, frameType(p[0]))
	c.mu.Unlock()
	if hold != nil {
		<-hold
	}
	return c.Conn.Write(p)
}

// Control frames go out in the very next write, ahead of any data waiting.
func TestControlFramesDoNotWaitBehindData(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := net.Pipe()
		rec := &recConn{Conn: a}
		node, agent := sessionPair(t, rec, b, Config{}, Config{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				st, err := agent.Accept(context.Background())
				if err != nil {
					return
				}
				wg.Go(func() { io.Copy(io.Discard, st) })
			}
		})
		t.Cleanup(func() { agent.Close(); wg.Wait() })

		var streams []*Stream
		for range 4 {
			st, err := node.Open(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			streams = append(streams, st)
		}
		synctest.Wait() // OPENs written

		hold := make(chan struct{})
		rec.mu.Lock()
		rec.hold = hold
		held := len(rec.firsts)
		rec.mu.Unlock()
		var writers sync.WaitGroup
		for _, st := range streams {
			writers.Go(func() { st.Write(make([]byte, 1<<20)) })
		}
		synctest.Wait() // one write held, the other streams' data queued
		node.GoAway()
		close(hold)
		writers.Wait()

		rec.mu.Lock()
		defer rec.mu.Unlock()
		if got := rec.firsts[held+1]; got != typeGoAway {
			t.Errorf("write after the held one starts with %v, want GOAWAY ahead of the queued data (writes: %v)", got, rec.firsts[held:])
		}
	})
}

// Whatever arrives, the session either keeps going or ends with an error;
// it never panics, and it always ends when the connection closes.
func FuzzSessionInput(f *testing.F) {
	frame := func(typ frameType, id, val uint32, payload ...byte) []byte {
		return append(appendHeader(nil, header{typ: typ, id: id, val: val}), payload...)
	}
	f.Add(frame(typeOpen, 1, 0))
	f.Add(append(frame(typeOpen, 1, 0), frame(typeData, 1, 3, 'a', 'b', 'c')...))
	f.Add(append(append(frame(typeOpen, 1, 0), frame(typeFin, 1, 0)...), frame(typeReset, 1, uint32(codeClosed))...))
	f.Add(append(frame(typePing, 0, 7), frame(typeGoAway, 0, 0)...))
	f.Add(frame(typeWindow, 2, 100))
	f.Add([]byte{0xff, 0, 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		synctest.Test(t, func(t *testing.T) {
			a, b := net.Pipe()
			node, err := Server(a, Config{})
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				for {
					st, err := node.Accept(context.Background())
					if err != nil {
						return
					}
					go func() { io.Copy(io.Discard, st); st.Close() }()
				}
			}()
			go io.Copy(io.Discard, b)
			b.Write(in)
			b.Close()
			<-node.Done()
			if node.Err() == nil {
				t.Error("session ended without an error")
			}
			node.Close()
		})
	})
}
