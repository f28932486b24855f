package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Commands a node sends on a stream (or the raw connection); the agent
// serves them in order until EOF. Each is one byte plus an 8-byte count.
const (
	cmdSend = 'S' // agent sends count bytes
	cmdRecv = 'R' // agent receives count bytes, then sends one byte
	cmdEcho = 'E' // count round trips of msgSize bytes
	cmdHold = 'H' // agent sends until the stream fails
)

const (
	msgSize = 64       // request/response size in the latency tests
	chunk   = 64 << 10 // write size for bulk transfers
)

func sendCmd(w io.Writer, cmd byte, n int64) error {
	var b [9]byte
	b[0] = cmd
	binary.BigEndian.PutUint64(b[1:], uint64(n))
	_, err := w.Write(b[:])
	return err
}

// serveAgent runs the agent side of one stream or raw connection.
func serveAgent(c io.ReadWriter, held *atomic.Int64) error {
	buf := make([]byte, chunk)
	var hdr [9]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		n := int64(binary.BigEndian.Uint64(hdr[1:]))
		switch hdr[0] {
		case cmdSend:
			for n > 0 {
				k, err := c.Write(buf[:min(n, chunk)])
				n -= int64(k)
				if err != nil {
					return err
				}
			}
		case cmdRecv:
			if err := readN(c, n, buf); err != nil {
				return err
			}
			if _, err := c.Write(buf[:1]); err != nil {
				return err
			}
		case cmdEcho:
			for range n {
				if _, err := io.ReadFull(c, buf[:msgSize]); err != nil {
					return err
				}
				if _, err := c.Write(buf[:msgSize]); err != nil {
					return err
				}
			}
		case cmdHold:
			for {
				k, err := c.Write(buf)
				held.Add(int64(k))
				if err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("unknown command %q", hdr[0])
		}
	}
}

// harness runs one candidate over a loopback WebSocket: an HTTP server
// whose handler starts the node end, and one agent end dialled to it that
// serves every stream it accepts.
type harness struct {
	srv   *httptest.Server
	node  mux
	agent mux
	held  atomic.Int64 // bytes written by hold streams
	wg    sync.WaitGroup
}

func newHarness(ctx context.Context, c candidate) (*harness, error) {
	nodes := make(chan mux, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m, err := c.accept(w, r)
		if err != nil {
			return
		}
		nodes <- m
	}))
	agent, err := c.dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"))
	if err != nil {
		srv.Close()
		return nil, fmt.Errorf("%s: %w", c.name, err)
	}
	h := &harness{srv: srv, node: <-nodes, agent: agent}
	h.wg.Go(func() {
		for {
			st, err := agent.Accept(context.Background())
			if err != nil {
				return
			}
			h.wg.Go(func() {
				serveAgent(st, &h.held)
				st.Close()
			})
		}
	})
	return h, nil
}

func (h *harness) close() {
	h.node.Close()
	h.agent.Close()
	h.wg.Wait()
	h.srv.Close()
}

// throughput moves n bytes over one new stream, agent→node (up) or
// node→agent, and returns MiB/s.
func (h *harness) throughput(ctx context.Context, n int64, up bool) (float64, error) {
	st, err := h.node.Open(ctx)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	return transfer(st, n, up)
}

func transfer(c io.ReadWriter, n int64, up bool) (float64, error) {
	buf := make([]byte, chunk)
	start := time.Now()
	if up {
		if err := sendCmd(c, cmdSend, n); err != nil {
			return 0, err
		}
		if err := readN(c, n, buf); err != nil {
			return 0, err
		}
	} else {
		if err := sendCmd(c, cmdRecv, n); err != nil {
			return 0, err
		}
		for left := n; left > 0; {
			k, err := c.Write(buf[:min(left, chunk)])
			left -= int64(k)
			if err != nil {
				return 0, err
			}
		}
		if _, err := io.ReadFull(c, buf[:1]); err != nil {
			return 0, err
		}
	}
	return float64(n) / (1 << 20) / time.Since(start).Seconds(), nil
}

// latency measures msgSize round trips on one open stream.
func (h *harness) latency(ctx context.Context, n int) ([]time.Duration, error) {
	st, err := h.node.Open(ctx)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	return roundTrips(st, n)
}

func roundTrips(c io.ReadWriter, n int) ([]time.Duration, error) {
	if err := sendCmd(c, cmdEcho, int64(n)); err != nil {
		return nil, err
	}
	buf := make([]byte, msgSize)
	d := make([]time.Duration, n)
	for i := range d {
		start := time.Now()
		if _, err := c.Write(buf); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return nil, err
		}
		d[i] = time.Since(start)
	}
	return d, nil
}

