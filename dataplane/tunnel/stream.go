package tunnel

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Stream is one full-duplex byte stream inside a tunnel. It is a net.Conn,
// with CloseWrite for half-close and Reset to abort.
//
// Flow control is per stream: the peer sends at most the stream's window
// ahead of what the local reader consumed, so a stream nobody reads stalls
// its own sender only, and pins at most Config.StreamWindow of memory.
type Stream struct {
	sess    *Session
	id      uint32
	inbound bool // opened by the peer

	rdMu, wrMu sync.Mutex    // serialize Read calls, Write calls
	readWake   chan struct{} // cap 1: data, FIN, reset or close happened
	writeWake  chan struct{} // cap 1: pending was taken, or reset or close happened
	rdl, wdl   deadline

	winPending atomic.Uint32 // credit granted but not yet sent in a WINDOW frame

	mu sync.Mutex
	// Receive side.
	rq         [][]byte // received data; rq[0][roff:] is next
	roff       int
	buffered   int // bytes in rq
	arriving   int // bytes of a DATA frame being read off the connection
	consumed   int // bytes read so far
	recvCredit int // bytes the peer may still send
	window     int // recvCredit + arriving + buffered stays at most this while receiving
	charged    int // this stream's share of Session.committed
	finRecv    bool
	// Send side.
	pending    []byte // the part of the current Write not yet framed
	written    int    // bytes of the current Write framed so far
	sendCredit int
	queued     bool // in the session's ready queue
	finSent    bool
	peerClosed bool // the peer closed the stream after its FIN: writes fail
	// Lifecycle.
	accepted bool  // the peer accepted it (outbound) or Accept returned it (inbound)
	closed   bool  // Close was called
	gone     bool  // left, or is leaving, the session's table
	aborted  bool  // reset: buffered data was dropped
	err      error // why the stream failed: reset or session end
	stopOpen func()
	// settled is closed once the peer accepted the stream or it failed
	// (WaitAccepted).
	settled     chan struct{}
	settledDone bool
}

func newStream(s *Session, id uint32, inbound bool) *Stream {
	return &Stream{
		sess:       s,
		id:         id,
		inbound:    inbound,
		readWake:   make(chan struct{}, 1),
		writeWake:  make(chan struct{}, 1),
		settled:    make(chan struct{}),
		recvCredit: InitialWindow,
		window:     InitialWindow,
		charged:    InitialWindow, // reserved by the caller
		sendCredit: InitialWindow,
	}
}

// ID returns the stream's number within its tunnel (odd when the client
// opened it, even when the server did).
func (st *Stream) ID() uint32 { return st.id }

// Read reads received data. After the peer's CloseWrite or Close and once
// the data is drained it returns io.EOF. It fails with ErrReset (wrapped)
// if the stream was aborted, ErrRefused or ErrOpenTimeout if the peer
// never took it, net.ErrClosed after Close, os.ErrDeadlineExceeded after
// the read deadline, and the session's error when the tunnel died.
func (st *Stream) Read(p []byte) (int, error) {
	st.rdMu.Lock()
	defer st.rdMu.Unlock()
	st.mu.Lock()
	for {
		switch {
		case st.closed:
			st.mu.Unlock()
			return 0, fmt.Errorf("read stream %d: %w", st.id, net.ErrClosed)
		case st.aborted:
			err := st.err
			st.mu.Unlock()
			return 0, err
		case len(p) == 0:
			st.mu.Unlock()
			return 0, nil
		case st.buffered > 0:
			n := st.readLocked(p)
			st.mu.Unlock()
			return n, nil
		case st.finRecv:
			st.mu.Unlock()
			return 0, io.EOF
		case st.err != nil:
			err := st.err
			st.mu.Unlock()
			return 0, err
		}
		dl := st.rdl.done()
		select {
		case <-dl:
			st.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		default:
		}
		st.mu.Unlock()
		select {
		case <-st.readWake:
		case <-dl:
		}
		st.mu.Lock()
	}
}

func (st *Stream) readLocked(p []byte) int {
	n := 0
	for n < len(p) && len(st.rq) > 0 {
		c := st.rq[0]
		k := copy(p[n:], c[st.roff:])
		n += k
		st.roff += k
		if st.roff == len(c) {
			putBuf(c)
			st.rq[0] = nil
			st.rq = st.rq[1:]
			st.roff = 0
		}
	}
	if len(st.rq) == 0 {
		st.rq = nil
	}
	st.buffered -= n
	st.consumed += n
	st.consumedLocked()
	return n
}

