// Package config is kas's configuration: one Config for every role, read
// from an optional YAML file, then overridden by environment variables, then
// validated with every problem reported at once, each naming its setting.
//
// Every setting has a dotted path (controlplane.listen.address) and an
// environment variable: KAS_ followed by the path in upper case with '_' for
// '.' (KAS_CONTROLPLANE_LISTEN_ADDRESS). The exceptions follow KAS: the
// OWN_PRIVATE_API_* variables keep their names. Secrets are never in the
// configuration itself, only the paths of the files that hold them.
package config

import (
	"time"

	"github.com/kas-project/kas/internal/listen"
)

// Config is the configuration of every role. The yaml tags are the setting
// names; env tags override the derived environment variable name.
type Config struct {
	Database Database `yaml:"database"`
	// APISecretKeyFile holds api_secret_key: base64 text whose decoded value
	// is exactly 32 bytes. Rails signs its JWTs with it. During a key
	// rotation the file holds more keys, one per line: the first is the
	// key, the others are accepted too (see docs/security.md).
	APISecretKeyFile string `yaml:"api_secret_key_file"`
	// PrivateAPISecretKeyFile holds private_api_secret_key (same format).
	// Dataplane nodes sign their calls to the control plane and to each
	// other with it.
	PrivateAPISecretKeyFile string        `yaml:"private_api_secret_key_file"`
	Controlplane            Controlplane  `yaml:"controlplane"`
	Dataplane               Dataplane     `yaml:"dataplane"`
	Observability           Observability `yaml:"observability"`

	// APISecretKey and PrivateAPISecretKey are the decoded keys, loaded by
	// Validate from the first line of the files above. They are never
	// printed.
	APISecretKey        []byte `yaml:"-"`
	PrivateAPISecretKey []byte `yaml:"-"`
	// ExtraAPISecretKeys and ExtraPrivateAPISecretKeys are the keys on the
	// files' further lines, for key rotation: verifiers accept them too,
	// nothing signs with them.
	ExtraAPISecretKeys        [][]byte `yaml:"-"`
	ExtraPrivateAPISecretKeys [][]byte `yaml:"-"`
}

// Database says which PostgreSQL the control plane uses.
type Database struct {
	// URL is a PostgreSQL URL or keyword/value DSN. Empty means the embedded
	// default: a PostgreSQL server run by kas itself in DataDir.
	URL string `yaml:"url"`
	// DataDir is the embedded server's data directory.
	DataDir string `yaml:"data_dir"`
	// MigrateOnStart applies pending migrations when the control plane
	// starts (under an advisory lock, so replicas may start together).
	MigrateOnStart bool `yaml:"migrate_on_start"`
}

// Embedded reports whether kas runs its own PostgreSQL.
func (d Database) Embedded() bool { return d.URL == "" }

// Listen is a listener: network tcp (tcp4, tcp6) or unix, an address, and
// optional TLS files (both or neither).
type Listen struct {
	Network         string `yaml:"network"`
	Address         string `yaml:"address"`
	CertificateFile string `yaml:"certificate_file"`
	KeyFile         string `yaml:"key_file"`
}

// Spec returns the listen.Spec for l; setting names it in errors.
func (l Listen) Spec(setting string) listen.Spec {
	return listen.Spec{Network: l.Network, Address: l.Address, CertificateFile: l.CertificateFile, KeyFile: l.KeyFile, Setting: setting}
}

// Controlplane configures `kas controlplane`.
type Controlplane struct {
	// Listen serves the Connect, gRPC and gRPC-Web API.
	Listen Listen `yaml:"listen"`
	// LeaseTTL is how long a dataplane node stays live without a heartbeat.
	LeaseTTL time.Duration `yaml:"lease_ttl"`
}

// Dataplane configures `kas dataplane`.
type Dataplane struct {
	// ControlplaneURL is where the node calls the control plane: http://,
	// https:// or unix:///path/to/socket.
	ControlplaneURL string `yaml:"controlplane_url"`
	// NodeID names the node in routes and logs; default the host name (the
	// pod name in Kubernetes). Unique per node.
	NodeID string `yaml:"node_id"`
	// DrainGrace bounds the drain on SIGTERM: tunnels still open this long
	// after it began are closed. Keep terminationGracePeriodSeconds above it.
	DrainGrace    time.Duration `yaml:"drain_grace"`
	Agent         Agent         `yaml:"agent"`
	KubernetesAPI KubernetesAPI `yaml:"kubernetes_api"`
	PrivateAPI    PrivateAPI    `yaml:"private_api"`
	// OwnPrivateAPI holds the raw OWN_PRIVATE_API_* values; package
	// dataplane/discovery derives the node's private URL from them.
	OwnPrivateAPI OwnPrivateAPI `yaml:"own_private_api"`
	// FailedAuth limits failed authentications per client on the agent
	// and Kubernetes API proxy listeners (package internal/ratelimit).
	FailedAuth FailedAuth `yaml:"failed_auth"`
}