// openLatency measures what the proxy does per request: open a stream,
// one round trip, close.
func (h *harness) openLatency(ctx context.Context, n int) ([]time.Duration, error) {
	buf := make([]byte, msgSize)
	d := make([]time.Duration, n)
	for i := range d {
		start := time.Now()
		st, err := h.node.Open(ctx)
		if err != nil {
			return nil, err
		}
		if err := sendCmd(st, cmdEcho, 1); err != nil {
			return nil, err
		}
		if _, err := st.Write(buf); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(st, buf); err != nil {
			return nil, err
		}
		st.Close()
		d[i] = time.Since(start)
	}
	return d, nil
}

// stallTest runs 4 streams moving n bytes each agent→node at once, on a
// fresh tunnel that also carries `stalled` streams whose node-side reader
// stopped (after the first 2 MiB, like a watch whose client got stuck), and
// returns the 4 streams' total MiB/s.
func stallTest(ctx context.Context, c candidate, stalled int, n int64) (float64, error) {
	h, err := newHarness(ctx, c)
	if err != nil {
		return 0, err
	}
	defer h.close()
	buf := make([]byte, chunk)
	for range stalled {
		st, err := h.node.Open(ctx)
		if err != nil {
			return 0, err
		}
		defer st.Close()
		if err := sendCmd(st, cmdHold, 0); err != nil {
			return 0, err
		}
		if err := readN(st, 2<<20, buf); err != nil {
			return 0, err
		}
	}
	// Wait until the held streams' senders are blocked on full windows.
	for last := int64(-1); stalled > 0; {
		time.Sleep(50 * time.Millisecond)
		cur := h.held.Load()
		if cur == last {
			break
		}
		last = cur
	}
	const active = 4
	var wg sync.WaitGroup
	errs := make(chan error, active)
	start := time.Now()
	for range active {
		wg.Go(func() {
			st, err := h.node.Open(ctx)
			if err != nil {
				errs <- err
				return
			}
			defer st.Close()
			_, err = transfer(st, n, true)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return 0, err
		}
	}
	return float64(active*n) / (1 << 20) / time.Since(start).Seconds(), nil
}

// rawPair is the baseline: one WebSocket NetConn, node (server) end and
// agent (client) end, with the agent serving commands.
type rawPair struct {
	srv  *httptest.Server
	node net.Conn
	wg   sync.WaitGroup
}

func newRawPair(ctx context.Context) (*rawPair, error) {
	nodes := make(chan net.Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		nc, err := acceptNetConn(w, r)
		if err != nil {
			return
		}
		nodes <- nc
	}))
	agent, err := dialNetConn(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"))
	if err != nil {
		srv.Close()
		return nil, err
	}
	p := &rawPair{srv: srv, node: <-nodes}
	p.wg.Go(func() {
		serveAgent(agent, nil)
		agent.Close()
	})
	return p, nil
}

func (p *rawPair) throughput(n int64, up bool) (float64, error) { return transfer(p.node, n, up) }

// handoffThroughput is agent→node throughput of the raw WebSocket when the
// node reads in one goroutine and hands 64 KiB buffers to a consumer
// goroutine, as every demultiplexer must: the ceiling for any mux.
func (p *rawPair) handoffThroughput(n int64) (float64, error) {
	if err := sendCmd(p.node, cmdSend, n); err != nil {
		return 0, err
	}
	const depth = 16
	free, full := make(chan []byte, depth), make(chan []byte, depth)
	for range depth {
		free <- make([]byte, chunk)
	}
	errc := make(chan error, 1)
	start := time.Now()
	go func() {
		defer close(full)
		for left := n; left > 0; {
			buf := <-free
			k, err := p.node.Read(buf[:min(int64(len(buf)), left)])
			left -= int64(k)
			full <- buf[:k]
			if err != nil && left > 0 {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	dst := make([]byte, chunk)
	for buf := range full {
		copy(dst, buf)
		free <- buf[:cap(buf)]
	}
	if err := <-errc; err != nil {
		return 0, err
	}
	return float64(n) / (1 << 20) / time.Since(start).Seconds(), nil
}
func (p *rawPair) latency(n int) ([]time.Duration, error) { return roundTrips(p.node, n) }

func (p *rawPair) close() {
	p.node.Close()
	p.wg.Wait()
	p.srv.Close()
}