// consumedLocked returns consumed space to the peer as credit, in WINDOW
// frames of at least a quarter window. A stream that has carried more than
// half its initial window is a bulk stream: its window grows to
// Config.StreamWindow while the session's budget allows. Short
// request/response streams stay at InitialWindow and cost little.
func (st *Stream) consumedLocked() {
	if st.finRecv || st.gone || st.err != nil {
		st.setChargeLocked(st.buffered) // nothing more will arrive
		return
	}
	if st.consumed >= InitialWindow/2 {
		st.growLocked()
	}
	avail := st.window - st.recvCredit - st.arriving - st.buffered
	if avail <= 0 || avail < st.window/4 {
		return
	}
	st.recvCredit += avail
	if st.winPending.Add(uint32(avail)) == uint32(avail) {
		st.sess.enqueue(ctrlItem{h: header{typ: typeWindow, id: st.id}, st: st})
	}
}

// growLocked raises the window to Config.StreamWindow if the session's
// receive budget has room. The caller announces the new credit.
func (st *Stream) growLocked() {
	extra := st.sess.cfg.StreamWindow - st.window
	if extra <= 0 || !st.sess.reserveGrowth(extra) {
		return
	}
	st.window += extra
	st.charged += extra
}

func (st *Stream) setChargeLocked(c int) {
	st.sess.committed.Add(int64(c - st.charged))
	st.charged = c
}

// Write writes p, blocking while the peer's window for this stream is
// full. It fails with net.ErrClosed after Close or CloseWrite,
// ErrPeerClosedStream after the peer closed the stream, ErrReset (wrapped)
// if it was aborted, and os.ErrDeadlineExceeded after the write deadline.
func (st *Stream) Write(p []byte) (int, error) {
	st.wrMu.Lock()
	defer st.wrMu.Unlock()
	st.mu.Lock()
	defer st.mu.Unlock()
	if err := st.writeErrLocked(); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	st.pending, st.written = p, 0
	for st.written < len(p) {
		if st.sendCredit > 0 && !st.queued {
			if st.sess.writeInline(st) {
				if err := st.writeErrLocked(); err != nil && st.written < len(p) {
					st.pending = nil
					return st.written, err
				}
				continue
			}
			st.queued = true
			st.sess.pushReady(st)
		}
		dl := st.wdl.done()
		st.mu.Unlock()
		select {
		case <-st.writeWake:
		case <-dl:
		}
		st.mu.Lock()
		if st.written == len(p) {
			break
		}
		if err := st.writeErrLocked(); err != nil {
			st.pending = nil
			return st.written, err
		}
	}
	st.pending = nil
	return st.written, nil
}

func (st *Stream) writeErrLocked() error {
	switch {
	case st.closed:
		return fmt.Errorf("write stream %d: %w", st.id, net.ErrClosed)
	case st.finSent:
		return fmt.Errorf("write stream %d after CloseWrite: %w", st.id, net.ErrClosed)
	case st.err != nil:
		return st.err
	case st.peerClosed:
		return fmt.Errorf("write stream %d: %w", st.id, ErrPeerClosedStream)
	}
	select {
	case <-st.wdl.done():
		return os.ErrDeadlineExceeded
	default:
	}
	return nil
}

// fill is called by the writer: it appends one DATA frame of the pending
// write to b, as much as credit and room allow, and requeues the stream if
// more can go.
func (st *Stream) fill(b []byte, limit int) []byte {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.queued = false
	n := min(len(st.pending), st.sendCredit, limit-len(b)-headerSize)
	if n <= 0 {
		return b
	}
	b = appendHeader(b, header{typ: typeData, id: st.id, val: uint32(n)})
	b = append(b, st.pending[:n]...)
	st.pending = st.pending[n:]
	st.written += n
	st.sendCredit -= n
	st.sess.bytesOut.Add(uint64(n))
	switch {
	case len(st.pending) == 0:
		notify(st.writeWake)
	case st.sendCredit > 0:
		st.queued = true
		st.sess.pushReady(st)
	}
	return b
}

// CloseWrite half-closes the stream: the peer reads io.EOF after the data
// written so far, and can still send. A Write blocked at the time fails.
func (st *Stream) CloseWrite() error {
	st.mu.Lock()
	switch {
	case st.closed:
		st.mu.Unlock()
		return fmt.Errorf("close write stream %d: %w", st.id, net.ErrClosed)
	case st.err != nil:
		err := st.err
		st.mu.Unlock()
		return err
	case st.finSent || st.peerClosed:
		st.mu.Unlock()
		return nil
	}
	st.finSent = true
	st.pending = nil
	notify(st.writeWake)
	st.sess.enqueue(ctrlItem{h: header{typ: typeFin, id: st.id}})
	forget := st.finRecv && !st.gone
	st.gone = st.gone || forget
	st.mu.Unlock()
	if forget {
		st.sess.forget(st)
	}
	return nil
}

