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

	"k8s.io/client-go/rest"
)

// newProxy returns the handler of the node's requests: each is forwarded to
// the Kubernetes API server as it came (method, path, query, headers, body
// streamed both ways, protocol upgrades), with the agent's own credentials
// in place of the caller's.
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
			applyImpersonation(pr.Out)
		},
		Transport: upgradeAware{plain: plain, upgrade: upgrade},
		// Every chunk of a watch or a log stream goes out at once.
		FlushInterval: -1,
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
				return // the caller went away
			}
			log.WarnContext(r.Context(), "kubernetes API request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			writeStatus(w, http.StatusBadGateway, "agentk could not reach the Kubernetes API server")
		},
	}
	return rp, target, nil
}

// applyImpersonation decides whom the API server sees behind a request.
// The agent always authenticates as itself (its transport adds its own
// credentials), so everything a caller could use to speak for someone
// else is removed: Authorization, Cookie and every Impersonate-* header.
// The Kubernetes API proxy's access_as support extends this function to
// add Impersonate-* headers built from the node's trusted description of
// the caller; the stripping stays first.
func applyImpersonation(req *http.Request) {
	for k := range req.Header {
		switch {
		case strings.EqualFold(k, "Authorization"), strings.EqualFold(k, "Cookie"),
			len(k) >= len("Impersonate-") && strings.EqualFold(k[:len("Impersonate-")], "Impersonate-"):
			delete(req.Header, k)
		}
	}
}

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
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		reason = "ServiceUnavailable"
	}
	b, _ := json.Marshal(map[string]any{
		"kind": "Status", "apiVersion": "v1", "metadata": map[string]any{},
		"status": "Failure", "message": msg, "reason": reason, "code": code,
	})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}
