package discovery

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Names of the settings PrivateURL reads; every error names one of them.
const (
	EnvURL    = "OWN_PRIVATE_API_URL"
	EnvCIDR   = "OWN_PRIVATE_API_CIDR"
	EnvPort   = "OWN_PRIVATE_API_PORT"
	EnvScheme = "OWN_PRIVATE_API_SCHEME"
	EnvHost   = "OWN_PRIVATE_API_HOST"
)

// Private URL schemes.
const (
	SchemeGRPC  = "grpc"  // h2c
	SchemeGRPCS = "grpcs" // TLS
	SchemeUnix  = "unix"
)

// PrivateURLOptions are the raw OWN_PRIVATE_API_* values and the private API
// listener from which PrivateURL derives the URL other nodes dial.
type PrivateURLOptions struct {
	// URL is OWN_PRIVATE_API_URL: used as is once validated.
	URL string
	// CIDR is OWN_PRIVATE_API_CIDR: one or more comma-separated IPv4/IPv6
	// CIDRs; exactly one interface address must fall in them.
	CIDR string
	// Port is OWN_PRIVATE_API_PORT; default the listener's port. Ignored
	// when URL is set.
	Port string
	// Scheme is OWN_PRIVATE_API_SCHEME: "grpc" (default) or "grpcs".
	Scheme string
	// Host is OWN_PRIVATE_API_HOST: the TLS server name this node expects
	// when it dials other nodes over grpcs. It is not part of the URL.
	Host string

	// ListenNetwork is the private API listener's network: "tcp" (default),
	// "tcp4", "tcp6" or "unix".
	ListenNetwork string
	// ListenAddress is the private API listener's address; pass the bound
	// address (listener.Addr().String()) when the configured port is 0.
	ListenAddress string

	// InterfaceAddrs lists this host's addresses; default net.InterfaceAddrs.
	InterfaceAddrs func() ([]net.Addr, error)
}

// ServerName is the TLS server name expected from other nodes (OWN_PRIVATE_API_HOST).
// Empty means the host of the URL being dialled.
func (o PrivateURLOptions) ServerName() string { return o.Host }

// PrivateURL returns the URL other dataplane nodes use to reach this one:
//
//   - OWN_PRIVATE_API_URL as is (grpc://host:port, grpcs://host:port or
//     unix:///path), after validation (OWN_PRIVATE_API_PORT is then ignored);
//   - else, with OWN_PRIVATE_API_CIDR, scheme://<the one matching interface
//     address>:<port>, port being OWN_PRIVATE_API_PORT or the listener's;
//   - else the listen address: unix://<path> for a unix listener,
//     scheme://host:port for a TCP one (port: OWN_PRIVATE_API_PORT or the
//     listener's), and an error for a wildcard host (":8155", "0.0.0.0:8155",
//     "[::]:8155"), which other nodes cannot dial.
//
// Setting both URL and CIDR is an error. All problems found are reported
// together, each naming its variable.
func PrivateURL(o PrivateURLOptions) (string, error) {
	var errs []error
	scheme, err := privateScheme(o.Scheme)
	if err != nil {
		errs = append(errs, err)
	}
	port, err := privatePort(o.Port)
	if err != nil {
		errs = append(errs, err)
	}
	if err := checkServerName(o.Host); err != nil {
		errs = append(errs, err)
	}
	if o.URL != "" && o.CIDR != "" {
		errs = append(errs, fmt.Errorf("%s and %s: set one of them, not both", EnvURL, EnvCIDR))
	}
	if len(errs) > 0 {
		return "", errors.Join(errs...)
	}
	switch {
	case o.URL != "":
		if err := checkPrivateURL(o.URL); err != nil {
			return "", err
		}
		return o.URL, nil
	case o.CIDR != "":
		return urlFromCIDR(o, scheme, port)
	default:
		return urlFromListener(o, scheme, port)
	}
}

