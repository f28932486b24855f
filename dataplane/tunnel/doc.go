// Package tunnel is the tunnel between a dataplane node and agentk: many
// full-duplex byte streams over one connection, each with its own flow
// control, plus keepalive, a dead-man timer and a drain notice. The core
// (Session, Stream) speaks net.Conn; websocket.go adapts a WebSocket
// (github.com/coder/websocket) to it, on subprotocol "kas.tunnel.v1".
//
// # Using it
//
// The node accepts agentk's WebSocket and opens one stream per proxied
// connection; agentk accepts each stream and serves it.
//
//	// node
//	sess, err := tunnel.Accept(w, r, tunnel.AcceptOptions{Config: cfg, Authorize: checkToken})
//	st, err := sess.Open(ctx)          // a net.Conn; hand it to http.Transport.DialContext
//	sess.GoAway()                      // drain: agent, please move
//	sess.Shutdown(ctx)                 // GOAWAY, wait for streams, close
//
//	// agentk
//	sess, err := tunnel.Dial(ctx, "wss://node/agent", http.Header{"Authorization": {"Bearer " + token}}, tunnel.DialOptions{Config: cfg})
//	for { st, err := sess.Accept(ctx); go serve(st) }
//	<-sess.GoneAway()                  // dial a replacement, then sess.Shutdown(ctx)
//
// Either side may Open and Accept; ctx of Open only bounds the handshake.
// Open does not wait for the peer: early data is allowed (InitialWindow
// bytes), and a stream the peer refuses or does not accept in time fails
// its Read and Write with ErrRefused or ErrOpenTimeout. Retryable tells
// which errors mean the peer's application never saw the stream.
//
// Streams: Read, Write, CloseWrite (half-close: the peer reads io.EOF),
// Close (idempotent; the peer still reads what was written, then io.EOF),
// Reset (abort: both sides drop buffered data and fail with ErrReset; the
// tunnel is unaffected), and deadlines as any net.Conn.
//
// Sessions: Done and Err tell that and why a tunnel died (ErrClosed,
// ErrPeerClosed, ErrDeadPeer, ErrWriteTimeout, ErrProtocol, or the
// connection's error). NumStreams and Stats expose counters (streams
// opened, accepted, closed, refused, reset; payload bytes in and out;
// keepalive RTT): opened+accepted-closed is the live count, so a leak
// shows as a number that only grows. Close waits for the session's
// goroutines.
//
// # Wire format (kas.tunnel.v1)
//
// Frames have a 12-byte header (type, flags, reserved, stream ID, value;
// see frame.go) and only DATA has a payload. Stream IDs are odd when the
// client (agentk) opened the stream and even for the server (node), and
// wrap around skipping live streams. Types: DATA, OPEN, ACCEPT, WINDOW,
// FIN, RESET (closed, cancel, refused), PING, PONG, GOAWAY, CLOSE. A
// writer never puts more than MaxMessageSize (1 MiB) into one conn.Write,
// which is one WebSocket message, so a read limit of MaxMessageSize always
// suffices; Accept and Dial set it explicitly (NetConn would disable it).
// Anything else — an unknown type, DATA beyond the window or after FIN, a
// stream ID of the wrong side, a truncated frame — closes the tunnel with
// ErrProtocol or io.ErrUnexpectedEOF.
//
// # Flow control and memory
//
// Each stream direction starts with InitialWindow (64 KiB) of credit; the
// receiver returns credit in WINDOW frames as its application reads, at
// least a quarter window at a time. A stream that has carried more than
// 32 KiB grows its window to Config.StreamWindow (1 MiB) while three
// quarters of the session's receive budget, Config.MaxReceiveBuffer
// (32 MiB), allow; the last quarter is kept for new streams' initial
// windows, and when even those do not fit, opens are refused. So:
//
//   - the reader goroutine never blocks on a stream: credit guarantees room;
//   - a stalled stream pins at most its window and slows nobody else;
//   - receive memory per tunnel is bounded by MaxReceiveBuffer (buffers are
//     pooled, at most twice the payload they hold);
//   - a short request/response stream costs InitialWindow of budget and no
//     buffer beyond its data; an idle tunnel holds no buffer at all.
//
// Send side: Write blocks until the peer's window takes its data; nothing
// is queued behind it, so there is no send buffer to bound.
//
// # One writer, control first
//
// Only one goroutine writes to the connection at a time. Control frames
// (OPEN, ACCEPT, WINDOW, FIN, RESET, PING, PONG, GOAWAY) queue separately
// and go first in every write, so they never wait behind more than one
// write of data (Config.MaxWriteSize, 128 KiB); DATA from ready streams is
// taken round robin. When nothing else is queued, Write writes its own
// frame directly from the caller's goroutine (no hand-off); otherwise a
// writer goroutine runs while there is work and exits when there is none,
// so an idle tunnel has one goroutine (the reader) and no write buffer.
// The control queue is bounded: a peer that floods PINGs or OPENs while
// reading nothing is cut off with ErrProtocol.
//
// # Liveness and drain
//
// Every Config.KeepaliveInterval (15 s) each side sends a PING, answered
// by PONG, so load balancers (60 s idle timeouts) see traffic. The dead-man
// timer closes the session with ErrDeadPeer when no frame at all arrived
// for Config.DeadPeerTimeout (45 s), which catches a peer that vanished
// without closing (half-open TCP). A write blocked for Config.WriteTimeout
// (30 s) closes it with ErrWriteTimeout. All three run on one timer per
// session (time.AfterFunc), not a goroutine, and follow testing/synctest's
// fake clock. GOAWAY is the drain notice: after it neither side opens new
// streams (ErrGoingAway), open ones carry on, and the receiver's GoneAway
// channel is closed; Shutdown sends it and closes once no stream is left.
// Close sends CLOSE, so the peer ends with ErrPeerClosed rather than a
// connection error, and does not wait for the WebSocket close handshake.
//
// # Why our own framing: the benchmark
//
// go run ./tests/bench/tunnel compares this package with hashicorp/yamux
// v0.1.2 and xtaci/smux v1.5.58 (protocol v2, per-stream windows), all over
// the same loopback WebSocket (coder/websocket NetConn), with 1 MiB stream
// windows and 15 s keepalive, both ends in one process on the 2 cores.
// Figures from one full run (256 MiB transfers, median of 3 interleaved
// rounds; 10,000 idle tunnels); each is a ratio to a baseline measured in
// the same run, the absolute value in parentheses:
//
//	metric                           baseline               kas            yamux          smux
//	1 stream agent→node (masked)     raw WS 895 MiB/s       0.69 (616)     0.66 (587)     0.63 (563)
//	  same, vs WS + 1 hand-off       WS→goroutine 625 MiB/s 0.99           0.94           0.90
//	1 stream node→agent              raw WS 2539 MiB/s      0.80 (2037)    0.59 (1505)    0.51 (1293)
//	round trip p50, open stream      raw WS 18 µs           1.45 (27 µs)   2.44 (45 µs)   1.36 (25 µs)
//	round trip p99, open stream      raw WS 38 µs           2.60 (98 µs)   4.05 (153 µs)  2.34 (88 µs)
//	open + round trip + close p50    raw WS 18 µs           2.53 (46 µs)   5.97 (109 µs)  5.18 (95 µs)
//	open + round trip + close p99    raw WS 38 µs           5.98 (225 µs)  11.0 (415 µs)  9.20 (347 µs)
//	4 streams' MiB/s, 1 stalled      same mux, no stall     1.06           1.08           0.98
//	4 streams' MiB/s, 8 stalled      same mux, no stall     0.93           1.05           0.94
//	node memory per idle tunnel      raw WS 23.8 KiB        0.69 (16.5)    1.28 (30.4)    6.83 (162.8)
//	goroutines per idle tunnel       raw WS 1               1              3              4
//
// The VM is shared and figures move ±15% between runs; the order does not.
// Reading it:
//
//   - Throughput. Any demultiplexer reads the socket in one goroutine and
//     hands data to another; that alone costs about a third of raw
//     WebSocket throughput on 2 cores (second row's baseline). kas reaches
//     that ceiling in the masked agent→node direction (responses, watch
//     events, logs) and keeps 0.8 of raw in the other. yamux writes each
//     frame's header and body as two WebSocket messages and copies the
//     body into a bytes.Buffer; smux passes every write through two
//     goroutines (shaper, sender).
//   - Latency. kas adds ~9 µs per round trip over the raw WebSocket.
//     Opening a stream costs no round trip (early data, writes go out from
//     the caller's goroutine), so a proxied request costs half what it does
//     on either library.
//   - Stalled streams. All three isolate a stalled stream, as credit
//     windows should (goal ≥ 0.90). The difference is in the bounds:
//     yamux has no per-session cap (each stream's bytes.Buffer grows to
//     its window); smux caps the session (MaxReceiveBuffer) by blocking
//     its reader once unread data fills the budget, which stalls every
//     stream, the head-of-line failure of peers.md §3.1. kas caps memory
//     per session by refusing new streams, never by blocking the reader.
//   - Memory. An idle kas tunnel costs the node 16.5 KiB with its
//     WebSocket (goal ≤ 64 KiB): one goroutine, no buffers (the writer and
//     its buffer exist only while there is something to write). yamux
//     keeps 3 goroutines and a bufio.Reader per session; smux 4 goroutines
//     and large channels, so 10,000 idle smux tunnels take 1.6 GiB.
//
// Besides the figures, kas needs what the libraries lack: a drain notice
// the receiver sees (yamux's GoAway only makes the peer's next Open fail;
// smux has none); refusal that is known to be safe to retry; a receive
// budget that never blocks the reader; a stuck write that closes the
// session (in yamux v0.1.2 ConnectionWriteTimeout fails one Write and
// leaves the session up, yamux #142); and frames sized to the WebSocket
// read limit (yamux frames grow to the window, so its NetConn needs the
// read limit off).
package tunnel
