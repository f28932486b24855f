package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// closeGrace bounds how long Close waits for the final CLOSE frame to be
// written before it closes the connection anyway.
const closeGrace = 2 * time.Second

// maxCtrlQueue bounds control frames waiting to be written. A peer that
// keeps sending PINGs or OPENs while it reads nothing would otherwise grow
// the queue without bound; past this the session is closed.
const maxCtrlQueue = 16 << 10

// smallFrame: DATA payloads up to this size are read into a buffer of this
// size and, where they fit, packed into the stream's last buffer, so a
// stream fed tiny frames does not hold one buffer per frame.
const smallFrame = 4 << 10

// Session is one tunnel: a connection carrying many streams. Create it with
// Server (the dataplane node's end) or Client (agentk's end). Either side
// may Open streams and Accept the peer's; in kas the node opens and the
// agent accepts.
//
// A Session runs one reader goroutine for its whole life, and a writer
// goroutine only while frames wait to be sent (a Write with nothing queued
// ahead of it writes its frame itself). Close waits for all of them.
type Session struct {
	conn   net.Conn
	cfg    Config
	client bool

	done     chan struct{} // closed when the session ends
	goneAway chan struct{} // closed when the peer sent GOAWAY
	// goAwayAcked is closed when the peer answered the PING sent right
	// after our GOAWAY: it has read the GOAWAY, and every OPEN it sent
	// before has arrived (and was refused).
	goAwayAcked chan struct{}
	goAwaySeq   atomic.Uint32 // that PING's value; 0 before GoAway
	wg          sync.WaitGroup

	// mu guards the stream table, the accept backlog and the session state.
	mu         sync.Mutex
	streams    map[uint32]*Stream
	nextID     uint32
	backlog    []*Stream
	goAwaySent bool
	goAwayRecv bool
	err        error // why the session ended; nil while it lives

	acceptWake chan struct{} // cap 1: the backlog grew
	idleWake   chan struct{} // cap 1: a stream left the table

	committed atomic.Int64 // receive budget in use, see Config.MaxReceiveBuffer

	// wmu guards the writer's queues. Lock order: mu, then Stream.mu, then wmu.
	wmu        sync.Mutex
	ctrl       []ctrlItem // control frames, written before any data
	ready      []*Stream  // streams with data to send and credit, round robin
	writing    bool       // someone writes to conn: the writer goroutine or an inline Write
	wclosed    bool       // the session ended: queue nothing more
	forceClose *time.Timer

	closeConnOnce sync.Once

	// Housekeeping; lastRecv and lastPing belong to tick.
	timer      *time.Timer
	recvSeen   atomic.Bool
	lastRecv   time.Time
	lastPing   time.Time
	pingSeq    atomic.Uint32
	pingSentAt atomic.Int64
	writeStart atomic.Int64 // unix nanos when the current conn.Write began; 0 if none
	rtt        atomic.Int64

	opened, accepted, closed, refused, resets atomic.Uint64
	bytesIn, bytesOut                         atomic.Uint64
}

type ctrlItem struct {
	h  header
	st *Stream // set for a coalesced WINDOW: the delta is taken when written
}

// Server starts the session on the dataplane node's end of conn (the end
// that accepted the WebSocket). The session owns conn from now on.
func Server(conn net.Conn, cfg Config) (*Session, error) { return newSession(conn, cfg, false) }

// Client starts the session on agentk's end of conn (the end that dialled).
// The session owns conn from now on.
func Client(conn net.Conn, cfg Config) (*Session, error) { return newSession(conn, cfg, true) }

func newSession(conn net.Conn, cfg Config, client bool) (*Session, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("tunnel config: %w", err)
	}
	s := &Session{
		conn:        conn,
		cfg:         cfg.withDefaults(),
		client:      client,
		done:        make(chan struct{}),
		goneAway:    make(chan struct{}),
		goAwayAcked: make(chan struct{}),
		streams:     make(map[uint32]*Stream),
		acceptWake:  make(chan struct{}, 1),
		idleWake:    make(chan struct{}, 1),
	}
	s.nextID = 2
	if client {
		s.nextID = 1
	}
	now := time.Now()
	s.lastRecv, s.lastPing = now, now
	s.mu.Lock()
	s.timer = time.AfterFunc(s.cfg.tick(), s.tick)
	s.mu.Unlock()
	s.wg.Add(1)
	go s.readLoop()
	return s, nil
}

