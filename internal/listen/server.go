package listen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// Timeouts of the servers NewServer builds. There is no read or write
// timeout: streams (watches, tunnels, server-streaming RPCs) live long.
// ReadHeaderTimeout also closes a connection that sends nothing at all, and
// one that sends its headers a byte at a time (slow loris): both are cut
// ReadHeaderTimeout after they open.
const (
	ReadHeaderTimeout = 10 * time.Second
	IdleTimeout       = 2 * time.Minute
	// An HTTP/2 connection silent for SendPingTimeout gets a ping, and is
	// closed when the answer takes longer than PingTimeout: dead peers of
	// long streams are found even without traffic.
	SendPingTimeout = 30 * time.Second
	PingTimeout     = 15 * time.Second
	// ShutdownTimeout is how long Serve waits for in-flight requests after
	// its context ends before it closes the remaining connections.
	ShutdownTimeout = 10 * time.Second
)

// readHeaderTimeout is the ReadHeaderTimeout NewServer uses; tests shorten
// it with SetReadHeaderTimeout.
var readHeaderTimeout atomic.Int64

func init() { readHeaderTimeout.Store(int64(ReadHeaderTimeout)) }

// SetReadHeaderTimeout makes the servers NewServer builds from now on use d
// instead of ReadHeaderTimeout, and returns a function that restores the
// previous value. It is for tests, which must not wait ten seconds for a
// slow client to be cut; it applies process-wide.
func SetReadHeaderTimeout(d time.Duration) (restore func()) {
	old := readHeaderTimeout.Swap(int64(d))
	return func() { readHeaderTimeout.Store(old) }
}

// NewServer returns an http.Server for h that speaks HTTP/1.1, HTTP/2 over
// TLS and HTTP/2 with prior knowledge in clear text (h2c): Connect, gRPC and
// gRPC-Web on one port. log receives the server's own errors (bad
// handshakes and the like) at debug level.
func NewServer(h http.Handler, log *slog.Logger) *http.Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:           h,
		Protocols:         p,
		ReadHeaderTimeout: time.Duration(readHeaderTimeout.Load()),
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    1 << 20,
		HTTP2:             &http.HTTP2Config{SendPingTimeout: SendPingTimeout, PingTimeout: PingTimeout},
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
}

// ErrShutdownCut is returned by Serve when requests were still running at the
// end of the grace period and their connections were closed.
var ErrShutdownCut = errors.New("requests still running at the end of the grace period were cut")

// Serve runs srv on l until ctx ends, then shuts it down gracefully: it
// stops accepting, waits up to grace (ShutdownTimeout when 0) for requests in
// flight, and closes what is left (returning ErrShutdownCut). It returns nil
// after a clean shutdown caused by ctx, and the server's error otherwise.
// Serve closes l.
func Serve(ctx context.Context, srv *http.Server, l net.Listener, grace time.Duration) error {
	if grace <= 0 {
		grace = ShutdownTimeout
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		srv.Close()
	}
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", l.Addr(), serr)
	}
	if err != nil {
		return fmt.Errorf("shut down %s after %v: %w", l.Addr(), grace, ErrShutdownCut)
	}
	return nil
}
