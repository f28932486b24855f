package discovery

import (
	"errors"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// textAddr is an interface address of a type PrivateURL does not know.
type textAddr string

func (a textAddr) Network() string { return "fuzz" }
func (a textAddr) String() string  { return string(a) }

// fuzzAddrs turns "10.0.0.1/8,::1,x" into interface addresses: CIDRs as
// *net.IPNet, IPs as *net.IPAddr, anything else as an opaque net.Addr.
// "!" lists nothing but an error.
func fuzzAddrs(s string) func() ([]net.Addr, error) {
	return func() ([]net.Addr, error) {
		if s == "!" {
			return nil, errors.New("no interfaces for you")
		}
		var out []net.Addr
		for _, a := range strings.Split(s, ",") {
			if ip, n, err := net.ParseCIDR(a); err == nil {
				n.IP = ip
				out = append(out, n)
			} else if ip := net.ParseIP(a); ip != nil {
				out = append(out, &net.IPAddr{IP: ip})
			} else if a != "" {
				out = append(out, textAddr(a))
			}
		}
		return out, nil
	}
}

// FuzzPrivateURL: whatever the OWN_PRIVATE_API_* values, the listener and
// the interface addresses, PrivateURL never panics; a URL it returns is
// one it would accept as OWN_PRIVATE_API_URL (it parses, with scheme grpc,
// grpcs or unix, a dialable host and port or an absolute path) and keeps
// what was asked (the given URL, port and scheme, an address in the CIDR);
// every error names its variable.
func FuzzPrivateURL(f *testing.F) {
	const addrs = "127.0.0.1/8,10.1.2.3/16,192.168.5.7/24,::1/128,2001:db8:8a2e:370::7334/64,fe80::1/64"
	for _, tc := range []struct{ url, cidr, port, scheme, host, network, address, addrs string }{
		{url: "grpc://10.0.0.1:8155"},
		{url: "grpcs://kas-0.kas.svc:8155", host: "kas.example.com"},
		{url: "grpc://[2001:db8::1]:8155"},
		{url: "unix:///var/opt/gitlab/gitlab-kas/sockets/private-api.socket"},
		{url: "grpc://h:8155/x"}, {url: "grpc://u:p@h:1"}, {url: "grpc://h:0"}, {url: "grpc://[::]:1"}, {url: "unix://rel"},
		{url: "grpc://[fe80::1%25eth0]:8155"}, {url: "grpc://h:8155#frag"}, {url: "grpc://h:8155?q"},
		{cidr: "10.1.0.0/16", address: "0.0.0.0:8155", addrs: addrs},
		{cidr: "192.168.5.0/24", port: "9155", scheme: "grpcs", address: ":8155", addrs: addrs},
		{cidr: "172.16.0.0/12, 2001:db8::/32", network: "tcp6", address: "[::]:8155", addrs: addrs},
		{cidr: "0.0.0.0/0,::/0", address: ":8155", addrs: addrs},
		{cidr: "10.9.0.0/16", address: ":8155", addrs: "::ffff:10.9.0.4/120"},
		{cidr: "10.0.0.0/8", address: ":8155", addrs: "!"},
		{cidr: "10.0.0.0/8", address: ":8155", addrs: "10.0.0.1,10.0.0.1/8,junk"},
		{cidr: "10.1.0.0/16", port: "8155", network: "unix", address: "/run/p.sock", addrs: addrs},
		{cidr: "fe80::/10", address: ":8155", addrs: "fe80::1%eth0"},
		{address: "10.0.0.5:8155"}, {address: "[2001:db8::5]:8155", scheme: "grpcs"}, {address: ":8155"},
		{address: "[fe80::1%eth0]:8155"}, {address: "a/b:8155"}, {address: "h:0"}, {address: "h:8155", port: "65536"},
		{network: "unix", address: "/run/kas/private.sock"}, {network: "unix", address: "rel.sock"},
		{network: "unix", address: "@abstract"}, {network: "unix", address: "/tmp/a#b?c%zz d"},
		{network: "udp", address: "h:1"}, {host: "a:b"}, {host: "::1"}, {scheme: "https"}, {port: "0"},
	} {
		f.Add(tc.url, tc.cidr, tc.port, tc.scheme, tc.host, tc.network, tc.address, tc.addrs)
	}
	f.Fuzz(func(t *testing.T, rawURL, cidr, port, scheme, host, network, address, addrs string) {
		o := PrivateURLOptions{URL: rawURL, CIDR: cidr, Port: port, Scheme: scheme, Host: host,
			ListenNetwork: network, ListenAddress: address, InterfaceAddrs: fuzzAddrs(addrs)}
		got, err := PrivateURL(o)
		if err != nil {
			if got != "" {
				t.Fatalf("PrivateURL(%+v) = %q with error %v", o, got, err)
			}
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.Contains(line, "OWN_PRIVATE_API_") {
					t.Fatalf("PrivateURL(%+v): error %q names no OWN_PRIVATE_API_ variable", o, line)
				}
			}
			return
		}
		if err := checkPrivateURL(got); err != nil {
			t.Fatalf("PrivateURL(%+v) = %q, which it refuses as OWN_PRIVATE_API_URL: %v", o, got, err)
		}
		u, err := url.Parse(got)
		if err != nil {
			t.Fatalf("PrivateURL(%+v) = %q: %v", o, got, err)
		}
		if rawURL != "" {
			if got != rawURL {
				t.Fatalf("PrivateURL(%+v) = %q, want OWN_PRIVATE_API_URL as is", o, got)
			}
			return
		}
		if u.Scheme == SchemeUnix {
			if network != "unix" || cidr != "" {
				t.Fatalf("PrivateURL(%+v) = %q: a unix URL without a unix listener", o, got)
			}
			return
		}
		if want := cmpOr(scheme, SchemeGRPC); u.Scheme != want {
			t.Fatalf("PrivateURL(%+v) = %q, want scheme %s", o, got, want)
		}
		h, p, err := net.SplitHostPort(u.Host)
		if err != nil {
			t.Fatalf("PrivateURL(%+v) = %q: host %q: %v", o, got, u.Host, err)
		}
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 || (port != "" && p != port) {
			t.Fatalf("PrivateURL(%+v) = %q: port %q", o, got, p)
		}
		if cidr != "" {
			ip, err := netip.ParseAddr(h)
			if err != nil {
				t.Fatalf("PrivateURL(%+v) = %q: host %q is not an IP", o, got, h)
			}
			in := false
			for _, s := range strings.Split(cidr, ",") {
				if pfx, err := netip.ParsePrefix(strings.TrimSpace(s)); err == nil && pfx.Masked().Contains(ip) {
					in = true
				}
			}
			if !in {
				t.Fatalf("PrivateURL(%+v) = %q: %s is in none of %s", o, got, ip, cidr)
			}
		}
	})
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// TestPrivateURLFuzzFindings pins what FuzzPrivateURL found: URLs built
// from a listener or an interface address must parse back to what they
// name.
func TestPrivateURLFuzzFindings(t *testing.T) {
	// A socket path with URL metacharacters is escaped, and dialling the
	// parsed URL's path reaches the socket.
	got, err := PrivateURL(PrivateURLOptions{ListenNetwork: "unix", ListenAddress: "/run/kas/a#b?c%d e.sock"})
	if err != nil {
		t.Fatal(err)
	}
	if u, err := url.Parse(got); err != nil || u.Path != "/run/kas/a#b?c%d e.sock" {
		t.Fatalf("PrivateURL = %q, parsed path %q, %v", got, u.Path, err)
	}
	// A zoned interface address loses its zone (it means nothing to other nodes).
	got, err = PrivateURL(PrivateURLOptions{CIDR: "fe80::/10", ListenAddress: ":8155", InterfaceAddrs: fuzzAddrs("fe80::1%eth0")})
	if err != nil || got != "grpc://[fe80::1]:8155" {
		t.Fatalf("PrivateURL = %q, %v; want grpc://[fe80::1]:8155", got, err)
	}
	for _, tc := range []struct{ network, address, want string }{
		{"unix", "@kas-private", `OWN_PRIVATE_API_URL: not set, and the private API listens on the abstract socket "@kas-private"`},
		{"tcp", "[fe80::1%eth0]:8155", `OWN_PRIVATE_API_URL: not set, and the private API listen host "fe80::1%eth0" is not`},
		{"tcp", "a/b:8155", `OWN_PRIVATE_API_URL: not set, and the private API listen host "a/b" is not`},
	} {
		if got, err := PrivateURL(PrivateURLOptions{ListenNetwork: tc.network, ListenAddress: tc.address}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("PrivateURL(%s %s) = %q, %v; want an error containing %q", tc.network, tc.address, got, err, tc.want)
		}
	}
	// Host names still work.
	if got, err := PrivateURL(PrivateURLOptions{ListenAddress: "kas-0.kas_svc:8155"}); err != nil || got != "grpc://kas-0.kas_svc:8155" {
		t.Errorf("PrivateURL(host name) = %q, %v", got, err)
	}
}
