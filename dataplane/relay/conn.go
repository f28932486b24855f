package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	relayv1 "github.com/kas-project/kas/gen/kas/relay/v1"
)

// errFarClosed is what Write returns once the far node ended the call.
var errFarClosed = errors.New("relay stream closed by the far node")

// conn is a relayed stream as a net.Conn: Write sends data messages,
// CloseWrite closes the request side, Read returns the data messages
// received. One goroutine (recvLoop) receives, so that Read can honour
// deadlines; it belongs to the Dialer's WaitGroup.
type conn struct {
	d      *Dialer
	stream *connect.BidiStreamForClientSimple[relayv1.RelayRequest, relayv1.RelayResponse]
	cancel context.CancelFunc
	laddr  net.Addr
	raddr  net.Addr

	recv    chan []byte // from recvLoop; closed when it ends
	recvErr error       // why it ended; written before recv is closed

	rmu     sync.Mutex // serialises Read
	pending []byte
	rdl     deadline

	wmu         sync.Mutex // serialises Write, CloseWrite and the graceful Close
	writeClosed bool
	wdl         deadline

	closeOnce sync.Once
	closed    chan struct{}
	linger    atomic.Pointer[time.Timer]
}

func (c *conn) recvLoop() {
	defer c.d.wg.Done()
	defer func() {
		if t := c.linger.Load(); t != nil {
			t.Stop()
		}
		c.cancel()
	}()
	for {
		msg, err := c.stream.Receive()
		if err != nil {
			c.recvErr = c.readError(err)
			close(c.recv)
			return
		}
		data := msg.GetData()
		if len(data) == 0 {
			continue
		}
		c.d.bytesIn.Add(uint64(len(data)))
		select {
		case c.recv <- data:
		case <-c.closed: // drop what arrives until the far side ends
		}
	}
}

func (c *conn) readError(err error) error {
	switch {
	case errors.Is(err, io.EOF):
		return io.EOF
	case isClosed(c.closed):
		return fmt.Errorf("read relay: %w", net.ErrClosed)
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return fmt.Errorf("read relay: %s: %w", ce.Code(), errors.New(ce.Message()))
	}
	return fmt.Errorf("read relay: %w", err)
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Read reads data relayed from the agent; io.EOF once the agent's side
// ended cleanly.
func (c *conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if len(c.pending) == 0 {
		if isClosed(c.closed) {
			return 0, fmt.Errorf("read relay: %w", net.ErrClosed)
		}
		select {
		case data, ok := <-c.recv:
			if !ok {
				return 0, c.recvErr
			}
			c.pending = data
		case <-c.closed:
			return 0, fmt.Errorf("read relay: %w", net.ErrClosed)
		case <-c.rdl.done():
			return 0, os.ErrDeadlineExceeded
		}
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// Write sends p to the agent in chunks of at most MaxChunk bytes. A write
// still blocked when the write deadline passes fails the whole conn.
func (c *conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	switch {
	case isClosed(c.closed):
		return 0, fmt.Errorf("write relay: %w", net.ErrClosed)
	case c.writeClosed:
		return 0, errors.New("write relay: write after CloseWrite")
	case isClosed(c.wdl.done()):
		return 0, os.ErrDeadlineExceeded
	}
	var expired atomic.Bool
	if t := c.wdl.when(); !t.IsZero() {
		timer := time.AfterFunc(time.Until(t), func() { expired.Store(true); c.cancel() })
		defer timer.Stop()
	}
	n := 0
	for n < len(p) {
		chunk := p[n:min(len(p), n+MaxChunk)]
		if err := c.stream.Send(&relayv1.RelayRequest{Msg: &relayv1.RelayRequest_Data{Data: chunk}}); err != nil {
			switch {
			case expired.Load():
				return n, os.ErrDeadlineExceeded
			case isClosed(c.closed):
				return n, fmt.Errorf("write relay: %w", net.ErrClosed)
			}
			return n, fmt.Errorf("write relay: %w", errFarClosed)
		}
		n += len(chunk)
		c.d.bytesOut.Add(uint64(len(chunk)))
	}
	return n, nil
}

// CloseWrite half-closes: the agent reads io.EOF after the data written.
func (c *conn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.writeClosed || isClosed(c.closed) {
		return nil
	}
	c.writeClosed = true
	if err := c.stream.CloseRequest(); err != nil {
		return fmt.Errorf("close relay for writing: %w", err)
	}
	return nil
}

// Close closes both directions. Data already written is still delivered:
// the request side is closed gracefully and the call is cancelled once the
// far side has finished, or after DialerOptions.CloseLinger. A Write
// blocked at the time is aborted instead.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		if !c.wmu.TryLock() {
			c.cancel()
			return
		}
		if !c.writeClosed {
			c.writeClosed = true
			c.stream.CloseRequest()
		}
		c.wmu.Unlock()
		c.linger.Store(time.AfterFunc(c.d.opts.CloseLinger, c.cancel))
	})
	return nil
}

func (c *conn) LocalAddr() net.Addr  { return c.laddr }
func (c *conn) RemoteAddr() net.Addr { return c.raddr }

func (c *conn) SetDeadline(t time.Time) error {
	c.rdl.set(t)
	c.wdl.set(t)
	return nil
}

func (c *conn) SetReadDeadline(t time.Time) error  { c.rdl.set(t); return nil }
func (c *conn) SetWriteDeadline(t time.Time) error { c.wdl.set(t); return nil }

// deadline is a settable point in time with a channel closed once it has
// passed. The zero value has no deadline.
type deadline struct {
	mu    sync.Mutex
	at    time.Time
	timer *time.Timer
	ch    chan struct{}
	gen   uint64
}

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gen++
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	if d.ch == nil || isClosed(d.ch) {
		d.ch = make(chan struct{})
	}
	d.at = t
	if t.IsZero() {
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		close(d.ch)
		return
	}
	gen, ch := d.gen, d.ch
	d.timer = time.AfterFunc(dur, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.gen == gen && !isClosed(ch) {
			close(ch)
		}
	})
}

func (d *deadline) done() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	return d.ch
}

func (d *deadline) when() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.at
}
