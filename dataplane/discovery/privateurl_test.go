package discovery

import (
	"errors"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
)

func ipNet(t *testing.T, cidr string) net.Addr {
	t.Helper()
	ip, n, err := net.ParseCIDR(cidr)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return n
}

func TestPrivateURL(t *testing.T) {
	hostAddrs := []string{"127.0.0.1/8", "10.1.2.3/16", "192.168.5.7/24", "::1/128", "2001:db8:8a2e:370::7334/64", "fe80::1/64"}
	wd, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		opts    PrivateURLOptions
		addrs   []string // interface addresses; default hostAddrs
		want    string
		wantErr string
	}{
		// OWN_PRIVATE_API_URL, used as is.
		{name: "url grpc", opts: PrivateURLOptions{URL: "grpc://10.0.0.1:8155"}, want: "grpc://10.0.0.1:8155"},
		{name: "url grpcs hostname", opts: PrivateURLOptions{URL: "grpcs://kas-0.kas.svc:8155"}, want: "grpcs://kas-0.kas.svc:8155"},
		{name: "url ipv6", opts: PrivateURLOptions{URL: "grpc://[2001:db8::1]:8155"}, want: "grpc://[2001:db8::1]:8155"},
		{name: "url unix", opts: PrivateURLOptions{URL: "unix:///var/opt/gitlab/gitlab-kas/sockets/private-api.socket"},
			want: "unix:///var/opt/gitlab/gitlab-kas/sockets/private-api.socket"},
		{name: "url ignores port and wildcard listener", opts: PrivateURLOptions{URL: "grpc://h:1", Port: "9000", ListenAddress: ":8155"}, want: "grpc://h:1"},
		{name: "url bad scheme", opts: PrivateURLOptions{URL: "http://10.0.0.1:8155"},
			wantErr: `OWN_PRIVATE_API_URL: "http://10.0.0.1:8155" has an unsupported scheme; use grpc://, grpcs:// or unix://`},
		{name: "url no port", opts: PrivateURLOptions{URL: "grpc://10.0.0.1"},
			wantErr: `OWN_PRIVATE_API_URL: "grpc://10.0.0.1" must have the form grpc://host:port (no path, query or user info)`},
		{name: "url no host", opts: PrivateURLOptions{URL: "grpcs://:8155"},
			wantErr: `OWN_PRIVATE_API_URL: "grpcs://:8155" must have the form grpcs://host:port (no path, query or user info)`},
		{name: "url path", opts: PrivateURLOptions{URL: "grpc://h:8155/x"},
			wantErr: `OWN_PRIVATE_API_URL: "grpc://h:8155/x" must have the form grpc://host:port (no path, query or user info)`},
		{name: "url port zero", opts: PrivateURLOptions{URL: "grpc://h:0"},
			wantErr: `OWN_PRIVATE_API_URL: "grpc://h:0" has an invalid port "0"`},
		{name: "url wildcard v4", opts: PrivateURLOptions{URL: "grpc://0.0.0.0:8155"},
			wantErr: `OWN_PRIVATE_API_URL: "grpc://0.0.0.0:8155" has the wildcard address 0.0.0.0, which other nodes cannot dial`},
		{name: "url wildcard v6", opts: PrivateURLOptions{URL: "grpc://[::]:8155"},
			wantErr: `OWN_PRIVATE_API_URL: "grpc://[::]:8155" has the wildcard address ::, which other nodes cannot dial`},
		{name: "url unix relative", opts: PrivateURLOptions{URL: "unix://private.sock"},
			wantErr: `OWN_PRIVATE_API_URL: "unix://private.sock" must have the form unix:///absolute/path`},
		{name: "url not a url", opts: PrivateURLOptions{URL: "grpc://h:8155\x7f"},
			wantErr: `OWN_PRIVATE_API_URL: "grpc://h:8155\x7f" is not a URL`},
		{name: "url and cidr", opts: PrivateURLOptions{URL: "grpc://h:1", CIDR: "10.0.0.0/8"},
			wantErr: `OWN_PRIVATE_API_URL and OWN_PRIVATE_API_CIDR: set one of them, not both`},

		// OWN_PRIVATE_API_CIDR.
		{name: "cidr v4 listener port", opts: PrivateURLOptions{CIDR: "10.1.0.0/16", ListenAddress: "0.0.0.0:8155"}, want: "grpc://10.1.2.3:8155"},
		{name: "cidr v4 explicit port and grpcs", opts: PrivateURLOptions{CIDR: "192.168.5.0/24", Port: "9155", Scheme: "grpcs", ListenAddress: ":8155"},
			want: "grpcs://192.168.5.7:9155"},
		{name: "cidr v6 bracketed", opts: PrivateURLOptions{CIDR: "2001:db8:8a2e:370::7334/64", ListenAddress: "[::]:8155"},
			want: "grpc://[2001:db8:8a2e:370::7334]:8155"},
		{name: "cidr list, one match", opts: PrivateURLOptions{CIDR: "172.16.0.0/12, 2001:db8::/32", ListenNetwork: "tcp6", ListenAddress: "[::]:8155"},
			want: "grpc://[2001:db8:8a2e:370::7334]:8155"},
		{name: "cidr host bits ignored", opts: PrivateURLOptions{CIDR: "10.1.9.9/16", ListenAddress: ":8155"}, want: "grpc://10.1.2.3:8155"},
		{name: "cidr ipv4-mapped interface address", opts: PrivateURLOptions{CIDR: "10.9.0.0/16", ListenAddress: ":8155"},
			addrs: []string{"::ffff:10.9.0.4/120"}, want: "grpc://10.9.0.4:8155"},
		{name: "cidr unix listener needs port", opts: PrivateURLOptions{CIDR: "10.1.0.0/16", ListenNetwork: "unix", ListenAddress: "/run/p.sock"},
			wantErr: `OWN_PRIVATE_API_PORT: needed with OWN_PRIVATE_API_CIDR: the private API listens on network "unix", which has no port`},
		{name: "cidr unix listener with port", opts: PrivateURLOptions{CIDR: "10.1.0.0/16", Port: "8155", ListenNetwork: "unix", ListenAddress: "/run/p.sock"},
			want: "grpc://10.1.2.3:8155"},
		{name: "cidr listener port zero", opts: PrivateURLOptions{CIDR: "10.1.0.0/16", ListenAddress: ":0"},
			wantErr: `OWN_PRIVATE_API_PORT: needed with OWN_PRIVATE_API_CIDR: private API listen address ":0" has no fixed port`},
		{name: "cidr none matched", opts: PrivateURLOptions{CIDR: "172.16.0.0/12", ListenAddress: ":8155"},
			wantErr: `OWN_PRIVATE_API_CIDR: no interface address is in 172.16.0.0/12; addresses seen: 127.0.0.1, 10.1.2.3, 192.168.5.7, ::1, 2001:db8:8a2e:370::7334, fe80::1`},
		{name: "cidr none matched, no addresses", opts: PrivateURLOptions{CIDR: "172.16.0.0/12", ListenAddress: ":8155"}, addrs: []string{},
			wantErr: `OWN_PRIVATE_API_CIDR: no interface address is in 172.16.0.0/12; addresses seen: none`},
		{name: "cidr v4 does not match v6", opts: PrivateURLOptions{CIDR: "0.0.0.0/0", ListenAddress: ":8155"}, addrs: []string{"::1/128", "2001:db8::5/64"},
			wantErr: `OWN_PRIVATE_API_CIDR: no interface address is in 0.0.0.0/0; addresses seen: ::1, 2001:db8::5`},
		{name: "cidr several matched", opts: PrivateURLOptions{CIDR: "10.0.0.0/8,192.168.0.0/16", ListenAddress: ":8155"},
			wantErr: `OWN_PRIVATE_API_CIDR: 2 interface addresses are in 10.0.0.0/8,192.168.0.0/16 (10.1.2.3, 192.168.5.7), exactly one must be; narrow the CIDR or set OWN_PRIVATE_API_URL`},
		{name: "cidr several matched v6", opts: PrivateURLOptions{CIDR: "::/0", ListenAddress: ":8155"},
			wantErr: `OWN_PRIVATE_API_CIDR: 3 interface addresses are in ::/0 (::1, 2001:db8:8a2e:370::7334, fe80::1), exactly one must be; narrow the CIDR or set OWN_PRIVATE_API_URL`},
		{name: "cidr same address twice counts once", opts: PrivateURLOptions{CIDR: "10.0.0.0/8", ListenAddress: ":8155"},
			addrs: []string{"10.0.0.2/8", "10.0.0.2/8"}, want: "grpc://10.0.0.2:8155"},
		{name: "cidr invalid", opts: PrivateURLOptions{CIDR: "10.0.0.0/8,nope", ListenAddress: ":8155"},
			wantErr: `OWN_PRIVATE_API_CIDR: "nope" is not a CIDR (for example 10.0.0.0/8 or 2001:db8::/64)`},
		{name: "cidr bare address", opts: PrivateURLOptions{CIDR: "10.1.2.3", ListenAddress: ":8155"},
			wantErr: `OWN_PRIVATE_API_CIDR: "10.1.2.3" is not a CIDR (for example 10.0.0.0/8 or 2001:db8::/64)`},

		// Neither: the listener.
		{name: "listener v4", opts: PrivateURLOptions{ListenAddress: "10.1.2.3:8155"}, want: "grpc://10.1.2.3:8155"},
		{name: "listener v6 grpcs", opts: PrivateURLOptions{ListenNetwork: "tcp6", ListenAddress: "[2001:db8::7]:8155", Scheme: "grpcs"},
			want: "grpcs://[2001:db8::7]:8155"},
		{name: "listener hostname, port override", opts: PrivateURLOptions{ListenAddress: "kas-0.kas:8155", Port: "443"}, want: "grpc://kas-0.kas:443"},
		{name: "listener unix", opts: PrivateURLOptions{ListenNetwork: "unix", ListenAddress: "/var/opt/gitlab/gitlab-kas/sockets/private-api.socket"},
			want: "unix:///var/opt/gitlab/gitlab-kas/sockets/private-api.socket"},
		{name: "listener unix relative", opts: PrivateURLOptions{ListenNetwork: "unix", ListenAddress: "p.sock"},
			want: "unix://" + filepath.Join(wd, "p.sock")},
		{name: "listener empty host", opts: PrivateURLOptions{ListenAddress: ":8155"},
			wantErr: `OWN_PRIVATE_API_URL: not set, and the private API listens on every interface (":8155"), an address other nodes cannot dial; set OWN_PRIVATE_API_URL or OWN_PRIVATE_API_CIDR`},
		{name: "listener wildcard v4", opts: PrivateURLOptions{ListenAddress: "0.0.0.0:8155"},
			wantErr: `OWN_PRIVATE_API_URL: not set, and the private API listens on every interface ("0.0.0.0:8155"), an address other nodes cannot dial; set OWN_PRIVATE_API_URL or OWN_PRIVATE_API_CIDR`},
		{name: "listener wildcard v6", opts: PrivateURLOptions{ListenAddress: "[::]:8155"},
			wantErr: `OWN_PRIVATE_API_URL: not set, and the private API listens on every interface ("[::]:8155"), an address other nodes cannot dial; set OWN_PRIVATE_API_URL or OWN_PRIVATE_API_CIDR`},
		{name: "listener port zero", opts: PrivateURLOptions{ListenAddress: "10.1.2.3:0"},
			wantErr: `OWN_PRIVATE_API_URL: not set, and the private API listen address "10.1.2.3:0" has no fixed port; set OWN_PRIVATE_API_URL or OWN_PRIVATE_API_PORT`},
		{name: "listener not host:port", opts: PrivateURLOptions{ListenAddress: "10.1.2.3"},
			wantErr: `OWN_PRIVATE_API_URL: not set, and the private API listen address "10.1.2.3" is not host:port`},
		{name: "listener odd network", opts: PrivateURLOptions{ListenNetwork: "udp", ListenAddress: "10.1.2.3:1"},
			wantErr: `OWN_PRIVATE_API_URL: not set, and the private API listen network "udp" is neither tcp nor unix`},

		// Scheme, port and host, reported together.
		{name: "bad scheme", opts: PrivateURLOptions{Scheme: "https", ListenAddress: "10.1.2.3:8155"},
			wantErr: `OWN_PRIVATE_API_SCHEME: must be "grpc" or "grpcs", got "https"`},
		{name: "every problem at once", opts: PrivateURLOptions{URL: "grpc://h:1", CIDR: "10.0.0.0/8", Scheme: "GRPC", Port: "70000", Host: "https://kas"},
			wantErr: `OWN_PRIVATE_API_SCHEME: must be "grpc" or "grpcs", got "GRPC"` + "\n" +
				`OWN_PRIVATE_API_PORT: must be a port number from 1 to 65535, got "70000"` + "\n" +
				`OWN_PRIVATE_API_HOST: must be a TLS server name (host name or IP, no scheme or port), got "https://kas"` + "\n" +
				`OWN_PRIVATE_API_URL and OWN_PRIVATE_API_CIDR: set one of them, not both`},
		{name: "port zero", opts: PrivateURLOptions{Port: "0", ListenAddress: "10.1.2.3:8155"},
			wantErr: `OWN_PRIVATE_API_PORT: must be a port number from 1 to 65535, got "0"`},
		{name: "host with port", opts: PrivateURLOptions{Host: "kas.example.com:443", ListenAddress: "10.1.2.3:8155"},
			wantErr: `OWN_PRIVATE_API_HOST: must be a TLS server name (host name or IP, no scheme or port), got "kas.example.com:443"`},
		{name: "host ipv6 ok", opts: PrivateURLOptions{Host: "2001:db8::1", Scheme: "grpcs", ListenAddress: "10.1.2.3:8155"}, want: "grpcs://10.1.2.3:8155"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addrs := hostAddrs
			if tt.addrs != nil {
				addrs = tt.addrs
			}
			calls := 0
			tt.opts.InterfaceAddrs = func() ([]net.Addr, error) {
				calls++
				var out []net.Addr
				for _, a := range addrs {
					out = append(out, ipNet(t, a))
				}
				return out, nil
			}
			got, err := PrivateURL(tt.opts)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("PrivateURL() = %q, want error %q", got, tt.wantErr)
				}
				if err.Error() != tt.wantErr {
					t.Fatalf("PrivateURL() error:\n got %q\nwant %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("PrivateURL() error: %v", err)
			}
			if got != tt.want {
				t.Fatalf("PrivateURL() = %q, want %q", got, tt.want)
			}
			if tt.opts.CIDR == "" && calls != 0 {
				t.Errorf("interface addresses listed %d times without a CIDR", calls)
			}
		})
	}
}

