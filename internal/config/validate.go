package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/kas-project/kas/dataplane/proxy"
	"github.com/kas-project/kas/internal/obs"
	"github.com/kas-project/kas/internal/ratelimit"
)

// Role says what the process runs; Validate checks what the role needs.
type Role int

const (
	// RoleAll checks every setting (kas all, and --verify-config without a role).
	RoleAll Role = iota
	// RoleControlplane is kas controlplane.
	RoleControlplane
	// RoleDataplane is kas dataplane.
	RoleDataplane
	// RoleMigrate is kas migrate: the database only.
	RoleMigrate
)

// UsesDatabase reports whether the role opens the database.
func (r Role) UsesDatabase() bool { return r != RoleDataplane }

// UsesControlplane reports whether the role serves the control plane.
func (r Role) UsesControlplane() bool { return r == RoleAll || r == RoleControlplane }

// UsesDataplane reports whether the role runs a dataplane node.
func (r Role) UsesDataplane() bool { return r == RoleAll || r == RoleDataplane }

// String returns the role's command name.
func (r Role) String() string {
	switch r {
	case RoleControlplane:
		return "controlplane"
	case RoleDataplane:
		return "dataplane"
	case RoleMigrate:
		return "migrate"
	}
	return "all"
}

// KeySize is the decoded length of api_secret_key and private_api_secret_key.
const KeySize = 32

// Validate checks every setting role uses and reports all problems at once,
// each naming its setting. It loads the secret keys into APISecretKey and
// PrivateAPISecretKey.
//
// Key files may be unset for the control plane on the embedded database:
// the caller generates them (EnsureEmbeddedKeys) before serving.
func (c *Config) Validate(role Role) error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	addf := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if role.UsesDatabase() {
		if c.Database.URL != "" {
			add(checkDatabaseURL(c.Database.URL))
		} else if c.Database.DataDir == "" {
			addf("database.data_dir: required when database.url is empty (the embedded database lives there)")
		}
	}

	// Keys: the control plane needs both, a dataplane the private one.
	needAPI := role.UsesControlplane()
	needPrivate := role.UsesControlplane() || role.UsesDataplane()
	generated := c.Database.Embedded() && role.UsesControlplane()
	var err error
	if c.APISecretKey, c.ExtraAPISecretKeys, err = LoadKeys("api_secret_key_file", c.APISecretKeyFile, needAPI && !generated); err != nil {
		add(err)
	}
	if c.PrivateAPISecretKey, c.ExtraPrivateAPISecretKeys, err = LoadKeys("private_api_secret_key_file", c.PrivateAPISecretKeyFile, needPrivate && !generated); err != nil {
		add(err)
	}

	if role.UsesControlplane() {
		add(c.Controlplane.Listen.Spec("controlplane.listen").Validate())
		if c.Controlplane.LeaseTTL < time.Second {
			addf("controlplane.lease_ttl: %v is too short, must be at least 1s", c.Controlplane.LeaseTTL)
		}
	}
	if role.UsesDataplane() {
		d := c.Dataplane
		add(checkControlplaneURL(d.ControlplaneURL))
		if len(d.NodeID) > 253 || strings.ContainsFunc(d.NodeID, func(r rune) bool { return r <= ' ' || r == 0x7f }) || !utf8.ValidString(d.NodeID) {
			addf("dataplane.node_id: %q must be at most 253 printable characters without spaces", d.NodeID)
		}
		if d.DrainGrace < 5*time.Second {
			addf("dataplane.drain_grace: %v is too short, must be at least 5s (agents need time to move)", d.DrainGrace)
		}
		add(d.Agent.Listen.Spec("dataplane.agent.listen").Validate())
		add(d.KubernetesAPI.Listen.Spec("dataplane.kubernetes_api.listen").Validate())
		add(d.PrivateAPI.Listen.Spec("dataplane.private_api.listen").Validate())
		if p := d.KubernetesAPI.PathPrefix; !strings.HasPrefix(p, "/") || !strings.HasSuffix(p, "/") {
			addf("dataplane.kubernetes_api.path_prefix: %q must start and end with /", p)
		}
		if _, err := proxy.ParseOrigins(d.KubernetesAPI.AllowedOrigins); err != nil {
			for _, e := range err.(interface{ Unwrap() []error }).Unwrap() { // one per origin
				addf("dataplane.kubernetes_api.allowed_origins: %w", e)
			}
		}
		errs = append(errs, d.OwnPrivateAPI.check()...)
		errs = append(errs, d.FailedAuth.check()...)
	}
	if role != RoleMigrate {
		add(c.Observability.Listen.Spec("observability.listen").Validate())
	}
	if _, err := obs.ParseLevel(c.Observability.LogLevel); err != nil {
		addf("observability.log_level: %w", err)
	}
	if err := obs.CheckFormat(c.Observability.LogFormat); err != nil {
		addf("observability.log_format: %w", err)
	}
	return errors.Join(errs...)
}