// TLSForOutbound reports whether this node uses TLS when it dials other
// nodes: when OWN_PRIVATE_API_URL or OWN_PRIVATE_API_SCHEME is grpcs.
func TLSForOutbound(privateURL, scheme string) bool {
	return strings.HasPrefix(strings.ToLower(privateURL), SchemeGRPCS+"://") || scheme == SchemeGRPCS
}

func privateScheme(s string) (string, error) {
	switch s {
	case "":
		return SchemeGRPC, nil
	case SchemeGRPC, SchemeGRPCS:
		return s, nil
	}
	return "", fmt.Errorf("%s: must be %q or %q, got %q", EnvScheme, SchemeGRPC, SchemeGRPCS, s)
}

// privatePort returns "" when p is empty.
func privatePort(p string) (string, error) {
	if p == "" {
		return "", nil
	}
	if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
		return "", fmt.Errorf("%s: must be a port number from 1 to 65535, got %q", EnvPort, p)
	}
	return p, nil
}

func checkServerName(h string) error {
	if h == "" {
		return nil
	}
	_, ipErr := netip.ParseAddr(h)
	if strings.ContainsAny(h, "/ \t\r\n") || (strings.Contains(h, ":") && ipErr != nil) {
		return fmt.Errorf("%s: must be a TLS server name (host name or IP, no scheme or port), got %q", EnvHost, h)
	}
	return nil
}

// checkPrivateURL validates an OWN_PRIVATE_API_URL value.
func checkPrivateURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%s: %q is not a URL", EnvURL, raw)
	}
	switch u.Scheme {
	case SchemeGRPC, SchemeGRPCS:
		form := fmt.Errorf("%s: %q must have the form %s://host:port (no path, query or user info)", EnvURL, raw, u.Scheme)
		if u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") || u.Opaque != "" {
			return form
		}
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil || host == "" {
			return form
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return fmt.Errorf("%s: %q has an invalid port %q", EnvURL, raw, port)
		}
		if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
			return fmt.Errorf("%s: %q has the wildcard address %s, which other nodes cannot dial", EnvURL, raw, host)
		}
		return nil
	case SchemeUnix:
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") || u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("%s: %q must have the form unix:///absolute/path", EnvURL, raw)
		}
		return nil
	}
	return fmt.Errorf("%s: %q has an unsupported scheme; use grpc://, grpcs:// or unix://", EnvURL, raw)
}

func urlFromCIDR(o PrivateURLOptions, scheme, port string) (string, error) {
	var prefixes []netip.Prefix
	for _, s := range strings.Split(o.CIDR, ",") {
		s = strings.TrimSpace(s)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return "", fmt.Errorf("%s: %q is not a CIDR (for example 10.0.0.0/8 or 2001:db8::/64)", EnvCIDR, s)
		}
		prefixes = append(prefixes, p.Masked())
	}
	if port == "" {
		var err error
		if port, err = listenerPort(o); err != nil {
			return "", fmt.Errorf("%s: needed with %s: %w", EnvPort, EnvCIDR, err)
		}
	}
	list := o.InterfaceAddrs
	if list == nil {
		list = net.InterfaceAddrs
	}
	addrs, err := list()
	if err != nil {
		return "", fmt.Errorf("%s: list interface addresses: %w", EnvCIDR, err)
	}
	var seen, matched []netip.Addr
	for _, a := range addrs {
		ip, ok := interfaceIP(a)
		// A wildcard or multicast address is nothing another node can dial.
		if !ok || ip.IsUnspecified() || ip.IsMulticast() || slices.Contains(seen, ip) {
			continue
		}
		seen = append(seen, ip)
		for _, p := range prefixes {
			if p.Contains(ip) {
				matched = append(matched, ip)
				break
			}
		}
	}
	switch len(matched) {
	case 1:
		return scheme + "://" + net.JoinHostPort(matched[0].String(), port), nil
	case 0:
		return "", fmt.Errorf("%s: no interface address is in %s; addresses seen: %s", EnvCIDR, o.CIDR, joinAddrs(seen))
	}
	return "", fmt.Errorf("%s: %d interface addresses are in %s (%s), exactly one must be; narrow the CIDR or set %s",
		EnvCIDR, len(matched), o.CIDR, joinAddrs(matched), EnvURL)
}

