package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"

	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/client-go/rest"

	"github.com/kas-project/kas/internal/impersonation"
)

// maxIdleConnsPerHost bounds the idle connections to the API server.
const maxIdleConnsPerHost = 256

// newProxy returns the handler of the node's requests: each is forwarded to
// the Kubernetes API server as it came (method, path, query, headers, body
// streamed both ways, protocol upgrades), with the agent's own credentials
// in place of the caller's and the impersonation the node asked for.
func newProxy(kube *rest.Config, log *slog.Logger) (http.Handler, *url.URL, error) {
	kube = rest.CopyConfig(kube)
	if kube.Proxy == nil {
		// client-go hands out http.DefaultTransport for a plain http://
		// server without a proxy function, ignoring DisableCompression.
		kube.Proxy = http.ProxyFromEnvironment
	}
	target, _, err := rest.DefaultServerUrlFor(kube)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes API server URL: %w", err)
	}
	// Over HTTP/1.1 (a plain http:// API server) every request in flight
	// holds a connection: keep as many idle as a busy node sends at once,
	// not client-go's 25, so that bursts do not open and close a TCP
	// connection per request. HTTP/2 multiplexes and does not care.
	kube.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		if t, ok := rt.(*http.Transport); ok {
			t.MaxIdleConnsPerHost = maxIdleConnsPerHost
		}
		return rt
	})
	plain, err := rest.TransportFor(kube)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes API transport: %w", err)
	}
	// An upgrade (exec, attach, port-forward over SPDY or WebSocket) needs
	// HTTP/1.1: offer only that in the TLS handshake.
	up := rest.CopyConfig(kube)
	up.NextProtos = []string{"http/1.1"}
	upgrade, err := rest.TransportFor(up)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes API upgrade transport: %w", err)
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			id, _ := pr.In.Context().Value(identityKey{}).(impersonation.Identity)
			applyImpersonation(pr.Out, id)
		},
		Transport: upgradeAware{plain: plain, upgrade: upgrade},
		// Zero, not -1: ReverseProxy flushes every write of a response
		// without Content-Length (watch, logs -f, chunked lists) at once
		// anyway, and -1 would also make each response with one flush its
		// headers from a timer goroutine, in a tunnel frame of their own.
		FlushInterval: 0,
		// Reused copy buffers: a fresh 32 KiB per response was most of the
		// agent's allocation on small requests.
		BufferPool: copyBuffers{},
		ErrorLog:   slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
				return // the caller went away
			}
			log.WarnContext(r.Context(), "kubernetes API request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			writeStatus(w, http.StatusBadGateway, "agentk could not reach the Kubernetes API server")
		},
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := callerIdentity(r.Header)
		if err != nil {
			log.WarnContext(r.Context(), "refused a request with an invalid impersonation header", "method", r.Method, "path", r.URL.Path, "err", err)
			writeStatus(w, http.StatusBadRequest, "agentk: the kas node sent an invalid "+impersonation.Header+" header")
			return
		}
		if !id.Empty() {
			r = r.WithContext(context.WithValue(r.Context(), identityKey{}, id))
		}
		rp.ServeHTTP(w, r)
	})
	return h, target, nil
}

// applyImpersonation decides whom the API server sees behind a request.
// The agent always authenticates as itself (its transport adds its own
// credentials), so everything a caller could use to speak for someone
// else is removed first: Authorization, Cookie, every Impersonate-* header
// and the node's Kas-Impersonation header. Then id, the node's trusted
// description of the caller (see callerIdentity), becomes Impersonate-User,
// -Group, -Uid and -Extra-<key>; an empty id (access_as agent, or no
// header) leaves the request acting as the agent.
func applyImpersonation(req *http.Request, id impersonation.Identity) {
	for k := range req.Header {
		switch {
		case strings.EqualFold(k, "Authorization"), strings.EqualFold(k, "Cookie"),
			strings.EqualFold(k, impersonation.Header), impersonation.IsImpersonateHeader(k):
			delete(req.Header, k)
		}
	}
	id.SetHeaders(req.Header)
}

// callerIdentity reads the identity the node asks the agent to act as
// from the Kas-Impersonation header: empty without one. Only nodes open
// streams to the agent, and a node strips the header from its callers'
// requests, so the header is trusted. One that does not decode is an
// error: acting as the agent instead would give the caller its rights.
func callerIdentity(h http.Header) (impersonation.Identity, error) {
	vs := h.Values(impersonation.Header)
	switch len(vs) {
	case 0:
		return impersonation.Identity{}, nil
	case 1:
		return impersonation.Decode(vs[0])
	}
	return impersonation.Identity{}, fmt.Errorf("%d %s headers, want at most one", len(vs), impersonation.Header)
}

type identityKey struct{}

// upgradeAware sends protocol upgrades through an HTTP/1.1-only transport.
// Both return the upgraded connection as the response body, which
// httputil.ReverseProxy needs to relay a 101.
type upgradeAware struct{ plain, upgrade http.RoundTripper }

func (t upgradeAware) RoundTrip(r *http.Request) (*http.Response, error) {
	if isUpgrade(r.Header) {
		return t.upgrade.RoundTrip(r)
	}
	return t.plain.RoundTrip(r)
}

func isUpgrade(h http.Header) bool {
	for _, v := range h.Values("Connection") {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return true
			}
		}
	}
	return false
}

// writeStatus answers with a Kubernetes Status object, which kubectl and
// client-go turn into a readable error.
func writeStatus(w http.ResponseWriter, code int, msg string) {
	reason := "InternalError"
	switch code {
	case http.StatusBadRequest:
		reason = "BadRequest"
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		reason = "ServiceUnavailable"
	}
	b, _ := json.Marshal(map[string]any{
		"kind": "Status", "apiVersion": "v1", "metadata": map[string]any{},
		"status": "Failure", "message": msg, "reason": reason, "code": code,
	})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	// kubectl shows a Warning even where it cannot show a Status (discovery).
	if wh, err := utilnet.NewWarningHeader(299, "agentk", msg); err == nil {
		w.Header().Add("Warning", wh)
	}
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

// copyBuffers is the ReverseProxy's pool of 32 KiB copy buffers.
type copyBuffers struct{}

var copyBufferPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (copyBuffers) Get() []byte  { return *copyBufferPool.Get().(*[]byte) }
func (copyBuffers) Put(b []byte) { copyBufferPool.Put(&b) }
