package listen

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
)

// ClientTransport returns a transport and base URL for calling a server at
// raw: http://host[:port], https://host[:port], or unix:///absolute/path —
// then every request goes over the socket and the base URL names a
// placeholder host. Callers may tune the transport before use.
func ClientTransport(raw string) (*http.Transport, string, error) {
	u, err := url.Parse(raw)
	if err != nil || raw == "" {
		return nil, "", fmt.Errorf("%q is not a URL", raw)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return nil, "", fmt.Errorf("%q has no host", raw)
		}
		return tr, raw, nil
	case "unix":
		if u.Host != "" || u.Path == "" {
			return nil, "", fmt.Errorf("%q must have the form unix:///absolute/path", raw)
		}
		path := u.Path
		var d net.Dialer
		tr.Proxy = nil
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", path)
		}
		return tr, "http://controlplane.invalid", nil
	}
	return nil, "", fmt.Errorf("%q must use http://, https:// or unix://", raw)
}