// Close closes the stream in both directions: written data is still
// delivered, then the peer reads io.EOF; data the peer sends from now on is
// dropped and its writes fail. Blocked Reads and Writes return. Close is
// idempotent and returns nil.
func (st *Stream) Close() error {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return nil
	}
	st.closed = true
	st.pending = nil
	st.dropLocked()
	if st.stopOpen != nil {
		st.stopOpen()
	}
	forget := !st.gone && st.err == nil
	if forget {
		st.gone = true
		if !st.finSent && !st.peerClosed {
			st.finSent = true
			st.sess.enqueue(ctrlItem{h: header{typ: typeFin, id: st.id}})
		}
		if !st.finRecv {
			// Tell the peer to stop sending; its data so far stays readable
			// since our FIN went first.
			st.sess.enqueue(ctrlItem{h: header{typ: typeReset, id: st.id, val: uint32(codeClosed)}})
		}
	}
	notify(st.readWake)
	notify(st.writeWake)
	st.mu.Unlock()
	st.rdl.stop()
	st.wdl.stop()
	if forget {
		st.sess.forget(st)
	}
	return nil
}

// Reset aborts the stream: both sides drop what they buffered, and pending
// and later Reads and Writes fail with ErrReset. The tunnel and its other
// streams are unaffected. Reset is idempotent; after Close it does nothing.
func (st *Stream) Reset() error {
	st.mu.Lock()
	if st.closed || st.err != nil {
		st.mu.Unlock()
		return nil
	}
	st.abortLocked(fmt.Errorf("stream %d reset locally: %w", st.id, ErrReset))
	forget := !st.gone
	st.gone = true
	if forget {
		st.sess.enqueue(ctrlItem{h: header{typ: typeReset, id: st.id, val: uint32(codeCancel)}})
	}
	st.mu.Unlock()
	st.sess.resets.Add(1)
	if forget {
		st.sess.forget(st)
	}
	return nil
}

// settleLocked wakes WaitAccepted: the stream was accepted or failed.
func (st *Stream) settleLocked() {
	if !st.settledDone {
		st.settledDone = true
		close(st.settled)
	}
}

// WaitAccepted waits until the peer accepted the stream, which Open does
// not wait for. It returns nil then (and at once for a stream the peer
// opened), the stream's error if it failed first — Retryable when the peer
// refused it, so that what was written may be sent on another tunnel — or
// ctx's error.
func (st *Stream) WaitAccepted(ctx context.Context) error {
	st.mu.Lock()
	if st.inbound || st.accepted {
		st.mu.Unlock()
		return nil
	}
	st.mu.Unlock()
	select {
	case <-st.settled:
	case <-ctx.Done():
		return fmt.Errorf("wait for stream %d to be accepted: %w", st.id, ctx.Err())
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.accepted {
		return nil
	}
	return st.err
}

// abortLocked fails the stream with err and drops its buffers.
func (st *Stream) abortLocked(err error) {
	st.err = err
	st.settleLocked()
	st.aborted = true
	st.pending = nil
	st.dropLocked()
	if st.stopOpen != nil {
		st.stopOpen()
	}
	notify(st.readWake)
	notify(st.writeWake)
}

func (st *Stream) dropLocked() {
	for _, c := range st.rq {
		putBuf(c)
	}
	st.rq, st.roff, st.buffered = nil, 0, 0
	st.setChargeLocked(0)
}

// openFailed resets an outbound stream the peer has not accepted in time.
func (st *Stream) openFailed(err error) {
	st.mu.Lock()
	if st.accepted || st.err != nil || st.closed {
		st.mu.Unlock()
		return
	}
	st.abortLocked(fmt.Errorf("stream %d: %w", st.id, err))
	forget := !st.gone
	st.gone = true
	if forget {
		st.sess.enqueue(ctrlItem{h: header{typ: typeReset, id: st.id, val: uint32(codeCancel)}})
	}
	st.mu.Unlock()
	st.sess.resets.Add(1)
	if forget {
		st.sess.forget(st)
	}
}

// acceptLocal marks an inbound stream accepted by the application and
// tells the peer. It reports false if the stream already ended.
func (st *Stream) acceptLocal() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.err != nil || st.gone {
		return false
	}
	st.accepted = true
	st.sess.enqueue(ctrlItem{h: header{typ: typeAccept, id: st.id}})
	return true
}

// Frame handlers, called by the session's reader.

func (st *Stream) remoteAccepted(delta uint32) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.inbound {
		return fmt.Errorf("%w: ACCEPT for stream %d that the peer opened", ErrProtocol, st.id)
	}
	if st.accepted {
		return fmt.Errorf("%w: second ACCEPT for stream %d", ErrProtocol, st.id)
	}
	st.accepted = true
	st.settleLocked()
	if st.stopOpen != nil {
		st.stopOpen()
		st.stopOpen = nil
	}
	return st.addCreditLocked(delta)
}