// Open starts a new stream to the peer. It does not wait for the peer: the
// stream can be written at once (up to InitialWindow bytes before the peer
// accepts it). If the peer refuses the stream, or has not accepted it within
// Config.OpenTimeout or before ctx ends, the stream is reset and its Read
// and Write fail with ErrRefused or ErrOpenTimeout. Once accepted, ctx no
// longer matters, as with net.Dialer.DialContext.
func (s *Session) Open(ctx context.Context) (*Stream, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	s.mu.Lock()
	switch {
	case s.err != nil:
		err := s.err
		s.mu.Unlock()
		return nil, fmt.Errorf("open stream: %w", err)
	case s.goAwaySent || s.goAwayRecv:
		s.mu.Unlock()
		return nil, fmt.Errorf("open stream: %w", ErrGoingAway)
	case len(s.streams) >= s.cfg.MaxStreams || !s.reserve(InitialWindow):
		s.mu.Unlock()
		return nil, fmt.Errorf("open stream: %w", ErrTooManyStreams)
	}
	id := s.nextID
	for id == 0 || s.streams[id] != nil {
		id += 2 // wrapped around: skip the reserved ID and live streams
	}
	s.nextID = id + 2
	st := newStream(s, id, false)
	s.streams[id] = st
	s.opened.Add(1)
	s.enqueue(ctrlItem{h: header{typ: typeOpen, id: id}})
	s.mu.Unlock()

	st.mu.Lock()
	if st.err == nil && !st.accepted {
		t := time.AfterFunc(s.cfg.OpenTimeout, func() { st.openFailed(ErrOpenTimeout) })
		stopCtx := context.AfterFunc(ctx, func() {
			st.openFailed(fmt.Errorf("%w: %w", ErrOpenTimeout, context.Cause(ctx)))
		})
		st.stopOpen = func() { t.Stop(); stopCtx() }
	}
	st.mu.Unlock()
	return st, nil
}

// Accept waits for the next stream the peer opened. It fails when ctx ends
// or the session ends.
func (s *Session) Accept(ctx context.Context) (*Stream, error) {
	for {
		s.mu.Lock()
		for len(s.backlog) > 0 {
			st := s.backlog[0]
			s.backlog[0] = nil
			s.backlog = s.backlog[1:]
			if len(s.backlog) == 0 {
				s.backlog = nil
			}
			if len(s.backlog) > 0 {
				notify(s.acceptWake) // for the next Accept caller
			}
			if st.acceptLocal() {
				s.mu.Unlock()
				return st, nil
			}
		}
		if s.err != nil {
			err := s.err
			s.mu.Unlock()
			return nil, fmt.Errorf("accept stream: %w", err)
		}
		s.mu.Unlock()
		select {
		case <-s.acceptWake:
		case <-s.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("accept stream: %w", ctx.Err())
		}
	}
}

// GoAway tells the peer this tunnel is draining: neither side opens new
// streams on it, streams already open carry on, and the peer should open a
// replacement tunnel and then close this one. New streams from the peer are
// refused from now on. GoAway is idempotent; it does not wait.
func (s *Session) GoAway() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.goAwaySent || s.err != nil {
		return
	}
	s.goAwaySent = true
	s.enqueue(ctrlItem{h: header{typ: typeGoAway}})
	// The peer may have sent OPENs before it reads the GOAWAY; they are
	// refused here, which it retries elsewhere. Its PONG to this PING
	// says they have all arrived, so Shutdown can close.
	seq := s.pingSeq.Add(1)
	s.pingSentAt.Store(time.Now().UnixNano())
	s.goAwaySeq.Store(seq)
	s.enqueue(ctrlItem{h: header{typ: typePing, val: seq}})
}

