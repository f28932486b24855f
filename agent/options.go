package agent

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kas-project/kas/dataplane/tunnel"
)

// TunnelPath is the path of the dataplane nodes' agent endpoint, appended
// to Options.KASAddress.
const TunnelPath = "/api/tunnel/v1"

// Handshake headers.
const (
	// AgentVersionHeader carries Options.Version to the node.
	AgentVersionHeader = "Kas-Agent-Version"
	// NodeIDHeader is the ID of the node that accepted the tunnel, in its
	// handshake response.
	NodeIDHeader = "Kas-Node-Id"
)

// Defaults of the zero Options fields.
const (
	DefaultTunnels          = 2
	DefaultMaxConnectionAge = 30 * time.Minute
	DefaultMinBackoff       = time.Second
	DefaultMaxBackoff       = 30 * time.Second
	DefaultHealthyAfter     = 30 * time.Second
	DefaultNodeRetry        = 10 * time.Second
	DefaultNodeRetries      = 3
	DefaultDrainTimeout     = 10 * time.Minute
	DefaultShutdownTimeout  = 10 * time.Second
	DefaultHandshakeTimeout = 20 * time.Second
)

// maxConnectionAgeJitter spreads tunnel ages by ±20% so that agents started
// together do not rotate together.
const maxConnectionAgeJitter = 0.2