func TestPrivateURLInterfaceListError(t *testing.T) {
	_, err := PrivateURL(PrivateURLOptions{CIDR: "10.0.0.0/8", ListenAddress: ":8155",
		InterfaceAddrs: func() ([]net.Addr, error) { return nil, errors.New("boom") }})
	want := "OWN_PRIVATE_API_CIDR: list interface addresses: boom"
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v, want %q", err, want)
	}
}

// strAddr is a net.Addr of another type than *net.IPNet.
type strAddr string

func (a strAddr) Network() string { return "ip" }
func (a strAddr) String() string  { return string(a) }

func TestPrivateURLOtherAddrTypes(t *testing.T) {
	got, err := PrivateURL(PrivateURLOptions{CIDR: "10.0.0.0/8", ListenAddress: ":8155",
		InterfaceAddrs: func() ([]net.Addr, error) {
			return []net.Addr{&net.IPAddr{IP: net.ParseIP("192.168.1.1")}, strAddr("garbage"), strAddr("172.16.0.1/12"), strAddr("10.2.3.4")}, nil
		}})
	if err != nil || got != "grpc://10.2.3.4:8155" {
		t.Fatalf("PrivateURL() = %q, %v", got, err)
	}
}

func TestPrivateURLRealInterfaces(t *testing.T) {
	// The default lister sees at least loopback.
	got, err := PrivateURL(PrivateURLOptions{CIDR: "127.0.0.0/8", ListenAddress: ":8155"})
	if err != nil {
		t.Skipf("no single loopback IPv4 address here: %v", err)
	}
	u, err := url.Parse(got)
	if err != nil || u.Scheme != "grpc" || u.Port() != "8155" || !strings.HasPrefix(u.Hostname(), "127.") {
		t.Fatalf("PrivateURL() = %q, want grpc://127.x.x.x:8155", got)
	}
}

func TestTLSForOutbound(t *testing.T) {
	tests := []struct {
		url, scheme string
		want        bool
	}{
		{"grpc://h:1", "", false},
		{"grpc://h:1", "grpc", false},
		{"grpcs://h:1", "", true},
		{"GRPCS://h:1", "", true},
		{"grpc://h:1", "grpcs", true},
		{"unix:///p.sock", "", false},
		{"unix:///p.sock", "grpcs", true},
	}
	for _, tt := range tests {
		if got := TLSForOutbound(tt.url, tt.scheme); got != tt.want {
			t.Errorf("TLSForOutbound(%q, %q) = %v, want %v", tt.url, tt.scheme, got, tt.want)
		}
	}
	if got := (PrivateURLOptions{Host: "kas.internal"}).ServerName(); got != "kas.internal" {
		t.Errorf("ServerName() = %q", got)
	}
}