// listenerPort returns the private API listener's TCP port.
func listenerPort(o PrivateURLOptions) (string, error) {
	switch o.ListenNetwork {
	case "", "tcp", "tcp4", "tcp6":
	default:
		return "", fmt.Errorf("the private API listens on network %q, which has no port", o.ListenNetwork)
	}
	_, port, err := net.SplitHostPort(o.ListenAddress)
	if err != nil {
		return "", fmt.Errorf("private API listen address %q is not host:port", o.ListenAddress)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", fmt.Errorf("private API listen address %q has no fixed port", o.ListenAddress)
	}
	return port, nil
}

func urlFromListener(o PrivateURLOptions, scheme, port string) (string, error) {
	switch o.ListenNetwork {
	case "unix":
		path := o.ListenAddress
		if path == "" {
			return "", fmt.Errorf("%s: not set, and the private API unix socket path is empty", EnvURL)
		}
		if strings.HasPrefix(path, "@") {
			return "", fmt.Errorf("%s: not set, and the private API listens on the abstract socket %q, which has no unix:///path URL; listen on a socket file",
				EnvURL, path)
		}
		abs, err := filepath.Abs(path)
		if err != nil {
			return "", fmt.Errorf("%s: not set, and the socket path %q cannot be made absolute: %w", EnvURL, path, err)
		}
		// Escaped: a path with '#', '?' or '%' must survive url.Parse.
		return (&url.URL{Scheme: SchemeUnix, Path: abs}).String(), nil
	case "", "tcp", "tcp4", "tcp6":
	default:
		return "", fmt.Errorf("%s: not set, and the private API listen network %q is neither tcp nor unix", EnvURL, o.ListenNetwork)
	}
	host, lport, err := net.SplitHostPort(o.ListenAddress)
	if err != nil {
		return "", fmt.Errorf("%s: not set, and the private API listen address %q is not host:port", EnvURL, o.ListenAddress)
	}
	ip, ipErr := netip.ParseAddr(host)
	if host == "" || (ipErr == nil && ip.IsUnspecified()) {
		return "", fmt.Errorf("%s: not set, and the private API listens on every interface (%q), an address other nodes cannot dial; set %s or %s",
			EnvURL, o.ListenAddress, EnvURL, EnvCIDR)
	}
	if (ipErr == nil && ip.Zone() != "") || (ipErr != nil && !hostName.MatchString(host)) {
		return "", fmt.Errorf("%s: not set, and the private API listen host %q is not an IP address (without zone) or host name other nodes can dial; set %s or %s",
			EnvURL, host, EnvURL, EnvCIDR)
	}
	if port == "" {
		if n, err := strconv.ParseUint(lport, 10, 16); err != nil || n == 0 {
			return "", fmt.Errorf("%s: not set, and the private API listen address %q has no fixed port; set %s or %s",
				EnvURL, o.ListenAddress, EnvURL, EnvPort)
		}
		port = lport
	}
	return scheme + "://" + net.JoinHostPort(host, port), nil
}

// hostName is a DNS name as a listen address may hold one.
var hostName = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?$`)

// interfaceIP returns an interface address without its zone (a zone has no
// meaning for other nodes, and would not fit in the URL).
func interfaceIP(a net.Addr) (netip.Addr, bool) {
	var ip net.IP
	switch a := a.(type) {
	case *net.IPNet:
		ip = a.IP
	case *net.IPAddr:
		ip = a.IP
	default:
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			return p.Addr().Unmap(), true
		}
		addr, err := netip.ParseAddr(a.String())
		return addr.Unmap().WithZone(""), err == nil
	}
	addr, ok := netip.AddrFromSlice(ip)
	return addr.Unmap(), ok
}

func joinAddrs(list []netip.Addr) string {
	if len(list) == 0 {
		return "none"
	}
	s := make([]string, len(list))
	for i, a := range list {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}
