// Package listen opens kas's listeners and runs HTTP servers on them. A
// listener is described by a Spec: a network (tcp or unix), an address and an
// optional TLS certificate and key. One server speaks HTTP/1.1 and HTTP/2 on
// the same port (h2c in clear text, ALPN "h2" with TLS), which is all Connect,
// gRPC and gRPC-Web need.
package listen

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Spec says where and how to listen.
type Spec struct {
	// Network is tcp (the default), tcp4, tcp6 or unix.
	Network string
	// Address is host:port for TCP ("" host means every interface, port 0 a
	// free port) or a socket path for unix.
	Address string
	// CertificateFile and KeyFile turn TLS on; both or neither.
	CertificateFile string
	KeyFile         string
	// Setting names the configuration setting in errors, e.g.
	// "controlplane.listen". Optional.
	Setting string
}

func (s Spec) name(field string) string {
	if s.Setting == "" {
		return field
	}
	return s.Setting + "." + field
}

func (s Spec) network() string {
	if s.Network == "" {
		return "tcp"
	}
	return s.Network
}

// TLS reports whether the listener serves TLS.
func (s Spec) TLS() bool { return s.CertificateFile != "" || s.KeyFile != "" }

// Validate reports every problem with s at once, each naming the setting. It
// also loads the certificate and key when they are given.
func (s Spec) Validate() error {
	var errs []error
	switch s.network() {
	case "tcp", "tcp4", "tcp6":
		if err := checkHostPort(s.Address); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.name("address"), err))
		}
	case "unix":
		if s.Address == "" {
			errs = append(errs, fmt.Errorf("%s: a socket path is required for network unix", s.name("address")))
		}
	default:
		errs = append(errs, fmt.Errorf("%s: %q is not one of tcp, tcp4, tcp6, unix", s.name("network"), s.Network))
	}
	switch {
	case s.CertificateFile != "" && s.KeyFile == "":
		errs = append(errs, fmt.Errorf("%s: required when %s is set", s.name("key_file"), s.name("certificate_file")))
	case s.CertificateFile == "" && s.KeyFile != "":
		errs = append(errs, fmt.Errorf("%s: required when %s is set", s.name("certificate_file"), s.name("key_file")))
	case s.TLS():
		if _, err := tls.LoadX509KeyPair(s.CertificateFile, s.KeyFile); err != nil {
			errs = append(errs, fmt.Errorf("%s, %s: load TLS key pair: %w", s.name("certificate_file"), s.name("key_file"), err))
		}
	}
	return errors.Join(errs...)
}

func checkHostPort(addr string) error {
	if addr == "" {
		return errors.New("required (host:port, e.g. \":8153\")")
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %w", addr, unwrapAddrErr(err))
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	return nil
}

// unwrapAddrErr drops net.AddrError's repetition of the address.
func unwrapAddrErr(err error) error {
	var ae *net.AddrError
	if errors.As(err, &ae) {
		return errors.New(ae.Err)
	}
	return err
}

// Listen opens the listener s describes. For unix sockets it creates the
// parent directory and removes a stale socket file left by a server that is
// gone; a socket some live server still accepts on is an error. With TLS the
// listener offers ALPN h2 and http/1.1.
func Listen(s Spec) (net.Listener, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	var tlsConf *tls.Config
	if s.TLS() {
		cert, err := tls.LoadX509KeyPair(s.CertificateFile, s.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s: load TLS key pair: %w", s.name("certificate_file"), err)
		}
		tlsConf = &tls.Config{
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS12,
			NextProtos:   []string{"h2", "http/1.1"},
		}
	}
	var (
		l   net.Listener
		err error
	)
	if s.network() == "unix" {
		l, err = listenUnix(s.Address)
	} else {
		l, err = net.Listen(s.network(), s.Address)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.name("address"), err)
	}
	if tlsConf != nil {
		l = tls.NewListener(l, tlsConf)
	}
	return l, nil
}

func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("check socket %s: %w", path, err)
	case fi.Mode().Type() != fs.ModeSocket:
		return nil, fmt.Errorf("%s exists and is not a socket: refusing to replace it", path)
	default:
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s is in use by a running server", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	return net.Listen("unix", path)
}