// FailedAuth is the per-client limit of failed authentications: each
// client may fail Burst times in a row, and one more every Refill; beyond
// that it is answered 429 without the control plane being asked.
type FailedAuth struct {
	// Burst is the failures allowed in a row; 0 turns the limit off.
	Burst int `yaml:"burst"`
	// Refill is how often one more failure is allowed.
	Refill time.Duration `yaml:"refill"`
	// TrustedProxies is a comma-separated list of CIDRs (or addresses) of
	// load balancers whose X-Forwarded-For names the client. Empty: the
	// TCP peer is the client.
	TrustedProxies string `yaml:"trusted_proxies"`
}

// Agent is the listener agentk connects to (WebSocket tunnels).
type Agent struct {
	Listen Listen `yaml:"listen"`
}

// KubernetesAPI is the Kubernetes API proxy.
type KubernetesAPI struct {
	Listen Listen `yaml:"listen"`
	// PathPrefix is where the proxy is served; it starts and ends with '/'.
	PathPrefix string `yaml:"path_prefix"`
	// AllowedOrigins is a comma-separated list of origins
	// (scheme://host[:port], e.g. https://gitlab.example.com) whose browser
	// pages may use the proxy (CORS). A request with any other Origin
	// header, not the proxy's own, is refused with 403. Empty: same-origin
	// pages only. Requests without Origin are unaffected.
	AllowedOrigins string `yaml:"allowed_origins"`
}

// PrivateAPI is the node-to-node relay listener.
type PrivateAPI struct {
	Listen Listen `yaml:"listen"`
}

// OwnPrivateAPI are KAS's OWN_PRIVATE_API_* variables, read verbatim.
type OwnPrivateAPI struct {
	URL    string `yaml:"url" env:"OWN_PRIVATE_API_URL"`
	CIDR   string `yaml:"cidr" env:"OWN_PRIVATE_API_CIDR"`
	Port   string `yaml:"port" env:"OWN_PRIVATE_API_PORT"`
	Scheme string `yaml:"scheme" env:"OWN_PRIVATE_API_SCHEME"`
	Host   string `yaml:"host" env:"OWN_PRIVATE_API_HOST"`
}

// Observability configures logging and the observability listener
// (/metrics, /livez, /readyz, /debug/pprof/), which every role serves.
type Observability struct {
	Listen Listen `yaml:"listen"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// LogFormat is json, text, or auto: text (tint) when stderr is a
	// terminal, JSON otherwise.
	LogFormat string `yaml:"log_format"`
}

// Default ports, as KAS.
const (
	DefaultAgentAddress         = ":8150"
	DefaultObservabilityAddress = ":8151"
	DefaultControlplaneAddress  = ":8153"
	DefaultKubernetesAPIAddress = ":8154"
	DefaultPrivateAPIAddress    = ":8155"
)

// Default returns the configuration with every default filled in.
func Default() *Config {
	tcp := func(addr string) Listen { return Listen{Network: "tcp", Address: addr} }
	return &Config{
		Database: Database{DataDir: ".kas/postgres", MigrateOnStart: true},
		Controlplane: Controlplane{
			Listen:   tcp(DefaultControlplaneAddress),
			LeaseTTL: 20 * time.Second,
		},
		Dataplane: Dataplane{
			ControlplaneURL: "http://127.0.0.1:8153",
			DrainGrace:      30 * time.Second,
			Agent:           Agent{Listen: tcp(DefaultAgentAddress)},
			KubernetesAPI:   KubernetesAPI{Listen: tcp(DefaultKubernetesAPIAddress), PathPrefix: "/k8s-proxy/"},
			PrivateAPI:      PrivateAPI{Listen: tcp(DefaultPrivateAPIAddress)},
			FailedAuth:      FailedAuth{Burst: 20, Refill: time.Second},
		},
		Observability: Observability{Listen: tcp(DefaultObservabilityAddress), LogLevel: "info", LogFormat: "auto"},
	}
}
