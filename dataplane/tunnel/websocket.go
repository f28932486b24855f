package tunnel

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/coder/websocket"
)

// Subprotocol is the WebSocket subprotocol of this wire format. A peer that
// does not offer it is refused during the handshake.
const Subprotocol = "kas.tunnel.v1"

// AcceptOptions configure Accept.
type AcceptOptions struct {
	// Config tunes the session.
	Config Config
	// ReadLimit is the largest WebSocket message accepted. Default and
	// minimum MaxMessageSize, the most a kas.tunnel.v1 peer sends at once.
	ReadLimit int64
	// Authorize, if set, runs after the subprotocol check and before the
	// upgrade. If it fails, Accept answers 401 Unauthorized with no detail
	// (or the status of an *HTTPError) and returns the error. The node
	// checks the agent token here, or before calling Accept.
	Authorize func(*http.Request) error
}

// HTTPError lets Authorize choose the HTTP status of a refusal. Message is
// sent to the client, so it must not contain secrets or internal detail.
type HTTPError struct {
	Status  int
	Message string
	Err     error // logged by the caller, never sent
}

func (e *HTTPError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%d %s: %v", e.Status, e.Message, e.Err)
	}
	return fmt.Sprintf("%d %s", e.Status, e.Message)
}

func (e *HTTPError) Unwrap() error { return e.Err }

// Accept upgrades an agent's HTTP request to a tunnel and starts the
// node's end of the session. It refuses, with a plain-text HTTP error, a
// request that does not offer Subprotocol (400) or that Authorize rejects.
// Once Accept returns, the handler may return: the session lives on until
// it is closed (http.Server.Shutdown does not wait for it; track sessions).
func Accept(w http.ResponseWriter, r *http.Request, opts AcceptOptions) (*Session, error) {
	if err := opts.Config.Validate(); err != nil {
		http.Error(w, "tunnel misconfigured", http.StatusInternalServerError)
		return nil, fmt.Errorf("accept tunnel: %w", err)
	}
	if !offersSubprotocol(r) {
		msg := fmt.Sprintf("unsupported tunnel protocol %q: this server speaks %q (Sec-WebSocket-Protocol)",
			r.Header.Values("Sec-WebSocket-Protocol"), Subprotocol)
		http.Error(w, msg, http.StatusBadRequest)
		return nil, fmt.Errorf("accept tunnel: %s", msg)
	}
	if opts.Authorize != nil {
		if err := opts.Authorize(r); err != nil {
			status, msg := http.StatusUnauthorized, http.StatusText(http.StatusUnauthorized)
			if he, ok := errors.AsType[*HTTPError](err); ok {
				status, msg = he.Status, he.Message
			}
			http.Error(w, msg, status)
			return nil, fmt.Errorf("accept tunnel: authorize: %w", err)
		}
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols: []string{Subprotocol},
		// Agents are not browsers and authenticate with a bearer token,
		// not a cookie, so the Origin check protects nothing here.
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		return nil, fmt.Errorf("accept tunnel: %w", err) // websocket.Accept answered the client
	}
	s, err := Server(netConn(c, opts.ReadLimit), opts.Config)
	if err != nil {
		c.CloseNow()
		return nil, fmt.Errorf("accept tunnel: %w", err)
	}
	return s, nil
}

func offersSubprotocol(r *http.Request) bool {
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for p := range strings.SplitSeq(v, ",") {
			if strings.TrimSpace(p) == Subprotocol {
				return true
			}
		}
	}
	return false
}

// BearerToken returns the token of an "Authorization: Bearer <token>"
// header.
func BearerToken(r *http.Request) (string, bool) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", false
	}
	return token, true
}

// DialOptions configure Dial.
type DialOptions struct {
	// Config tunes the session.
	Config Config
	// ReadLimit is the largest WebSocket message accepted. Default and
	// minimum MaxMessageSize.
	ReadLimit int64
	// TLSConfig is used for wss:// URLs (and an https proxy) when
	// HTTPClient is nil.
	TLSConfig *tls.Config
	// Proxy chooses the HTTP proxy when HTTPClient is nil. Default
	// http.ProxyFromEnvironment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY).
	Proxy func(*http.Request) (*url.URL, error)
	// HTTPClient, if set, performs the handshake instead, with its own
	// proxy and TLS settings.
	HTTPClient *http.Client
}

// Dial opens a tunnel to a node's agent endpoint (ws:// or wss://) and
// starts agentk's end of the session. header is sent with the handshake;
// put the agent token in it as "Authorization: Bearer <token>". ctx bounds
// the handshake only. An HTTP refusal is reported with its status and the
// start of its body.
func Dial(ctx context.Context, rawURL string, header http.Header, opts DialOptions) (*Session, error) {
	if err := opts.Config.Validate(); err != nil {
		return nil, fmt.Errorf("dial tunnel: %w", err)
	}
	client := opts.HTTPClient
	if client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.Proxy = http.ProxyFromEnvironment
		if opts.Proxy != nil {
			tr.Proxy = opts.Proxy
		}
		tr.TLSClientConfig = opts.TLSConfig
		client = &http.Client{Transport: tr}
	}
	c, resp, err := websocket.Dial(ctx, rawURL, &websocket.DialOptions{
		HTTPClient:      client,
		HTTPHeader:      header,
		Subprotocols:    []string{Subprotocol},
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			return nil, fmt.Errorf("dial tunnel %s: server answered %s: %s", rawURL, resp.Status, strings.TrimSpace(string(body)))
		}
		return nil, fmt.Errorf("dial tunnel %s: %w", rawURL, err)
	}
	if got := c.Subprotocol(); got != Subprotocol {
		c.CloseNow()
		return nil, fmt.Errorf("dial tunnel %s: server chose subprotocol %q, want %q", rawURL, got, Subprotocol)
	}
	s, err := Client(netConn(c, opts.ReadLimit), opts.Config)
	if err != nil {
		c.CloseNow()
		return nil, fmt.Errorf("dial tunnel %s: %w", rawURL, err)
	}
	return s, nil
}

// netConn adapts a WebSocket to the net.Conn the session speaks: binary
// messages, an explicit read limit per message, and a Close without the
// WebSocket close handshake (the session already said goodbye with its own
// CLOSE frame, and a vanished peer must not hold Close for 5 s).
func netConn(c *websocket.Conn, readLimit int64) net.Conn {
	nc := websocket.NetConn(context.Background(), c, websocket.MessageBinary)
	c.SetReadLimit(max(readLimit, MaxMessageSize)) // after NetConn, which disables it
	return &wsConn{Conn: nc, ws: c}
}

type wsConn struct {
	net.Conn
	ws *websocket.Conn
}

func (c *wsConn) Close() error {
	err := c.ws.CloseNow()
	c.Conn.Close() // stops NetConn's timers; the socket is already closed
	return err
}
