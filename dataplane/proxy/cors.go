package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// CORS, as KAS: a browser page on another origin (the GitLab UI) may use
// the proxy with the _gitlab_kas cookie only if its origin is listed in
// dataplane.kubernetes_api.allowed_origins. kas is the only CORS
// authority: every Access-Control-* header of the Kubernetes API server is
// dropped, and kas adds its own.
//
//   - A request without Origin (kubectl, client-go, CI) is unaffected.
//   - A request whose Origin is neither listed nor the proxy's own origin
//     (same-origin: the scheme of the connection to kas, http or https, and
//     the Host header) is refused with 403 before anything else, whatever
//     its credentials. That covers simple requests (a form POST) and
//     WebSocket handshakes, which browsers do not preflight.
//   - A preflight (OPTIONS with Origin and Access-Control-Request-Method)
//     from an allowed origin is answered by the proxy itself, without
//     credentials: 204 with the allowed methods, the requested headers
//     echoed, and Max-Age 86400.
//   - Every other answer to an allowed origin, the agent's or the proxy's
//     own Status errors (401, 403, 429, 503...), carries
//     Access-Control-Allow-Origin (the origin), -Allow-Credentials: true,
//     -Expose-Headers, and Origin merged into Vary.

// CORS header names and kas's fixed values.
const (
	originHeader         = "Origin"
	acRequestMethod      = "Access-Control-Request-Method"
	acRequestHeaders     = "Access-Control-Request-Headers"
	acAllowOrigin        = "Access-Control-Allow-Origin"
	acAllowCredentials   = "Access-Control-Allow-Credentials"
	acAllowMethods       = "Access-Control-Allow-Methods"
	acAllowHeaders       = "Access-Control-Allow-Headers"
	acExposeHeaders      = "Access-Control-Expose-Headers"
	acMaxAge             = "Access-Control-Max-Age"
	corsAllowedMethods   = "GET, HEAD, POST, PUT, PATCH, DELETE"
	corsMaxAge           = "86400"
	corsPreflightVary    = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
	maxQuotedOriginBytes = 128
)

// corsExposed are the response headers a page may read besides the
// CORS-safelisted ones: the Status message repeated for client-go
// (Warning, also Kubernetes' deprecation warnings), the API server's audit
// ID, kas's request ID, Retry-After of a 429, and KAS's marker of its own
// 401s.
var corsExposed = []string{"Warning, Audit-Id, X-Request-Id, Retry-After, Gitlab-Unauthorized"}

// Shared, never modified values of the headers kas sets (no allocation
// per response).
var (
	corsTrue       = []string{"true"}
	corsMethods    = []string{corsAllowedMethods}
	corsMaxAgeVals = []string{corsMaxAge}
	corsVaryPre    = []string{corsPreflightVary}
)

// ParseOrigins parses dataplane.kubernetes_api.allowed_origins: a
// comma-separated list of origins, each scheme://host[:port] with scheme
// http or https. It returns them as browsers write the Origin header:
// lower case, without a default port or a trailing slash. The error
// joins one error per bad origin (errors.Join); they name no setting, the
// caller adds it.
func ParseOrigins(s string) ([]string, error) {
	var out []string
	var errs []error
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		o, err := parseOrigin(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, o)
	}
	return out, errors.Join(errs...)
}