// LoadKeys reads a key file: base64 text (surrounding white space ignored)
// whose decoded value is exactly KeySize bytes. During a key rotation the
// file holds several keys, one per line (blank lines ignored): key is the
// first, the one to sign with; extra are the others, which verifiers accept
// too. setting names the file in errors, which never contain a key.
func LoadKeys(setting, path string, required bool) (key []byte, extra [][]byte, err error) {
	if path == "" {
		if required {
			return nil, nil, fmt.Errorf("%s: required (a file with the base64 encoding of %d random bytes, e.g. `head -c %d /dev/urandom | base64`)", setting, KeySize, KeySize)
		}
		return nil, nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", setting, err)
	}
	var lines []int // 1-based numbers of the non-blank lines
	all := strings.Split(string(b), "\n")
	for i, l := range all {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, i+1)
		}
	}
	if len(lines) == 0 {
		return nil, nil, fmt.Errorf("%s: %s is empty", setting, path)
	}
	var errs []error
	var keys [][]byte
	for _, n := range lines {
		where := ""
		if len(lines) > 1 {
			where = fmt.Sprintf(" (line %d)", n)
		}
		k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(all[n-1]))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %s does not hold base64 text%s", setting, path, where))
		case len(k) != KeySize:
			errs = append(errs, fmt.Errorf("%s: decoded value is %d bytes, must be exactly %d%s", setting, len(k), KeySize, where))
		default:
			keys = append(keys, k)
		}
	}
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	if len(keys) == 1 {
		return keys[0], nil, nil
	}
	return keys[0], keys[1:], nil
}

func checkDatabaseURL(s string) error {
	if _, err := pgxpool.ParseConfig(s); err != nil {
		msg := err.Error()
		// pgx quotes the (password-redacted) URL first; the reason is enough.
		if i := strings.Index(msg, "`: "); strings.HasPrefix(msg, "cannot parse `") && i > 0 {
			msg = msg[i+3:]
		}
		return fmt.Errorf("database.url: not a valid PostgreSQL URL or DSN: %s", msg)
	}
	return nil
}

func checkControlplaneURL(s string) error {
	const setting = "dataplane.controlplane_url"
	u, err := url.Parse(s)
	if err != nil || s == "" {
		return fmt.Errorf("%s: %q is not a URL (for example http://kas-controlplane:8153)", setting, s)
	}
	switch u.Scheme {
	case "http", "https":
		if u.Host == "" {
			return fmt.Errorf("%s: %q has no host", setting, s)
		}
		if u.Port() != "" {
			if _, err := strconv.ParseUint(u.Port(), 10, 16); err != nil {
				return fmt.Errorf("%s: %q has an invalid port", setting, s)
			}
		}
	case "unix":
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") {
			return fmt.Errorf("%s: %q must have the form unix:///absolute/path", setting, s)
		}
	default:
		return fmt.Errorf("%s: %q must use http://, https:// or unix://", setting, s)
	}
	return nil
}

// check reports syntax problems of the OWN_PRIVATE_API_* values. Deriving
// the URL (interface addresses, the listener's port) is left to
// dataplane/discovery.
func (o OwnPrivateAPI) check() []error {
	var errs []error
	if o.URL != "" && o.CIDR != "" {
		errs = append(errs, errors.New("OWN_PRIVATE_API_URL and OWN_PRIVATE_API_CIDR (dataplane.own_private_api.url, .cidr): set one of them, not both"))
	}
	if o.URL != "" {
		u, err := url.Parse(o.URL)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("OWN_PRIVATE_API_URL: %q is not a URL", o.URL))
		case u.Scheme == "grpc" || u.Scheme == "grpcs":
			if _, port, err := net.SplitHostPort(u.Host); err != nil || port == "" {
				errs = append(errs, fmt.Errorf("OWN_PRIVATE_API_URL: %q must have the form %s://host:port", o.URL, u.Scheme))
			}
		case u.Scheme == "unix":
			if u.Host != "" || !strings.HasPrefix(u.Path, "/") {
				errs = append(errs, fmt.Errorf("OWN_PRIVATE_API_URL: %q must have the form unix:///absolute/path", o.URL))
			}
		default:
			errs = append(errs, fmt.Errorf("OWN_PRIVATE_API_URL: %q must use grpc://, grpcs:// or unix://", o.URL))
		}
	}
	if o.CIDR != "" {
		for _, s := range strings.Split(o.CIDR, ",") {
			if _, err := netip.ParsePrefix(strings.TrimSpace(s)); err != nil {
				errs = append(errs, fmt.Errorf("OWN_PRIVATE_API_CIDR: %q is not a CIDR (for example 10.0.0.0/8 or 2001:db8::/64)", strings.TrimSpace(s)))
			}
		}
	}
	if o.Port != "" {
		if n, err := strconv.ParseUint(o.Port, 10, 16); err != nil || n == 0 {
			errs = append(errs, fmt.Errorf("OWN_PRIVATE_API_PORT: %q is not a port number from 1 to 65535", o.Port))
		}
	}
	switch o.Scheme {
	case "", "grpc", "grpcs":
	default:
		errs = append(errs, fmt.Errorf("OWN_PRIVATE_API_SCHEME: %q must be grpc or grpcs", o.Scheme))
	}
	if strings.ContainsAny(o.Host, "/: \t") && net.ParseIP(o.Host) == nil {
		errs = append(errs, fmt.Errorf("OWN_PRIVATE_API_HOST: %q must be a host name or IP (the TLS server name), without scheme or port", o.Host))
	}
	return errs
}

// check reports problems of the failed-authentication limit.
func (f FailedAuth) check() []error {
	var errs []error
	if f.Burst < 0 {
		errs = append(errs, fmt.Errorf("dataplane.failed_auth.burst: %d is negative (0 turns the limit off)", f.Burst))
	}
	if f.Burst > 0 && f.Refill < time.Millisecond {
		errs = append(errs, fmt.Errorf("dataplane.failed_auth.refill: %v is too short, must be at least 1ms while dataplane.failed_auth.burst is set", f.Refill))
	}
	if _, err := ratelimit.ParsePrefixes(f.TrustedProxies); err != nil {
		errs = append(errs, fmt.Errorf("dataplane.failed_auth.trusted_proxies: %w", err))
	}
	return errs
}