// GoneAway is closed when the peer sent GOAWAY: open a replacement tunnel,
// then Shutdown this one.
func (s *Session) GoneAway() <-chan struct{} { return s.goneAway }

// Shutdown drains the session: it sends GOAWAY, waits until the peer has
// read it (so that no stream the peer opened meanwhile is lost: those are
// refused, and Retryable) and no stream is left, or ctx ends, then closes
// the session. It returns ctx's error if streams were still open.
func (s *Session) Shutdown(ctx context.Context) error {
	s.GoAway()
	acked := s.goAwayAcked
	for {
		s.mu.Lock()
		n, dead := len(s.streams), s.err != nil
		s.mu.Unlock()
		if isDone(acked) {
			acked = nil // wait for the streams only
		}
		if dead || n == 0 && acked == nil {
			return s.Close()
		}
		select {
		case <-s.idleWake:
		case <-acked:
		case <-s.done:
		case <-ctx.Done():
			s.Close()
			return fmt.Errorf("shut down tunnel with %d streams open: %w", n, ctx.Err())
		}
	}
}

// Close ends the session at once: streams still open fail with ErrClosed
// (wrapped), the peer is told, and the connection is closed. Close waits
// until the session's goroutines have finished. It is idempotent and
// always returns nil.
func (s *Session) Close() error {
	s.terminate(ErrClosed, true)
	s.wg.Wait()
	return nil
}

// Done is closed when the session has ended; Err then says why.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err returns nil while the session lives, and afterwards why it ended:
// an error matching ErrClosed, ErrPeerClosed, ErrDeadPeer, ErrWriteTimeout
// or ErrProtocol, or the connection's read or write error.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// NumStreams returns the number of live streams, both directions.
func (s *Session) NumStreams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

// Stats are a session's counters since it started. StreamsOpened +
// StreamsAccepted - StreamsClosed is the number of live streams; a number
// that only grows is a leak.
type Stats struct {
	StreamsOpened   uint64        // streams this side opened
	StreamsAccepted uint64        // streams the peer opened that this side took in (not refused)
	StreamsClosed   uint64        // streams that ended, either direction, any way
	StreamsRefused  uint64        // streams the peer opened that this side refused
	StreamsReset    uint64        // streams aborted, by either side or an open timeout
	BytesIn         uint64        // stream payload received
	BytesOut        uint64        // stream payload sent
	RTT             time.Duration // last keepalive round trip; 0 before the first
}

// Stats returns the session's counters.
func (s *Session) Stats() Stats {
	return Stats{
		StreamsOpened:   s.opened.Load(),
		StreamsAccepted: s.accepted.Load(),
		StreamsClosed:   s.closed.Load(),
		StreamsRefused:  s.refused.Load(),
		StreamsReset:    s.resets.Load(),
		BytesIn:         s.bytesIn.Load(),
		BytesOut:        s.bytesOut.Load(),
		RTT:             time.Duration(s.rtt.Load()),
	}
}

// reserve takes n bytes of the receive budget for a new stream's initial
// window, if they fit.
func (s *Session) reserve(n int) bool { return s.reserveUpTo(n, s.cfg.MaxReceiveBuffer) }

// reserveGrowth takes n bytes of the receive budget to grow a window. It
// leaves a quarter of the budget for new streams, so busy streams cannot
// starve opens.
func (s *Session) reserveGrowth(n int) bool {
	return s.reserveUpTo(n, s.cfg.MaxReceiveBuffer-s.cfg.MaxReceiveBuffer/4)
}

func (s *Session) reserveUpTo(n, limit int) bool {
	for {
		cur := s.committed.Load()
		if cur+int64(n) > int64(limit) {
			return false
		}
		if s.committed.CompareAndSwap(cur, cur+int64(n)) {
			return true
		}
	}
}

// forget removes st from the stream table once both directions are done or
// it was reset. Call it without holding st.mu.
func (s *Session) forget(st *Stream) {
	s.mu.Lock()
	if s.streams[st.id] != st {
		s.mu.Unlock()
		return
	}
	delete(s.streams, st.id)
	for i, b := range s.backlog {
		if b == st {
			s.backlog = append(s.backlog[:i], s.backlog[i+1:]...)
			break
		}
	}
	s.mu.Unlock()
	s.closed.Add(1)
	notify(s.idleWake)
}