// parseOrigin checks and normalises one origin.
func parseOrigin(s string) (string, error) {
	if strings.Contains(s, "*") {
		return "", fmt.Errorf("%q: wildcards are not allowed (credentials are involved); list each origin", s)
	}
	if s == "null" {
		return "", errors.New(`"null" (the origin of sandboxed or local pages) cannot be allowed`)
	}
	u, err := url.Parse(s)
	if err != nil || u.Opaque != "" {
		return "", fmt.Errorf("%q is not an origin (for example https://gitlab.example.com)", s)
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return "", fmt.Errorf("%q must use http:// or https://", s)
	}
	if u.Host == "" || u.Hostname() == "" {
		return "", fmt.Errorf("%q has no host", s)
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.HasSuffix(s, "#") {
		return "", fmt.Errorf("%q must be an origin, scheme://host[:port], without user, path, query or fragment", s)
	}
	host := strings.ToLower(u.Hostname())
	for i := range len(host) {
		if host[i] >= 0x80 {
			return "", fmt.Errorf("%q: write an international host name in its ASCII (xn--) form, as browsers send it", s)
		}
	}
	port := u.Port()
	if port != "" {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return "", fmt.Errorf("%q has an invalid port", s)
		}
		if (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
			port = ""
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return "", fmt.Errorf("%q has an empty port", s)
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		host += ":" + port
	}
	return scheme + "://" + host, nil
}

// checkOrigins validates o.AllowedOrigins and normalises them.
func (o *Options) checkOrigins() error {
	if len(o.AllowedOrigins) == 0 {
		return nil
	}
	var errs []error
	norm := make([]string, 0, len(o.AllowedOrigins))
	for _, s := range o.AllowedOrigins {
		n, err := parseOrigin(strings.TrimSpace(s))
		if err != nil {
			errs = append(errs, fmt.Errorf("dataplane.kubernetes_api.allowed_origins: %w", err))
			continue
		}
		norm = append(norm, n)
	}
	o.AllowedOrigins = norm
	return errors.Join(errs...)
}

// requestOrigin returns the request's Origin header, if it has one.
// Several Origin headers give ok with an origin that matches nothing.
func requestOrigin(r *http.Request) (origin string, ok bool) {
	vs, ok := r.Header[originHeader]
	switch {
	case !ok:
		return "", false
	case len(vs) != 1:
		return "", true
	}
	return vs[0], true
}

// originAllowed reports whether origin is listed or the proxy's own.
func (p *Proxy) originAllowed(r *http.Request, origin string) bool {
	if origin == "" {
		return false
	}
	for _, o := range p.opts.AllowedOrigins {
		if o == origin {
			return true
		}
	}
	return sameOrigin(r, origin)
}

// sameOrigin reports whether origin is the one the browser used to reach
// kas: the connection's scheme (https only when kas terminates TLS) and the
// Host header. Behind a load balancer that terminates TLS, the page's
// https origin does not match: list it in allowed_origins.
func sameOrigin(r *http.Request, origin string) bool {
	scheme := "http://"
	if r.TLS != nil {
		scheme = "https://"
	}
	rest, ok := strings.CutPrefix(origin, scheme)
	return ok && rest != "" && strings.EqualFold(rest, r.Host)
}

// quoteOrigin is the origin as an error message shows it: quoted with Go
// escapes (printable ASCII only) and cut to a bounded length.
func quoteOrigin(origin string) string {
	if len(origin) > maxQuotedOriginBytes {
		return strconv.QuoteToASCII(origin[:maxQuotedOriginBytes]) + "..."
	}
	return strconv.QuoteToASCII(origin)
}

// cors handles a request that has an Origin header. It answers (and
// returns true) a request from an origin not allowed with 403, and a
// preflight from an allowed one with 204.
func (p *Proxy) cors(w http.ResponseWriter, r *http.Request, origin string) (answered bool) {
	if !p.originAllowed(r, origin) {
		msg := "kas: forbidden: the request's origin is not allowed (list it in dataplane.kubernetes_api.allowed_origins)"
		if vs := r.Header[originHeader]; len(vs) > 1 {
			msg = "kas: forbidden: more than one Origin header"
		} else if origin != "" {
			msg = "kas: forbidden: origin " + quoteOrigin(origin) + " is not allowed (list it in dataplane.kubernetes_api.allowed_origins)"
		}
		p.refuse(r.Context(), w, r, http.StatusForbidden, msg, nil)
		return true
	}
	if r.Method != http.MethodOptions || r.Header.Get(acRequestMethod) == "" || !strings.HasPrefix(r.URL.Path, p.opts.PathPrefix) {
		return false
	}
	// A preflight: no credentials come with it, none are needed.
	h := w.Header()
	h[acAllowOrigin] = []string{origin}
	h[acAllowCredentials] = corsTrue
	h[acAllowMethods] = corsMethods
	if allow := allowHeaders(r.Header.Values(acRequestHeaders)); allow != "" {
		h[acAllowHeaders] = []string{allow}
	}
	h[acMaxAge] = corsMaxAgeVals
	h["Vary"] = corsVaryPre
	w.WriteHeader(http.StatusNoContent)
	p.m.count(http.StatusNoContent)
	return true
}

// allowHeaders echoes the header names a preflight asks for, keeping only
// valid names (no other bytes of the request reach the response).
func allowHeaders(req []string) string {
	var b strings.Builder
	for _, v := range req {
		for name := range strings.SplitSeq(v, ",") {
			name = strings.TrimSpace(name)
			if !validToken(name) {
				continue
			}
			if b.Len() > 0 {
				b.WriteString(", ")
			}
			b.WriteString(name)
		}
	}
	return b.String()
}

// validToken reports whether s is an RFC 9110 token, as header names are.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := range len(s) {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// allowedOrigin returns r's Origin when the proxy allows it, else "".
func (p *Proxy) allowedOrigin(r *http.Request) string {
	if origin, ok := requestOrigin(r); ok && p.originAllowed(r, origin) {
		return origin
	}
	return ""
}

// setCORS adds the CORS headers of an answer to an allowed origin to h
// (nothing when origin is "").
func setCORS(h http.Header, origin string) {
	if origin == "" {
		return
	}
	h[acAllowOrigin] = []string{origin}
	h[acAllowCredentials] = corsTrue
	h[acExposeHeaders] = corsExposed
	addVaryOrigin(h)
}

// addVaryOrigin merges Origin into h's Vary.
func addVaryOrigin(h http.Header) {
	for _, v := range h["Vary"] {
		for tok := range strings.SplitSeq(v, ",") {
			if tok = strings.TrimSpace(tok); tok == "*" || strings.EqualFold(tok, originHeader) {
				return
			}
		}
	}
	h["Vary"] = append(h["Vary"][:len(h["Vary"]):len(h["Vary"])], originHeader)
}

// stripUpstreamCORS removes every Access-Control-* header of the agent's
// response: kas alone decides what a browser may read.
func stripUpstreamCORS(h http.Header) {
	for k := range h {
		if len(k) > len("Access-Control-") && strings.EqualFold(k[:len("Access-Control-")], "Access-Control-") {
			delete(h, k)
		}
	}
}
