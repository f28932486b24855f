package app

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/kas-project/kas/internal/config"
)

// The all-in-one role, `kas all`, is the control plane and one dataplane
// node in one process, built by the same constructors as `kas
// controlplane` and `kas dataplane`. The node calls the control plane
// through the control plane's own listener (Connect over a real socket),
// never in memory, so the process behaves as the split deployment does.

// Names of the files the all-in-one role generates next to the keys when
// the proxy listener has no certificate.
const (
	ProxyCertFileName = "proxy-tls.crt"
	ProxyKeyFileName  = "proxy-tls.key"
)

// internalControlplaneListener names the loopback clear-text listener the
// node calls when the control plane's own listener serves TLS.
const internalControlplaneListener = "controlplane.loopback"

// prepareDataplaneForAll adjusts the dataplane's settings once the control
// plane listens, so that `kas all` needs no settings:
//
//   - dataplane.controlplane_url, left at its default, becomes the control
//     plane listener's address: its unix socket, or loopback TCP. A TLS
//     listener (whose certificate may not name loopback) gets a second,
//     loopback clear-text listener for the node.
//   - The private API, on every interface and without OWN_PRIVATE_API_URL
//     or OWN_PRIVATE_API_CIDR, listens on loopback instead, so the node's
//     private URL derives from the listener.
//   - On the embedded database, a TCP proxy listener without a certificate
//     gets a self-signed one, generated once next to the keys and reused:
//     kubectl sends credentials to https:// servers only.
func (s *Server) prepareDataplaneForAll(cfg *config.Config) error {
	d := &cfg.Dataplane
	if d.ControlplaneURL == config.Default().Dataplane.ControlplaneURL {
		u, err := s.controlplaneURLForNode(cfg)
		if err != nil {
			return err
		}
		d.ControlplaneURL = u
	}

	o := d.OwnPrivateAPI
	if l := &d.PrivateAPI.Listen; o.URL == "" && o.CIDR == "" && isTCP(l.Network) {
		if host, port, err := net.SplitHostPort(l.Address); err == nil && isWildcard(host) {
			l.Address = net.JoinHostPort(loopback(l.Network), port)
		}
	}

	if l := &d.KubernetesAPI.Listen; cfg.Database.Embedded() && isTCP(l.Network) && l.CertificateFile == "" && l.KeyFile == "" {
		cert := filepath.Join(cfg.SecretsDir(), ProxyCertFileName)
		key := filepath.Join(cfg.SecretsDir(), ProxyKeyFileName)
		created, err := ensureSelfSignedCert(cert, key, time.Now())
		if err != nil {
			return fmt.Errorf("dataplane.kubernetes_api.listen: generate a self-signed certificate: %w", err)
		}
		l.CertificateFile, l.KeyFile = cert, key
		s.proxyCA = cert
		s.log.Info("the Kubernetes API proxy serves a self-signed certificate", "certificate_file", cert, "generated", created)
	}
	return nil
}

// controlplaneURLForNode returns the URL the all-in-one node calls the
// control plane at: its listener, dialled on loopback.
func (s *Server) controlplaneURLForNode(cfg *config.Config) (string, error) {
	srv := s.server("controlplane.listen")
	if srv == nil {
		return "", errors.New("all-in-one: the control plane has no listener")
	}
	addr := srv.l.Addr()
	if addr.Network() == "unix" {
		abs, err := filepath.Abs(addr.String())
		if err != nil {
			return "", fmt.Errorf("controlplane.listen.address: %w", err)
		}
		return "unix://" + abs, nil
	}
	if srv.tls {
		if err := s.addServer(internalControlplaneListener, config.Listen{Network: "tcp", Address: "127.0.0.1:0"}, srv.http.Handler); err != nil {
			return "", err
		}
		return "http://" + s.Addr(internalControlplaneListener).String(), nil
	}
	return "http://" + dialAddress(addr, cfg.Controlplane.Listen.Network), nil
}

func isTCP(network string) bool {
	return network == "" || network == "tcp" || network == "tcp4" || network == "tcp6"
}

func isWildcard(host string) bool {
	ip, err := netip.ParseAddr(host)
	return host == "" || (err == nil && ip.IsUnspecified())
}

func loopback(network string) string {
	if network == "tcp6" {
		return "::1"
	}
	return "127.0.0.1"
}

// dialAddress returns host:port to dial a TCP listener at addr on this
// machine: a wildcard host becomes loopback.
func dialAddress(addr net.Addr, network string) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	if isWildcard(host) {
		host = loopback(network)
	}
	return net.JoinHostPort(host, port)
}

// ensureSelfSignedCert writes a self-signed certificate for this machine
// (localhost, its host name, 127.0.0.1 and ::1) and its key, mode 0600,
// unless both files exist. It reports whether it wrote them. The
// certificate is its own CA: clients trust it with kasctl kubeconfig
// --certificate-authority.
func ensureSelfSignedCert(certFile, keyFile string, now time.Time) (created bool, err error) {
	_, certErr := os.Stat(certFile)
	_, keyErr := os.Stat(keyFile)
	if certErr == nil && keyErr == nil {
		return false, nil
	}
	for _, err := range []error{certErr, keyErr} {
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, err
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return false, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return false, err
	}
	names := []string{"localhost"}
	if h, err := os.Hostname(); err == nil && h != "" && h != "localhost" {
		names = append(names, h)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "kas all-in-one Kubernetes API proxy"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(5, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              names,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return false, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return false, err
	}
	if err := os.MkdirAll(filepath.Dir(certFile), 0o700); err != nil {
		return false, err
	}
	// The key first: a certificate without its key is never left behind.
	if err := writeFile0600(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})); err != nil {
		return false, err
	}
	if err := writeFile0600(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})); err != nil {
		return false, err
	}
	return true, nil
}

// writeFile0600 replaces path with b, mode 0600, at once.
func writeFile0600(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