// terminate ends the session with cause. Graceful: the writer sends a CLOSE
// frame, then closes the connection (at the latest after closeGrace).
// Otherwise the connection is closed at once. It does not wait.
func (s *Session) terminate(cause error, graceful bool) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = cause
	streams := s.streams
	s.streams = map[uint32]*Stream{}
	s.backlog = nil
	s.mu.Unlock()

	close(s.done)
	s.timer.Stop()
	for _, st := range streams {
		st.sessionEnded(cause)
	}
	s.closed.Add(uint64(len(streams)))

	s.wmu.Lock()
	s.wclosed = true
	s.ctrl, s.ready = nil, nil
	if graceful {
		s.ctrl = append(s.ctrl, ctrlItem{h: header{typ: typeClose}})
		s.startWriterLocked()
		s.forceClose = time.AfterFunc(closeGrace, s.closeConn)
	}
	s.wmu.Unlock()
	if !graceful {
		s.closeConn()
	}
}

func (s *Session) closeConn() {
	s.closeConnOnce.Do(func() {
		s.wmu.Lock()
		if s.forceClose != nil {
			s.forceClose.Stop()
		}
		s.wmu.Unlock()
		s.conn.Close()
	})
}

// tick runs every Config.tick(): dead-man timer, write watchdog, keepalive.
func (s *Session) tick() {
	now := time.Now()
	if s.recvSeen.Swap(false) {
		s.lastRecv = now
	}
	if idle := now.Sub(s.lastRecv); idle >= s.cfg.DeadPeerTimeout {
		s.terminate(fmt.Errorf("%w: nothing received for %v", ErrDeadPeer, idle), false)
		return
	}
	if ws := s.writeStart.Load(); ws != 0 {
		if stuck := now.Sub(time.Unix(0, ws)); stuck >= s.cfg.WriteTimeout {
			s.terminate(fmt.Errorf("%w: one write blocked for %v", ErrWriteTimeout, stuck), false)
			return
		}
	}
	if now.Sub(s.lastPing) >= s.cfg.KeepaliveInterval {
		s.lastPing = now
		seq := s.pingSeq.Add(1)
		s.pingSentAt.Store(now.UnixNano())
		s.enqueue(ctrlItem{h: header{typ: typePing, val: seq}})
	}
	s.mu.Lock()
	if s.err == nil {
		s.timer.Reset(s.cfg.tick())
	}
	s.mu.Unlock()
}

// enqueue queues a control frame and makes sure a writer runs. It reports
// false when the queue is past maxCtrlQueue: a peer that keeps sending
// PINGs or OPENs while it reads nothing; the reader then ends the session.
func (s *Session) enqueue(it ctrlItem) bool {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.wclosed {
		return true
	}
	s.ctrl = append(s.ctrl, it)
	s.startWriterLocked()
	return len(s.ctrl) <= maxCtrlQueue
}

var errCtrlOverflow = fmt.Errorf("%w: peer reads nothing while it keeps sending (control queue full)", ErrProtocol)

// pushReady queues a stream that has data and credit.
func (s *Session) pushReady(st *Stream) {
	s.wmu.Lock()
	if !s.wclosed {
		s.ready = append(s.ready, st)
		s.startWriterLocked()
	}
	s.wmu.Unlock()
}

func (s *Session) startWriterLocked() {
	if !s.writing {
		s.writing = true
		s.wg.Add(1)
		go s.writeLoop()
	}
}