// Options configure an Agent. Every field's documentation names the
// command-line flag and environment variable of cmd/agentk that set it;
// Validate names them too. Zero durations and counts take the defaults.
type Options struct {
	// KASAddress is the dataplane's agent endpoint, ws:// or wss://, with
	// an optional path prefix; TunnelPath is appended
	// (--kas-address, KAS_ADDRESS). HTTPS_PROXY, HTTP_PROXY and NO_PROXY
	// are honoured.
	KASAddress string
	// TokenFile holds the agent token, surrounding white space ignored
	// (--token-file, KAS_TOKEN_FILE). It is read again for every
	// connection, so a rotated token is picked up, and never logged.
	TokenFile string
	// CAFile adds PEM certificates to the system roots when verifying a
	// wss:// server or an https:// proxy (--ca-file, KAS_CA_FILE).
	CAFile string
	// Version is sent to the node in the Kas-Agent-Version header.
	// Default "dev".
	Version string

	// Tunnels is how many tunnels the agent keeps open, on different
	// nodes when the load balancer allows (--tunnels, AGENTK_TUNNELS).
	// Default 2.
	Tunnels int
	// MaxConnectionAge is the age at which a tunnel is replaced, ±20%
	// jitter (--max-connection-age, AGENTK_MAX_CONNECTION_AGE). Default
	// 30m.
	MaxConnectionAge time.Duration
	// MinBackoff and MaxBackoff bound the reconnect delay: attempt n
	// waits a uniform random time in [0, min(MaxBackoff, MinBackoff·2^n))
	// (--min-backoff, --max-backoff; AGENTK_MIN_BACKOFF,
	// AGENTK_MAX_BACKOFF). Defaults 1s and 30s.
	MinBackoff, MaxBackoff time.Duration
	// HealthyAfter is how long a tunnel must stay up before the reconnect
	// backoff starts over. Default 30s.
	HealthyAfter time.Duration
	// NodeRetry is the delay before a tunnel that landed on a node
	// already holding another of this agent's tunnels tries once more for
	// a different node; it doubles for each of NodeRetries tries (±20%).
	// Defaults 10s and 3.
	NodeRetry   time.Duration
	NodeRetries int
	// DrainTimeout is how long a replaced tunnel may finish its streams
	// (long watches, exec sessions) before it is closed
	// (--drain-timeout, AGENTK_DRAIN_TIMEOUT). Default 10m.
	DrainTimeout time.Duration
	// ShutdownTimeout is how long Run, once its context ends, lets the
	// tunnels finish their streams (--shutdown-timeout,
	// AGENTK_SHUTDOWN_TIMEOUT). Default 10s.
	ShutdownTimeout time.Duration
	// HandshakeTimeout bounds one connection attempt. Default 20s.
	HandshakeTimeout time.Duration
	// Tunnel tunes every tunnel session: keepalive interval and dead-peer
	// timeout (--keepalive-interval, --dead-peer-timeout;
	// AGENTK_KEEPALIVE_INTERVAL, AGENTK_DEAD_PEER_TIMEOUT), windows.
	Tunnel tunnel.Config

	// The Kubernetes API server and the agent's credentials towards it.
	// With none of the following set, the in-cluster configuration is used
	// (service account token and CA, KUBERNETES_SERVICE_HOST/PORT).
	//
	// Kubeconfig is a kubeconfig file; its current context is used
	// (--kubeconfig, AGENTK_KUBECONFIG).
	Kubeconfig string
	// KubeAPIURL is the API server's URL, http:// or https://
	// (--kube-api-url, AGENTK_KUBE_API_URL), with KubeTokenFile (a bearer
	// token, re-read as it rotates; --kube-token-file,
	// AGENTK_KUBE_TOKEN_FILE), KubeCAFile (--kube-ca-file,
	// AGENTK_KUBE_CA_FILE) and KubeInsecureSkipTLSVerify
	// (--kube-insecure-skip-tls-verify,
	// AGENTK_KUBE_INSECURE_SKIP_TLS_VERIFY).
	KubeAPIURL                string
	KubeTokenFile             string
	KubeCAFile                string
	KubeInsecureSkipTLSVerify bool
	// KubeRESTConfig, for programs embedding the agent, replaces all of the
	// above.
	KubeRESTConfig *rest.Config

	// ObservabilityListen is the TCP address of /livez, /readyz, /metrics
	// and /debug/pprof/ (--observability-listen,
	// AGENTK_OBSERVABILITY_LISTEN; cmd/agentk's default is :8080). Empty:
	// no listener (Handler still serves them).
	ObservabilityListen string

	// Logger receives the agent's logs; default discard. Records carry
	// agent_id and node_id in their context and tunnel_id as an
	// attribute: build it with obs.NewLogger (or wrap its handler in
	// obs.ContextHandler) to see the IDs.
	Logger *slog.Logger
	// LogLevel, when Logger's handler takes its level from it, lets the
	// agent's configuration (observability.logging.level, delivered by
	// the nodes) change the level at run time; without a level in the
	// configuration it returns to its value at New. Nil: the
	// configuration's level is ignored.
	LogLevel *slog.LevelVar
	// Registry receives the agent's metrics and is served on /metrics;
	// default a new one with the Go and process collectors.
	Registry *prometheus.Registry
	// Clock is the time source; default SystemClock.
	Clock Clock
	// Rand returns a uniform random number in [0, n); default
	// math/rand/v2.Int64N. It must be safe for concurrent use.
	Rand func(n int64) int64
	// Proxy chooses the HTTP proxy towards the node; default
	// http.ProxyFromEnvironment.
	Proxy func(*http.Request) (*url.URL, error)
}

// setting names an option as the user sets it.
func setting(flag, env string) string { return fmt.Sprintf("--%s (%s)", flag, env) }

// resolved is what New needs from valid Options: defaults applied, files
// read and parsed.
type resolved struct {
	Options
	tunnelURL  string
	tlsConfig  *tls.Config
	kube       *rest.Config
	agentID    int64 // 0 when the token does not carry one
	tokenShape error // why the token does not look like an agent token
}

// Validate reports every problem of o at once, one per line, each naming
// the flag and environment variable that set it. It reads the token and
// certificate files and the Kubernetes configuration.
func (o Options) Validate() error {
	_, err := o.resolve()
	return err
}

