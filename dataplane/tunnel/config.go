package tunnel

import (
	"errors"
	"fmt"
	"time"
)

// Config tunes a Session. The zero value is valid: every zero field takes
// the default shown. Both ends of a tunnel may use different values.
type Config struct {
	// StreamWindow is the receive window of one stream: how many bytes
	// the peer may send before the local reader consumes them. A stream
	// whose reader stalls pins at most this much memory. Per-stream
	// throughput is at most StreamWindow / RTT. Default 1 MiB; at least
	// InitialWindow.
	StreamWindow int

	// MaxReceiveBuffer bounds the receive memory one session commits to,
	// summed over its streams' windows. Every stream starts at
	// InitialWindow; a stream that carries bulk data grows to StreamWindow
	// while three quarters of the budget allow (the last quarter is kept
	// for new streams). When even InitialWindow does not fit, new streams
	// are refused, so at most MaxReceiveBuffer/InitialWindow streams live
	// at once. Default 32 MiB.
	MaxReceiveBuffer int

	// MaxStreams bounds the live streams of one session, both directions
	// together. Default 512.
	MaxStreams int

	// AcceptBacklog bounds the streams opened by the peer that wait for
	// Accept; more are refused. Default 256.
	AcceptBacklog int

	// OpenTimeout is how long an opened stream may wait for the peer to
	// accept it before it is reset with ErrOpenTimeout. Default 10s.
	OpenTimeout time.Duration

	// KeepaliveInterval is how often a PING is sent, so that load
	// balancers see traffic and the peer's dead-man timer is fed. Keep it
	// well under 60s. Default 15s.
	KeepaliveInterval time.Duration

	// DeadPeerTimeout closes the session with ErrDeadPeer when no frame
	// arrived for this long (checked every KeepaliveInterval or
	// DeadPeerTimeout/2, whichever is shorter). Default 45s.
	DeadPeerTimeout time.Duration

	// WriteTimeout closes the session with ErrWriteTimeout when one write
	// to the connection blocks for this long. Default 30s.
	WriteTimeout time.Duration

	// MaxWriteSize is the most written to the connection in one Write
	// call (one WebSocket message), frame headers included. Larger means
	// fewer messages for bulk data; the peer's read limit must allow it.
	// Default 128 KiB, so that a 64 KiB Write goes out as one message;
	// at most MaxMessageSize.
	MaxWriteSize int
}

// Defaults.
const (
	DefaultStreamWindow      = 1 << 20
	DefaultMaxReceiveBuffer  = 32 << 20
	DefaultMaxStreams        = 512
	DefaultAcceptBacklog     = 256
	DefaultOpenTimeout       = 10 * time.Second
	DefaultKeepaliveInterval = 15 * time.Second
	DefaultDeadPeerTimeout   = 45 * time.Second
	DefaultWriteTimeout      = 30 * time.Second
	DefaultMaxWriteSize      = 128 << 10
)

// minWriteSize leaves room for a useful DATA frame after control frames.
const minWriteSize = 4 << 10

// Validate reports every out-of-range field at once. Zero fields are valid
// (they take defaults).
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{field}, args...)...))
	}
	if c.StreamWindow != 0 && (c.StreamWindow < InitialWindow || c.StreamWindow > maxWindow) {
		bad("StreamWindow", "must be between %d and %d, got %d", InitialWindow, maxWindow, c.StreamWindow)
	}
	if c.MaxReceiveBuffer < 0 {
		bad("MaxReceiveBuffer", "must not be negative, got %d", c.MaxReceiveBuffer)
	}
	if c.MaxStreams < 0 {
		bad("MaxStreams", "must not be negative, got %d", c.MaxStreams)
	}
	if c.AcceptBacklog < 0 {
		bad("AcceptBacklog", "must not be negative, got %d", c.AcceptBacklog)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"OpenTimeout", c.OpenTimeout},
		{"KeepaliveInterval", c.KeepaliveInterval},
		{"DeadPeerTimeout", c.DeadPeerTimeout},
		{"WriteTimeout", c.WriteTimeout},
	} {
		if d.v < 0 {
			bad(d.name, "must not be negative, got %v", d.v)
		}
	}
	if c.MaxWriteSize != 0 && (c.MaxWriteSize < minWriteSize || c.MaxWriteSize > MaxMessageSize) {
		bad("MaxWriteSize", "must be between %d and %d, got %d", minWriteSize, MaxMessageSize, c.MaxWriteSize)
	}
	d := c.withDefaults()
	if d.DeadPeerTimeout <= d.KeepaliveInterval {
		bad("DeadPeerTimeout", "must be longer than KeepaliveInterval (%v), got %v", d.KeepaliveInterval, d.DeadPeerTimeout)
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.StreamWindow, DefaultStreamWindow)
	def(&c.MaxReceiveBuffer, DefaultMaxReceiveBuffer)
	def(&c.MaxStreams, DefaultMaxStreams)
	def(&c.AcceptBacklog, DefaultAcceptBacklog)
	def(&c.MaxWriteSize, DefaultMaxWriteSize)
	defDur(&c.OpenTimeout, DefaultOpenTimeout)
	defDur(&c.KeepaliveInterval, DefaultKeepaliveInterval)
	defDur(&c.DeadPeerTimeout, DefaultDeadPeerTimeout)
	defDur(&c.WriteTimeout, DefaultWriteTimeout)
	return c
}

// tick is the period of the session's housekeeping timer: keepalive,
// dead-man and write watchdog.
func (c Config) tick() time.Duration {
	return min(c.KeepaliveInterval, c.DeadPeerTimeout/2, c.WriteTimeout/2)
}