// writeLoop is the only writer to the connection. It packs control frames
// first, then DATA from ready streams in turn, into one buffer of at most
// MaxWriteSize bytes per conn.Write, and exits when there is nothing left,
// so an idle tunnel has no writer goroutine and no write buffer.
func (s *Session) writeLoop() {
	defer s.wg.Done()
	limit := s.cfg.MaxWriteSize
	buf := getBuf(limit)
	defer func() { putBuf(buf) }()
	for {
		b := buf[:0]
		s.wmu.Lock()
		for {
			b = s.drainCtrlLocked(b, limit)
			if len(s.ctrl) > 0 || len(s.ready) == 0 || limit-len(b) < headerSize+smallFrame/4 {
				break
			}
			st := s.ready[0]
			s.ready[0] = nil
			s.ready = s.ready[1:]
			if len(s.ready) == 0 {
				s.ready = nil
			}
			s.wmu.Unlock()
			b = st.fill(b, limit)
			s.wmu.Lock()
		}
		if len(b) == 0 {
			s.writing = false
			closing := s.wclosed
			s.wmu.Unlock()
			if closing {
				s.closeConn()
			}
			return
		}
		s.wmu.Unlock()
		if err := s.writeConn(b); err != nil {
			s.wmu.Lock()
			s.writing = false
			s.wmu.Unlock()
			return
		}
	}
}

// writeInline is the fast path of Stream.Write, called with st.mu held:
// when no writer runs and nothing else waits, the caller writes its own
// frame (after any control frames) instead of waking a writer goroutine.
// It reports false if the caller must queue instead.
func (s *Session) writeInline(st *Stream) bool {
	limit := s.cfg.MaxWriteSize
	s.wmu.Lock()
	if s.writing || s.wclosed || len(s.ready) > 0 {
		s.wmu.Unlock()
		return false
	}
	s.writing = true
	s.wg.Add(1) // Close waits for inline writers too
	defer s.wg.Done()
	buf := getBuf(limit)
	b := s.drainCtrlLocked(buf, limit)
	ctrlLeft := len(s.ctrl) > 0
	s.wmu.Unlock()

	if n := min(len(st.pending), st.sendCredit, limit-len(b)-headerSize); n > 0 && !ctrlLeft {
		b = appendHeader(b, header{typ: typeData, id: st.id, val: uint32(n)})
		b = append(b, st.pending[:n]...)
		st.pending = st.pending[n:]
		st.written += n
		st.sendCredit -= n
		s.bytesOut.Add(uint64(n))
	}
	st.mu.Unlock()
	err := s.writeConn(b)
	putBuf(buf)

	s.wmu.Lock()
	if err == nil && (len(s.ctrl) > 0 || len(s.ready) > 0) {
		s.wg.Add(1) // hand the rest to a writer goroutine, which inherits writing
		go s.writeLoop()
	} else {
		s.writing = false
	}
	s.wmu.Unlock()
	st.mu.Lock()
	return true
}

// writeConn writes one batch; a failure ends the session.
func (s *Session) writeConn(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	s.writeStart.Store(time.Now().UnixNano())
	_, err := s.conn.Write(b)
	s.writeStart.Store(0)
	if err != nil {
		s.terminate(fmt.Errorf("write to connection: %w", err), false)
		s.closeConn()
	}
	return err
}

func (s *Session) drainCtrlLocked(b []byte, limit int) []byte {
	i := 0
	for ; i < len(s.ctrl) && limit-len(b) >= headerSize; i++ {
		it := s.ctrl[i]
		s.ctrl[i] = ctrlItem{}
		if it.st != nil {
			it.h.val = it.st.winPending.Swap(0)
			if it.h.val == 0 {
				continue
			}
		}
		b = appendHeader(b, it.h)
	}
	s.ctrl = s.ctrl[i:]
	if len(s.ctrl) == 0 {
		s.ctrl = s.ctrl[:0:0] // let a burst's backing array go
	}
	return b
}

// readLoop reads and dispatches frames until the connection fails.
func (s *Session) readLoop() {
	defer s.wg.Done()
	var hb [headerSize]byte
	for {
		n, err := io.ReadFull(s.conn, hb[:])
		if err == nil {
			s.recvSeen.Store(true)
			err = s.handle(parseHeader(&hb))
		} else if n == 0 && errors.Is(err, io.EOF) {
			err = fmt.Errorf("read frame: connection closed without CLOSE frame: %w", err)
		} else {
			err = fmt.Errorf("read frame: %w", err)
		}
		if err != nil {
			s.terminate(err, false)
			return
		}
	}
}