func (o Options) withDefaults() Options {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	if o.Tunnels == 0 {
		o.Tunnels = DefaultTunnels
	}
	if o.NodeRetries == 0 {
		o.NodeRetries = DefaultNodeRetries
	}
	def(&o.MaxConnectionAge, DefaultMaxConnectionAge)
	def(&o.MinBackoff, DefaultMinBackoff)
	def(&o.MaxBackoff, DefaultMaxBackoff)
	def(&o.HealthyAfter, DefaultHealthyAfter)
	def(&o.NodeRetry, DefaultNodeRetry)
	def(&o.DrainTimeout, DefaultDrainTimeout)
	def(&o.ShutdownTimeout, DefaultShutdownTimeout)
	def(&o.HandshakeTimeout, DefaultHandshakeTimeout)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = SystemClock{}
	}
	if o.Rand == nil {
		o.Rand = rand.Int64N
	}
	if o.Proxy == nil {
		o.Proxy = http.ProxyFromEnvironment
	}
	return o
}

func (o Options) resolve() (*resolved, error) {
	r := &resolved{Options: o.withDefaults()}
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{name}, args...)...))
	}

	// The node.
	name := setting("kas-address", "KAS_ADDRESS")
	if o.KASAddress == "" {
		bad(name, "required: the dataplane's agent address, ws://host:port or wss://host")
	} else if u, err := url.Parse(o.KASAddress); err != nil {
		bad(name, "not a URL: %v", err)
	} else {
		switch {
		case u.Scheme != "ws" && u.Scheme != "wss":
			bad(name, "scheme must be ws or wss, got %q", o.KASAddress)
		case u.Host == "":
			bad(name, "has no host: %q", o.KASAddress)
		case u.User != nil:
			bad(name, "must not carry credentials; the agent token comes from --token-file")
		case u.Fragment != "":
			bad(name, "must not have a fragment: %q", o.KASAddress)
		default:
			u.Path = strings.TrimSuffix(u.Path, "/") + TunnelPath
			u.RawPath = ""
			r.tunnelURL = u.String()
		}
	}
	name = setting("token-file", "KAS_TOKEN_FILE")
	if o.TokenFile == "" {
		bad(name, "required: a file holding the agent token")
	} else if tok, err := readToken(o.TokenFile); err != nil {
		bad(name, "%v", err)
	} else {
		r.agentID, r.tokenShape = agentIDOf(tok)
	}
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if o.CAFile != "" {
		if err := addPEM(roots, o.CAFile); err != nil {
			bad(setting("ca-file", "KAS_CA_FILE"), "%v", err)
		}
	}
	r.tlsConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}

	// The pool.
	if o.Tunnels < 0 || o.Tunnels > 64 {
		bad(setting("tunnels", "AGENTK_TUNNELS"), "must be between 1 and 64, got %d", o.Tunnels)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{setting("max-connection-age", "AGENTK_MAX_CONNECTION_AGE"), o.MaxConnectionAge},
		{setting("min-backoff", "AGENTK_MIN_BACKOFF"), o.MinBackoff},
		{setting("max-backoff", "AGENTK_MAX_BACKOFF"), o.MaxBackoff},
		{setting("drain-timeout", "AGENTK_DRAIN_TIMEOUT"), o.DrainTimeout},
		{setting("shutdown-timeout", "AGENTK_SHUTDOWN_TIMEOUT"), o.ShutdownTimeout},
		{"HealthyAfter", o.HealthyAfter},
		{"NodeRetry", o.NodeRetry},
		{"HandshakeTimeout", o.HandshakeTimeout},
	} {
		if d.v < 0 {
			bad(d.name, "must not be negative, got %v", d.v)
		}
	}
	if o.NodeRetries < 0 {
		bad("NodeRetries", "must not be negative, got %d", o.NodeRetries)
	}
	if r.MinBackoff > r.MaxBackoff && o.MinBackoff >= 0 && o.MaxBackoff >= 0 {
		bad(setting("min-backoff", "AGENTK_MIN_BACKOFF"), "%v is longer than --max-backoff %v", r.MinBackoff, r.MaxBackoff)
	}
	if err := o.Tunnel.Validate(); err != nil {
		for _, e := range strings.Split(err.Error(), "\n") {
			bad("tunnel settings (--keepalive-interval, --dead-peer-timeout)", "%s", e)
		}
	}

	// The Kubernetes API server.
	kube, kubeErrs := o.kubeConfig()
	errs = append(errs, kubeErrs...)
	if kube != nil {
		kube = rest.CopyConfig(kube)
		// Bodies pass through as the API server sent them.
		kube.DisableCompression = true
		r.kube = kube
	}

	name = setting("observability-listen", "AGENTK_OBSERVABILITY_LISTEN")
	if o.ObservabilityListen != "" {
		if _, _, err := net.SplitHostPort(o.ObservabilityListen); err != nil {
			bad(name, "not host:port: %v", err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return r, nil
}

// kubeConfig builds the client configuration towards the API server.
func (o Options) kubeConfig() (*rest.Config, []error) {
	var errs []error
	bad := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{name}, args...)...))
	}
	kcName := setting("kubeconfig", "AGENTK_KUBECONFIG")
	urlName := setting("kube-api-url", "AGENTK_KUBE_API_URL")
	var sources []string
	if o.KubeRESTConfig != nil {
		sources = append(sources, "KubeRESTConfig")
	}
	if o.Kubeconfig != "" {
		sources = append(sources, kcName)
	}
	if o.KubeAPIURL != "" {
		sources = append(sources, urlName)
	}
	if len(sources) > 1 {
		bad(sources[0], "conflicts with %s: set one way to reach the Kubernetes API", strings.Join(sources[1:], " and "))
	}
	if o.KubeAPIURL == "" {
		for _, f := range []struct {
			name string
			set  bool
		}{
			{setting("kube-token-file", "AGENTK_KUBE_TOKEN_FILE"), o.KubeTokenFile != ""},
			{setting("kube-ca-file", "AGENTK_KUBE_CA_FILE"), o.KubeCAFile != ""},
			{setting("kube-insecure-skip-tls-verify", "AGENTK_KUBE_INSECURE_SKIP_TLS_VERIFY"), o.KubeInsecureSkipTLSVerify},
		} {
			if f.set {
				bad(f.name, "only applies with %s", urlName)
			}
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}

	switch {
	case o.KubeRESTConfig != nil:
		return o.KubeRESTConfig, nil
	case o.Kubeconfig != "":
		cfg, err := clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
		if err != nil {
			bad(kcName, "%v", err)
			return nil, errs
		}
		return cfg, nil
	case o.KubeAPIURL != "":
		cfg := &rest.Config{Host: o.KubeAPIURL}
		if u, err := url.Parse(o.KubeAPIURL); err != nil {
			bad(urlName, "not a URL: %v", err)
		} else if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad(urlName, "must be http:// or https://host[:port], got %q", o.KubeAPIURL)
		}
		if o.KubeTokenFile != "" {
			if _, err := readToken(o.KubeTokenFile); err != nil {
				bad(setting("kube-token-file", "AGENTK_KUBE_TOKEN_FILE"), "%v", err)
			}
			cfg.BearerTokenFile = o.KubeTokenFile
		}
		if o.KubeCAFile != "" {
			if err := addPEM(x509.NewCertPool(), o.KubeCAFile); err != nil {
				bad(setting("kube-ca-file", "AGENTK_KUBE_CA_FILE"), "%v", err)
			}
			if o.KubeInsecureSkipTLSVerify {
				bad(setting("kube-ca-file", "AGENTK_KUBE_CA_FILE"), "conflicts with --kube-insecure-skip-tls-verify")
			}
			cfg.CAFile = o.KubeCAFile
		}
		cfg.Insecure = o.KubeInsecureSkipTLSVerify
		if len(errs) > 0 {
			return nil, errs
		}
		return cfg, nil
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		if errors.Is(err, rest.ErrNotInCluster) {
			err = errors.New("not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are unset)")
		}
		bad("kubernetes API", "%v; outside a cluster set %s or %s", err, kcName, urlName)
		return nil, errs
	}
	return cfg, nil
}

// readToken reads a token file: trimmed, not empty.
func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	if strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("token file %s holds more than one word", path)
	}
	return tok, nil
}

// addPEM adds the certificates of a PEM file to pool.
func addPEM(pool *x509.CertPool, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read CA file: %w", err)
	}
	if !pool.AppendCertsFromPEM(b) {
		return fmt.Errorf("CA file %s holds no PEM certificate", path)
	}
	return nil
}
