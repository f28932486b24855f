package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/coder/websocket"
	"github.com/hashicorp/yamux"
	"github.com/xtaci/smux"

	"github.com/kas-project/kas/dataplane/tunnel"
)

// mux is what the benchmark needs from a tunnel candidate: the node end
// opens streams, the agent end accepts them.
type mux interface {
	Open(ctx context.Context) (net.Conn, error)
	Accept(ctx context.Context) (net.Conn, error)
	Close() error
}

// candidate is one way to run streams over a WebSocket. accept is the node
// side (an HTTP handler that upgrades and starts the mux); dial is the
// agent side.
type candidate struct {
	name   string
	accept func(w http.ResponseWriter, r *http.Request) (mux, error)
	dial   func(ctx context.Context, url string) (mux, error)
}

// Settings shared by all candidates, so they compare like for like: 1 MiB
// stream windows, keepalive every 15 s.
const (
	window    = 1 << 20
	keepalive = 15 * time.Second
)

var candidates = []candidate{
	{
		name: "kas",
		accept: func(w http.ResponseWriter, r *http.Request) (mux, error) {
			s, err := tunnel.Accept(w, r, tunnel.AcceptOptions{Config: kasConfig})
			return kasMux{s}, err
		},
		dial: func(ctx context.Context, url string) (mux, error) {
			s, err := tunnel.Dial(ctx, url, nil, tunnel.DialOptions{Config: kasConfig})
			return kasMux{s}, err
		},
	},
	{
		name: "yamux",
		accept: func(w http.ResponseWriter, r *http.Request) (mux, error) {
			nc, err := acceptNetConn(w, r)
			if err != nil {
				return nil, err
			}
			s, err := yamux.Server(nc, yamuxConfig())
			return yamuxMux{s}, err
		},
		dial: func(ctx context.Context, url string) (mux, error) {
			nc, err := dialNetConn(ctx, url)
			if err != nil {
				return nil, err
			}
			s, err := yamux.Client(nc, yamuxConfig())
			return yamuxMux{s}, err
		},
	},
	{
		name: "smux",
		accept: func(w http.ResponseWriter, r *http.Request) (mux, error) {
			nc, err := acceptNetConn(w, r)
			if err != nil {
				return nil, err
			}
			s, err := smux.Server(nc, smuxConfig())
			return smuxMux{s}, err
		},
		dial: func(ctx context.Context, url string) (mux, error) {
			nc, err := dialNetConn(ctx, url)
			if err != nil {
				return nil, err
			}
			s, err := smux.Client(nc, smuxConfig())
			return smuxMux{s}, err
		},
	},
}

var kasConfig = tunnel.Config{StreamWindow: window, KeepaliveInterval: keepalive}

type kasMux struct{ s *tunnel.Session }

func (m kasMux) Open(ctx context.Context) (net.Conn, error)   { return m.s.Open(ctx) }
func (m kasMux) Accept(ctx context.Context) (net.Conn, error) { return m.s.Accept(ctx) }
func (m kasMux) Close() error                                 { return m.s.Close() }

func yamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.MaxStreamWindowSize = window
	c.KeepAliveInterval = keepalive
	c.StreamOpenTimeout = 10 * time.Second
	c.LogOutput = io.Discard
	return c
}

type yamuxMux struct{ s *yamux.Session }

func (m yamuxMux) Open(context.Context) (net.Conn, error) { return m.s.Open() }
func (m yamuxMux) Accept(ctx context.Context) (net.Conn, error) {
	return m.s.AcceptStreamWithContext(ctx)
}
func (m yamuxMux) Close() error { return m.s.Close() }

func smuxConfig() *smux.Config {
	c := smux.DefaultConfig()
	c.Version = 2 // per-stream windows; v1 shares one buffer (head-of-line blocking)
	c.MaxStreamBuffer = window
	c.MaxReceiveBuffer = 32 << 20 // same per-tunnel budget as kas
	c.KeepAliveInterval = keepalive
	c.KeepAliveTimeout = 3 * keepalive
	return c
}

type smuxMux struct{ s *smux.Session }

func (m smuxMux) Open(context.Context) (net.Conn, error)   { return m.s.OpenStream() }
func (m smuxMux) Accept(context.Context) (net.Conn, error) { return m.s.AcceptStream() }
func (m smuxMux) Close() error                             { return m.s.Close() }

// Plain WebSocket NetConns, for the libraries and for the raw baseline. The
// libraries write frames bigger than the 32 KiB default read limit, and
// NetConn lifts the limit; that is how they are used in practice.
func acceptNetConn(w http.ResponseWriter, r *http.Request) (net.Conn, error) {
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return nil, fmt.Errorf("accept websocket: %w", err)
	}
	return websocket.NetConn(context.Background(), c, websocket.MessageBinary), nil
}

func dialNetConn(ctx context.Context, url string) (net.Conn, error) {
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		return nil, fmt.Errorf("dial websocket: %w", err)
	}
	return websocket.NetConn(context.Background(), c, websocket.MessageBinary), nil
}
