package tunnel

import "errors"

// Session errors: Err returns one of these (wrapped, with detail), and every
// stream of a dead session fails with it.
var (
	// ErrClosed: Close was called on this side.
	ErrClosed = errors.New("tunnel closed")
	// ErrPeerClosed: the peer closed the tunnel deliberately.
	ErrPeerClosed = errors.New("tunnel closed by peer")
	// ErrDeadPeer: nothing arrived from the peer within Config.DeadPeerTimeout.
	ErrDeadPeer = errors.New("tunnel peer unresponsive")
	// ErrWriteTimeout: one write to the connection took longer than
	// Config.WriteTimeout (the peer or the network stopped taking bytes).
	ErrWriteTimeout = errors.New("tunnel write timed out")
	// ErrProtocol: the peer sent something kas.tunnel.v1 does not allow.
	ErrProtocol = errors.New("tunnel protocol violation")
)

// Open errors. All but ErrOpenTimeout mean the peer's application never saw
// the stream (see Retryable).
var (
	// ErrGoingAway: this tunnel is draining (GoAway was sent or received).
	ErrGoingAway = errors.New("tunnel going away")
	// ErrTooManyStreams: Config.MaxStreams or the receive buffer budget is
	// used up.
	ErrTooManyStreams = errors.New("tunnel has too many streams")
	// ErrRefused: the peer refused the stream.
	ErrRefused = errors.New("tunnel stream refused by peer")
	// ErrOpenTimeout: the peer did not accept the stream within
	// Config.OpenTimeout, or the context given to Open ended first. The
	// peer may have accepted it just as the reset went out, so this is not
	// Retryable: only idempotent requests should be sent again.
	ErrOpenTimeout = errors.New("tunnel stream not accepted in time")
)

// Stream errors besides the above. A stream closed locally fails with
// net.ErrClosed and a passed deadline with os.ErrDeadlineExceeded, as any
// net.Conn.
var (
	// ErrReset: the stream was aborted, by Reset on either side.
	ErrReset = errors.New("tunnel stream reset")
	// ErrPeerClosedStream: a write after the peer closed the stream.
	ErrPeerClosedStream = errors.New("tunnel stream closed by peer")
)

// Retryable reports whether err from Open or from the first Read or Write
// of an opened stream means the peer's application never received the
// stream: the request may be sent again on another tunnel.
func Retryable(err error) bool {
	return errors.Is(err, ErrRefused) || errors.Is(err, ErrGoingAway) ||
		errors.Is(err, ErrTooManyStreams)
}