func (st *Stream) addCredit(delta uint32) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.addCreditLocked(delta)
}

func (st *Stream) addCreditLocked(delta uint32) error {
	if int64(st.sendCredit)+int64(delta) > maxWindow {
		return fmt.Errorf("%w: stream %d window grows past %d", ErrProtocol, st.id, maxWindow)
	}
	st.sendCredit += int(delta)
	if len(st.pending) > 0 && st.sendCredit > 0 && !st.queued && st.err == nil {
		st.queued = true
		st.sess.pushReady(st)
	}
	return nil
}

func (st *Stream) remoteFin() error {
	st.mu.Lock()
	if st.finRecv {
		st.mu.Unlock()
		return nil
	}
	st.finRecv = true
	st.recvCredit = 0
	if !st.closed && !st.aborted {
		st.setChargeLocked(st.buffered)
	}
	notify(st.readWake)
	forget := st.finSent && !st.gone
	st.gone = st.gone || forget
	st.mu.Unlock()
	if forget {
		st.sess.forget(st)
	}
	return nil
}

func (st *Stream) remoteReset(code resetCode) {
	st.mu.Lock()
	if st.gone {
		st.mu.Unlock()
		return
	}
	st.gone = true
	abort := true
	switch {
	case code == codeRefused && !st.inbound && !st.accepted:
		st.abortLocked(fmt.Errorf("stream %d: %w", st.id, ErrRefused))
	case code == codeClosed && st.finRecv:
		// The peer closed after its FIN: what it sent stays readable.
		abort = false
		st.peerClosed = true
		st.pending = nil
		notify(st.writeWake)
	default:
		st.abortLocked(fmt.Errorf("stream %d reset by peer: %w", st.id, ErrReset))
	}
	st.mu.Unlock()
	if abort {
		st.sess.resets.Add(1)
	}
	st.sess.forget(st)
}

// takeCredit accounts for an incoming DATA frame of n bytes before its
// payload is read.
func (st *Stream) takeCredit(n int) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.finRecv {
		return fmt.Errorf("%w: DATA after FIN on stream %d", ErrProtocol, st.id)
	}
	if n > st.recvCredit {
		return fmt.Errorf("%w: %d bytes of DATA exceed stream %d's window (%d left)", ErrProtocol, n, st.id, st.recvCredit)
	}
	st.recvCredit -= n
	st.arriving += n
	return nil
}

// deliver queues a received payload (a pooled buffer that st now owns).
func (st *Stream) deliver(buf []byte) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.arriving -= len(buf)
	if st.closed || st.aborted || st.gone && st.err != nil {
		putBuf(buf)
		return
	}
	n := len(buf)
	if n == 0 {
		putBuf(buf)
		return
	}
	if k := len(st.rq); k > 0 && n <= smallFrame {
		if tail := st.rq[k-1]; cap(tail)-len(tail) >= n {
			st.rq[k-1] = append(tail, buf...)
			putBuf(buf)
			n = 0
		}
	}
	if n > 0 {
		st.rq = append(st.rq, buf)
	}
	st.buffered += len(buf)
	notify(st.readWake)
}

// sessionEnded fails the stream because its tunnel died. Data already
// received stays readable.
func (st *Stream) sessionEnded(cause error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.gone = true
	if st.err == nil {
		st.err = cause
	}
	st.settleLocked()
	st.pending = nil
	if st.stopOpen != nil {
		st.stopOpen()
	}
	notify(st.readWake)
	notify(st.writeWake)
}

// SetDeadline sets the read and write deadlines.
func (st *Stream) SetDeadline(t time.Time) error {
	st.rdl.set(t)
	st.wdl.set(t)
	return nil
}

// SetReadDeadline sets the deadline for Read; zero means none.
func (st *Stream) SetReadDeadline(t time.Time) error {
	st.rdl.set(t)
	return nil
}

// SetWriteDeadline sets the deadline for Write; zero means none. A Write
// waiting for window or for the writer returns at the deadline; one whose
// frame is already being written to the connection returns when that write
// ends, which Config.WriteTimeout bounds.
func (st *Stream) SetWriteDeadline(t time.Time) error {
	st.wdl.set(t)
	return nil
}

// LocalAddr returns the tunnel connection's local address.
func (st *Stream) LocalAddr() net.Addr { return st.sess.conn.LocalAddr() }

// RemoteAddr returns the tunnel connection's remote address.
func (st *Stream) RemoteAddr() net.Addr { return st.sess.conn.RemoteAddr() }

var _ net.Conn = (*Stream)(nil)