func (s *Session) handle(h header) error {
	switch h.typ {
	case typeData:
		return s.handleData(h)
	case typeOpen:
		return s.handleOpen(h)
	case typeAccept, typeWindow, typeFin, typeReset:
		st := s.lookup(h.id)
		if st == nil {
			return nil // a stream that already ended here
		}
		switch h.typ {
		case typeAccept:
			return st.remoteAccepted(h.val)
		case typeWindow:
			return st.addCredit(h.val)
		case typeFin:
			return st.remoteFin()
		default:
			st.remoteReset(resetCode(h.val))
			return nil
		}
	case typePing:
		if !s.enqueue(ctrlItem{h: header{typ: typePong, val: h.val}}) {
			return errCtrlOverflow
		}
	case typePong:
		if h.val == s.pingSeq.Load() {
			s.rtt.Store(time.Since(time.Unix(0, s.pingSentAt.Load())).Nanoseconds())
		}
		// PINGs are answered in order, so a PONG to this or a later PING
		// acknowledges the GOAWAY.
		if seq := s.goAwaySeq.Load(); seq != 0 && int32(h.val-seq) >= 0 && !isDone(s.goAwayAcked) {
			close(s.goAwayAcked)
		}
	case typeGoAway:
		s.mu.Lock()
		first := !s.goAwayRecv
		s.goAwayRecv = true
		s.mu.Unlock()
		if first {
			close(s.goneAway)
		}
	case typeClose:
		return ErrPeerClosed
	default:
		return fmt.Errorf("%w: unknown frame %v", ErrProtocol, h)
	}
	return nil
}

func (s *Session) lookup(id uint32) *Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams[id]
}

func (s *Session) handleOpen(h header) error {
	// The peer's stream IDs are odd if it is the client, even otherwise.
	if h.id == 0 || (h.id%2 == 1) != !s.client {
		return fmt.Errorf("%w: OPEN with stream ID %d of the wrong side", ErrProtocol, h.id)
	}
	if h.val > maxWindow-InitialWindow {
		return fmt.Errorf("%w: OPEN with window delta %d", ErrProtocol, h.val)
	}
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return nil
	}
	if s.streams[h.id] != nil {
		s.mu.Unlock()
		return fmt.Errorf("%w: OPEN for stream %d that is open", ErrProtocol, h.id)
	}
	if s.goAwaySent || len(s.backlog) >= s.cfg.AcceptBacklog ||
		len(s.streams) >= s.cfg.MaxStreams || !s.reserve(InitialWindow) {
		s.mu.Unlock()
		s.refused.Add(1)
		if !s.enqueue(ctrlItem{h: header{typ: typeReset, id: h.id, val: uint32(codeRefused)}}) {
			return errCtrlOverflow
		}
		return nil
	}
	st := newStream(s, h.id, true)
	st.sendCredit += int(h.val)
	s.streams[h.id] = st
	s.backlog = append(s.backlog, st)
	s.mu.Unlock()
	s.accepted.Add(1)
	notify(s.acceptWake)
	return nil
}

func (s *Session) handleData(h header) error {
	n := int(h.val)
	if n > maxDataLen {
		return fmt.Errorf("%w: DATA of %d bytes", ErrProtocol, n)
	}
	st := s.lookup(h.id)
	if st == nil {
		if _, err := io.CopyN(io.Discard, s.conn, int64(n)); err != nil {
			return fmt.Errorf("read frame payload: %w", err)
		}
		return nil
	}
	if err := st.takeCredit(n); err != nil {
		return err
	}
	var buf []byte
	if n <= smallFrame {
		buf = getBuf(smallFrame)[:n]
	} else {
		buf = getBuf(n)[:n]
	}
	if _, err := io.ReadFull(s.conn, buf); err != nil {
		putBuf(buf)
		return fmt.Errorf("read frame payload: %w", err)
	}
	s.bytesIn.Add(uint64(n))
	st.deliver(buf)
	return nil
}

func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func isDone(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
