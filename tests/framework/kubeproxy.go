package framework

import (
	"net"
	"testing"

	"github.com/kas-project/kas/dataplane"
	"github.com/kas-project/kas/dataplane/proxy"
	"github.com/kas-project/kas/internal/cptest"
)

// ProxyNode is a dataplane node that serves the Kubernetes API proxy.
type ProxyNode struct {
	*Node
	// ProxyAddr is the proxy listener's host:port; ProxyURL the URL
	// clients use (http://host:port/k8s-proxy/, https:// with TLS).
	ProxyAddr string
	ProxyURL  string
}

// StartProxyNode starts a node (as StartNode) that also serves the
// Kubernetes API proxy on a port-0 listener (under proxy.DefaultPathPrefix
// unless modify sets another).
func StartProxyNode(t testing.TB, env *cptest.Env, id string, modify ...func(*dataplane.Options)) *ProxyNode {
	t.Helper()
	return startProxyNode(t, env, id, nil, modify...)
}

// StartTLSProxyNode is StartProxyNode with the proxy served over TLS with
// cert: kubectl sends credentials only to https:// servers.
func StartTLSProxyNode(t testing.TB, env *cptest.Env, id string, cert *ServerCert, modify ...func(*dataplane.Options)) *ProxyNode {
	t.Helper()
	return startProxyNode(t, env, id, cert, modify...)
}

func startProxyNode(t testing.TB, env *cptest.Env, id string, cert *ServerCert, modify ...func(*dataplane.Options)) *ProxyNode {
	t.Helper()
	var (
		l      net.Listener
		prefix string
	)
	withProxy := func(o *dataplane.Options) {
		l = Listen(t)
		o.KubernetesAPIListener = l
		if cert != nil {
			o.KubernetesAPIListener = cert.Listener(l)
		}
	}
	prefixOf := func(o *dataplane.Options) {
		if prefix = o.KubernetesAPI.PathPrefix; prefix == "" {
			prefix = proxy.DefaultPathPrefix
		}
	}
	all := append(append([]func(*dataplane.Options){withProxy}, modify...), prefixOf)
	n := StartNode(t, env, id, all...)
	addr := l.Addr().String()
	scheme := "http://"
	if cert != nil {
		scheme = "https://"
	}
	return &ProxyNode{Node: n, ProxyAddr: addr, ProxyURL: scheme + addr + prefix}
}
