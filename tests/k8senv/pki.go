package k8senv

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki holds the files of the cluster's throwaway certificate authority, its
// leaf certificates and the service account signing key. Every key is
// ECDSA P-256: quick to generate, and accepted by every component.
type pki struct {
	caFile               string
	caPEM                []byte
	serverCert           keyPair // kube-apiserver serving
	adminCert            keyPair // system:masters client: the admin kubeconfig, kwok
	kubeletClientCert    keyPair // kube-apiserver -> kwok's fake kubelet
	kubeletServingCert   keyPair // kwok's fake kubelet
	saKeyFile, saPubFile string
}

type keyPair struct {
	certFile, keyFile string
	certPEM, keyPEM   []byte
}

type certAuthority struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newPKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pki directory: %w", err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "kas-k8senv-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	ca := certAuthority{cert: caCert, key: caKey}
	p := &pki{
		caFile:    filepath.Join(dir, "ca.crt"),
		caPEM:     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		saKeyFile: filepath.Join(dir, "sa.key"),
		saPubFile: filepath.Join(dir, "sa.pub"),
	}
	if err := os.WriteFile(p.caFile, p.caPEM, 0o600); err != nil {
		return nil, fmt.Errorf("write CA certificate: %w", err)
	}

	loopback := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	leaves := []struct {
		kp      *keyPair
		name    string
		cn      string
		orgs    []string
		usage   x509.ExtKeyUsage
		ips     []net.IP
		dnsName []string
	}{
		{&p.serverCert, "kube-apiserver", "kube-apiserver", nil, x509.ExtKeyUsageServerAuth,
			append(loopback, net.IPv4(10, 96, 0, 1)), []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"}},
		{&p.adminCert, "admin", "kas-k8senv-admin", []string{"system:masters"}, x509.ExtKeyUsageClientAuth, nil, nil},
		{&p.kubeletClientCert, "kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, x509.ExtKeyUsageClientAuth, nil, nil},
		{&p.kubeletServingCert, "kubelet", "kwok-kubelet", nil, x509.ExtKeyUsageServerAuth, loopback, []string{"localhost"}},
	}
	for _, l := range leaves {
		kp, err := ca.issue(dir, l.name, pkix.Name{CommonName: l.cn, Organization: l.orgs}, l.usage, l.ips, l.dnsName)
		if err != nil {
			return nil, fmt.Errorf("issue %s certificate: %w", l.name, err)
		}
		*l.kp = kp
	}

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate service account key: %w", err)
	}
	if err := writeKey(p.saKeyFile, saKey); err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return nil, fmt.Errorf("marshal service account public key: %w", err)
	}
	if err := os.WriteFile(p.saPubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600); err != nil {
		return nil, fmt.Errorf("write service account public key: %w", err)
	}
	return p, nil
}

func (ca certAuthority) issue(dir, name string, subject pkix.Name, usage x509.ExtKeyUsage, ips []net.IP, dnsNames []string) (keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return keyPair{}, fmt.Errorf("generate key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      subject,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  ips,
		DNSNames:     dnsNames,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return keyPair{}, fmt.Errorf("create certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return keyPair{}, fmt.Errorf("marshal key: %w", err)
	}
	kp := keyPair{
		certFile: filepath.Join(dir, name+".crt"),
		keyFile:  filepath.Join(dir, name+".key"),
		certPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	if err := os.WriteFile(kp.certFile, kp.certPEM, 0o600); err != nil {
		return keyPair{}, fmt.Errorf("write certificate: %w", err)
	}
	if err := os.WriteFile(kp.keyFile, kp.keyPEM, 0o600); err != nil {
		return keyPair{}, fmt.Errorf("write key: %w", err)
	}
	return kp, nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal key %s: %w", filepath.Base(path), err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("write key %s: %w", filepath.Base(path), err)
	}
	return nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(fmt.Sprintf("read random serial: %v", err)) // crypto/rand never fails on Linux
	}
	return n
}
