package config

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// env returns a lookup function over m.
func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// keyFile writes a key file holding the base64 of n bytes.
func keyFile(t *testing.T, n int) string {
	t.Helper()
	return writeFile(t, "key", base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, n))+"\n")
}

// wantProblems checks err mentions every want and has exactly len(want) problems.
func wantProblems(t *testing.T, err error, want ...string) {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("got problems, want none:\n%v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("got no problem, want %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("problems do not mention %q:\n%v", w, err)
		}
	}
	if got := strings.Count(err.Error(), "\n") + 1; got != len(want) {
		t.Errorf("got %d problems, want %d:\n%v", got, len(want), err)
	}
}

func TestDefaults(t *testing.T) {
	c, err := Load("", env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.Controlplane.Listen.Address != ":8153" || c.Observability.Listen.Address != ":8151" ||
		c.Dataplane.Agent.Listen.Address != ":8150" || c.Dataplane.KubernetesAPI.Listen.Address != ":8154" ||
		c.Dataplane.PrivateAPI.Listen.Address != ":8155" || c.Dataplane.KubernetesAPI.PathPrefix != "/k8s-proxy/" ||
		c.Dataplane.ControlplaneURL != "http://127.0.0.1:8153" || c.Database.DataDir != ".kas/postgres" ||
		!c.Database.MigrateOnStart || c.Controlplane.LeaseTTL != 20*time.Second {
		t.Errorf("unexpected defaults: %+v", c)
	}
	// The embedded default needs nothing else for the control plane: the
	// keys are generated.
	wantProblems(t, c.Validate(RoleControlplane))
	wantProblems(t, c.Validate(RoleMigrate))
	// A dataplane needs the private key.
	wantProblems(t, c.Validate(RoleDataplane), "private_api_secret_key_file: required")
}

func TestLoadFileAndEnvironment(t *testing.T) {
	api, private := keyFile(t, 32), keyFile(t, 32)
	file := writeFile(t, "kas.yaml", `
database:
  url: postgres://kas@db/kas
api_secret_key_file: `+api+`
private_api_secret_key_file: `+private+`
controlplane:
  listen:
    network: unix
    address: /run/kas/api.sock
  lease_ttl: 30s
dataplane:
  controlplane_url: https://cp.example:8153
  kubernetes_api:
    path_prefix: /
  own_private_api:
    cidr: 10.0.0.0/8
observability:
  listen: {address: "127.0.0.1:9151"}
  log_level: debug
  log_format: json
`)
	c, err := Load(file, env(map[string]string{
		"KAS_CONTROLPLANE_LEASE_TTL":         "45s",  // env beats the file
		"KAS_OBSERVABILITY_LOG_LEVEL":        "",     // empty: ignored
		"OWN_PRIVATE_API_PORT":               "9155", // KAS name, verbatim
		"KAS_DATABASE_MIGRATE_ON_START":      "false",
		"KAS_DATAPLANE_AGENT_LISTEN_ADDRESS": "0.0.0.0:443",
	}))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]any{
		"database.url":                 c.Database.URL,
		"controlplane.listen.network":  c.Controlplane.Listen.Network,
		"controlplane.listen.address":  c.Controlplane.Listen.Address,
		"controlplane.lease_ttl":       c.Controlplane.LeaseTTL,
		"dataplane.controlplane_url":   c.Dataplane.ControlplaneURL,
		"path_prefix":                  c.Dataplane.KubernetesAPI.PathPrefix,
		"cidr":                         c.Dataplane.OwnPrivateAPI.CIDR,
		"port":                         c.Dataplane.OwnPrivateAPI.Port,
		"observability.listen.address": c.Observability.Listen.Address,
		"observability.listen.network": c.Observability.Listen.Network,
		"log_level":                    c.Observability.LogLevel,
		"migrate_on_start":             c.Database.MigrateOnStart,
		"agent address":                c.Dataplane.Agent.Listen.Address,
	}
	want := map[string]any{
		"database.url":                 "postgres://kas@db/kas",
		"controlplane.listen.network":  "unix",
		"controlplane.listen.address":  "/run/kas/api.sock",
		"controlplane.lease_ttl":       45 * time.Second,
		"dataplane.controlplane_url":   "https://cp.example:8153",
		"path_prefix":                  "/",
		"cidr":                         "10.0.0.0/8",
		"port":                         "9155",
		"observability.listen.address": "127.0.0.1:9151",
		"observability.listen.network": "tcp", // default kept for unset siblings
		"log_level":                    "debug",
		"migrate_on_start":             false,
		"agent address":                "0.0.0.0:443",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}
	wantProblems(t, c.Validate(RoleAll))
	if len(c.APISecretKey) != 32 || len(c.PrivateAPISecretKey) != 32 {
		t.Errorf("keys not loaded: %d, %d bytes", len(c.APISecretKey), len(c.PrivateAPISecretKey))
	}
}

func TestLoadProblems(t *testing.T) {
	file := writeFile(t, "kas.yaml", `
controlplane:
  listen:
    adress: ":1"
  lease_ttl: 20
database: postgres://x
observability:
  listen: [a, b]
dataplane:
  agent:
    listen:
      network:
        nested: 1
bogus: 1
`)
	_, err := Load(file, env(map[string]string{
		"KAS_DATABASE_MIGRATE_ON_START": "perhaps",
		"KAS_CONTROLPLANE_LEASE_TTL":    "-1s",
	}))
	wantProblems(t, err,
		"controlplane.listen.adress: unknown setting (line 4)",
		`controlplane.lease_ttl: "20" is not a duration (for example 20s or 1m) (line 5)`,
		"database: must be a mapping of settings (line 6)",
		"observability.listen: must be a mapping of settings (line 8)",
		"dataplane.agent.listen.network: must be a single value (line 13)",
		"bogus: unknown setting (line 14)",
		`database.migrate_on_start (from KAS_DATABASE_MIGRATE_ON_START): "perhaps" is not true or false`,
		`controlplane.lease_ttl (from KAS_CONTROLPLANE_LEASE_TTL): "-1s" is negative`,
	)

	if _, err := Load(writeFile(t, "bad.yaml", "a: [\n"), env(nil)); err == nil || !strings.Contains(err.Error(), "configuration file: yaml:") {
		t.Errorf("malformed YAML: err = %v", err)
	}
	if _, err := Load(writeFile(t, "list.yaml", "- a\n"), env(nil)); err == nil || !strings.Contains(err.Error(), "configuration file: must be a mapping") {
		t.Errorf("YAML list: err = %v", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml"), env(nil)); err == nil || !strings.Contains(err.Error(), "read configuration file") {
		t.Errorf("missing file: err = %v", err)
	}
	if c, err := Load(writeFile(t, "empty.yaml", "# nothing\n"), env(nil)); err != nil || c.Controlplane.Listen.Address != ":8153" {
		t.Errorf("empty file: %v", err)
	}
}

func TestValidateKeys(t *testing.T) {
	secret := bytes.Repeat([]byte("s"), 12)
	short := writeFile(t, "short", base64.StdEncoding.EncodeToString(secret))
	notB64 := writeFile(t, "raw", "this is not base64!!")
	good := keyFile(t, 32)
	missing := filepath.Join(t.TempDir(), "nope")

	for _, tc := range []struct {
		name      string
		url       string
		api, priv string
		role      Role
		want      []string
	}{
		{"12 bytes", "", short, good, RoleControlplane,
			[]string{"api_secret_key_file: decoded value is 12 bytes, must be exactly 32"}},
		{"not base64 and missing", "", notB64, missing, RoleControlplane, []string{
			"api_secret_key_file: " + notB64 + " does not hold base64 text",
			"private_api_secret_key_file: open " + missing + ": no such file or directory"}},
		{"required with a database URL", "postgres://db/kas", "", "", RoleControlplane, []string{
			"api_secret_key_file: required", "private_api_secret_key_file: required"}},
		{"dataplane needs only the private key", "", "", good, RoleDataplane, nil},
		{"migrate needs no key", "postgres://db/kas", "", "", RoleMigrate, nil},
		{"embedded control plane generates them", "", "", "", RoleControlplane, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			c.Database.URL, c.APISecretKeyFile, c.PrivateAPISecretKeyFile = tc.url, tc.api, tc.priv
			err := c.Validate(tc.role)
			wantProblems(t, err, tc.want...)
			if err != nil && (strings.Contains(err.Error(), string(secret)) || strings.Contains(err.Error(), "this is not")) {
				t.Errorf("a problem reveals key material: %v", err)
			}
		})
	}
}

func TestValidateEveryProblemAtOnce(t *testing.T) {
	c := Default()
	c.Database.URL = "postgres://u:hunter2@db:99999/kas"
	c.APISecretKeyFile = writeFile(t, "short", base64.StdEncoding.EncodeToString([]byte("only twelve!")))
	c.PrivateAPISecretKeyFile = keyFile(t, 32)
	c.Controlplane.Listen.Network = "udp"
	c.Controlplane.LeaseTTL = 100 * time.Millisecond
	c.Observability.Listen = Listen{Address: "nope"}
	c.Observability.LogLevel = "loud"
	c.Observability.LogFormat = "xml"
	c.Dataplane.ControlplaneURL = "ftp://cp"
	c.Dataplane.Agent.Listen.CertificateFile = "/tls.crt"
	c.Dataplane.KubernetesAPI.PathPrefix = "k8s"
	c.Dataplane.PrivateAPI.Listen = Listen{Network: "unix"}
	c.Dataplane.OwnPrivateAPI = OwnPrivateAPI{URL: "http://10.0.0.1:8155", CIDR: "10.0.0.0/33", Port: "0", Scheme: "https", Host: "grpcs://x"}

	err := c.Validate(RoleAll)
	wantProblems(t, err,
		"database.url: not a valid PostgreSQL URL or DSN: invalid port",
		"api_secret_key_file: decoded value is 12 bytes, must be exactly 32",
		`controlplane.listen.network: "udp" is not one of tcp, tcp4, tcp6, unix`,
		"controlplane.lease_ttl: 100ms is too short, must be at least 1s",
		`dataplane.controlplane_url: "ftp://cp" must use http://, https:// or unix://`,
		"dataplane.agent.listen.key_file: required when dataplane.agent.listen.certificate_file is set",
		"dataplane.private_api.listen.address: a socket path is required for network unix",
		`dataplane.kubernetes_api.path_prefix: "k8s" must start and end with /`,
		"OWN_PRIVATE_API_URL and OWN_PRIVATE_API_CIDR (dataplane.own_private_api.url, .cidr): set one of them, not both",
		`OWN_PRIVATE_API_URL: "http://10.0.0.1:8155" must use grpc://, grpcs:// or unix://`,
		`OWN_PRIVATE_API_CIDR: "10.0.0.0/33" is not a CIDR`,
		`OWN_PRIVATE_API_PORT: "0" is not a port number from 1 to 65535`,
		`OWN_PRIVATE_API_SCHEME: "https" must be grpc or grpcs`,
		`OWN_PRIVATE_API_HOST: "grpcs://x" must be a host name or IP`,
		`observability.listen.address: "nope" is not host:port: missing port in address`,
		`observability.log_level: "loud" is not one of debug, info, warn, error`,
		`observability.log_format: "xml" is not one of auto, json, text`,
	)
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("a problem reveals the database password: %v", err)
	}

	// A control plane does not care about dataplane settings.
	err = c.Validate(RoleControlplane)
	if strings.Contains(err.Error(), "dataplane") || strings.Contains(err.Error(), "OWN_PRIVATE_API") {
		t.Errorf("control plane validation checked dataplane settings:\n%v", err)
	}
}

func TestValidateGoodOwnPrivateAPI(t *testing.T) {
	for _, o := range []OwnPrivateAPI{
		{URL: "grpc://10.0.0.1:8155"},
		{URL: "grpcs://kas-0.kas:8155", Host: "kas.example.com"},
		{URL: "unix:///var/opt/gitlab/gitlab-kas/sockets/private-api.socket"},
		{CIDR: "10.0.0.0/8, 2001:db8::/64", Port: "8155", Scheme: "grpcs", Host: "10.1.2.3"},
		{},
	} {
		if errs := o.check(); len(errs) > 0 {
			t.Errorf("%+v: %v", o, errs)
		}
	}
}

func TestEnsureEmbeddedKeys(t *testing.T) {
	dir := t.TempDir()
	c := Default()
	c.Database.DataDir = filepath.Join(dir, "kas", "postgres")
	paths, err := c.EnsureEmbeddedKeys()
	if err != nil {
		t.Fatal(err)
	}
	wantAPI := filepath.Join(dir, "kas", "secrets", "api_secret_key")
	wantPriv := filepath.Join(dir, "kas", "secrets", "private_api_secret_key")
	if !reflect.DeepEqual(paths, []string{wantAPI, wantPriv}) || c.APISecretKeyFile != wantAPI || c.PrivateAPISecretKeyFile != wantPriv {
		t.Fatalf("paths = %v, settings = %q, %q", paths, c.APISecretKeyFile, c.PrivateAPISecretKeyFile)
	}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, fi.Mode().Perm())
		}
	}
	if err := c.Validate(RoleControlplane); err != nil {
		t.Fatalf("generated keys do not validate: %v", err)
	}
	if bytes.Equal(c.APISecretKey, c.PrivateAPISecretKey) {
		t.Error("both generated keys are the same")
	}
	first := c.APISecretKey

	// A second start reuses the files.
	c2 := Default()
	c2.Database.DataDir = c.Database.DataDir
	if _, err := c2.EnsureEmbeddedKeys(); err != nil {
		t.Fatal(err)
	}
	if err := c2.Validate(RoleControlplane); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c2.APISecretKey, first) {
		t.Error("the api key changed on the second start")
	}

	// Configured files are kept; a database URL generates nothing.
	c3 := Default()
	c3.Database.DataDir = filepath.Join(dir, "other", "postgres")
	c3.APISecretKeyFile = "/configured"
	if paths, _ := c3.EnsureEmbeddedKeys(); len(paths) != 1 || c3.APISecretKeyFile != "/configured" {
		t.Errorf("configured file replaced: %v %q", paths, c3.APISecretKeyFile)
	}
	c4 := Default()
	c4.Database.URL = "postgres://db/kas"
	c4.Database.DataDir = filepath.Join(dir, "url", "postgres")
	if paths, _ := c4.EnsureEmbeddedKeys(); len(paths) != 0 || c4.APISecretKeyFile != "" {
		t.Errorf("keys generated with a database URL: %v", paths)
	}
}

func TestYAMLRoundTripAndRedaction(t *testing.T) {
	c := Default()
	c.Database.URL = "postgres://kas:hunter2@db:5432/kas?sslmode=require"
	c.APISecretKeyFile = keyFile(t, 32)
	c.PrivateAPISecretKeyFile = keyFile(t, 32)
	c.Controlplane.LeaseTTL = 90 * time.Second
	c.Dataplane.OwnPrivateAPI.URL = "grpc://10.0.0.1:8155"
	if err := c.Validate(RoleControlplane); err != nil {
		t.Fatal(err)
	}
	out, err := c.YAML()
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	for _, want := range []string{
		`url: "postgres://kas:xxxxx@db:5432/kas?sslmode=require" # KAS_DATABASE_URL`,
		`api_secret_key_file: "` + c.APISecretKeyFile + `" # KAS_API_SECRET_KEY_FILE`,
		"lease_ttl: 1m30s # KAS_CONTROLPLANE_LEASE_TTL",
		`address: ":8153" # KAS_CONTROLPLANE_LISTEN_ADDRESS`,
		`url: "grpc://10.0.0.1:8155" # OWN_PRIVATE_API_URL`,
		`path_prefix: "/k8s-proxy/" # KAS_DATAPLANE_KUBERNETES_API_PATH_PREFIX`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("printed configuration lacks %q:\n%s", want, s)
		}
	}
	key := base64.StdEncoding.EncodeToString(c.APISecretKey)
	if strings.Contains(s, "hunter2") || strings.Contains(s, key) {
		t.Errorf("printed configuration reveals a secret:\n%s", s)
	}
	// What is printed loads back to the same configuration (but the password).
	back, err := Load(writeFile(t, "printed.yaml", s), env(nil))
	if err != nil {
		t.Fatalf("printed configuration does not load: %v\n%s", err, s)
	}
	back.Database.URL = c.Database.URL
	c.APISecretKey, c.PrivateAPISecretKey = nil, nil
	if !reflect.DeepEqual(back, c) {
		t.Errorf("round trip changed the configuration:\n got %+v\nwant %+v", back, c)
	}
}

func TestRedactDatabaseURL(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:pw@h/db":                 "postgres://u:xxxxx@h/db",
		"postgresql://u@h/db?password=pw&x=1":  "postgresql://u@h/db?password=xxxxx&x=1",
		"host=h user=u password=pw dbname=d":   "host=h user=u password=xxxxx dbname=d",
		"host=h password = 'p w\\'x' dbname=d": "host=h password = xxxxx dbname=d",
		"postgres://u@h/db":                    "postgres://u@h/db",
		"":                                     "",
	} {
		if got := RedactDatabaseURL(in); got != want {
			t.Errorf("RedactDatabaseURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestEnvNames(t *testing.T) {
	names := EnvNames()
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] {
			t.Errorf("%s overrides two settings", n)
		}
		seen[n] = true
	}
	for _, want := range []string{
		"KAS_DATABASE_URL", "KAS_DATABASE_DATA_DIR", "KAS_API_SECRET_KEY_FILE", "KAS_PRIVATE_API_SECRET_KEY_FILE",
		"KAS_CONTROLPLANE_LISTEN_NETWORK", "KAS_CONTROLPLANE_LISTEN_CERTIFICATE_FILE", "KAS_OBSERVABILITY_LOG_FORMAT",
		"KAS_DATAPLANE_PRIVATE_API_LISTEN_KEY_FILE", "OWN_PRIVATE_API_URL", "OWN_PRIVATE_API_CIDR",
		"OWN_PRIVATE_API_PORT", "OWN_PRIVATE_API_SCHEME", "OWN_PRIVATE_API_HOST",
	} {
		if !seen[want] {
			t.Errorf("%s is not an override", want)
		}
	}
	// The README documents every variable.
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatalf("read README: %v", err)
	}
	for _, n := range names {
		if !bytes.Contains(readme, []byte("`"+n+"`")) {
			t.Errorf("README.md does not document %s", n)
		}
	}
}

func TestValidateSingleProblems(t *testing.T) {
	key := keyFile(t, 32)
	for _, tc := range []struct {
		name   string
		role   Role
		modify func(c *Config)
		want   string
	}{
		{"embedded without data dir", RoleMigrate, func(c *Config) { c.Database.DataDir = "" },
			"database.data_dir: required when database.url is empty"},
		{"unparsable database DSN", RoleMigrate, func(c *Config) { c.Database.URL = "host=db sslmode=sometimes" },
			"database.url: not a valid PostgreSQL URL or DSN: "},
		{"node ID with a space", RoleDataplane, func(c *Config) { c.Dataplane.NodeID = "node 1" },
			`dataplane.node_id: "node 1" must be at most 253 printable characters without spaces`},
		{"drain grace too short", RoleDataplane, func(c *Config) { c.Dataplane.DrainGrace = time.Second },
			"dataplane.drain_grace: 1s is too short, must be at least 5s (agents need time to move)"},
		{"empty control plane URL", RoleDataplane, func(c *Config) { c.Dataplane.ControlplaneURL = "" },
			`dataplane.controlplane_url: "" is not a URL (for example http://kas-controlplane:8153)`},
		{"control plane URL without host", RoleDataplane, func(c *Config) { c.Dataplane.ControlplaneURL = "http:///x" },
			`dataplane.controlplane_url: "http:///x" has no host`},
		{"control plane URL with a bad port", RoleDataplane, func(c *Config) { c.Dataplane.ControlplaneURL = "http://cp:99999" },
			`dataplane.controlplane_url: "http://cp:99999" has an invalid port`},
		{"control plane relative unix URL", RoleDataplane, func(c *Config) { c.Dataplane.ControlplaneURL = "unix://run/kas.sock" },
			`dataplane.controlplane_url: "unix://run/kas.sock" must have the form unix:///absolute/path`},
		{"own URL not a URL", RoleDataplane, func(c *Config) { c.Dataplane.OwnPrivateAPI.URL = "grpc://[::1" },
			`OWN_PRIVATE_API_URL: "grpc://[::1" is not a URL`},
		{"own URL without port", RoleDataplane, func(c *Config) { c.Dataplane.OwnPrivateAPI.URL = "grpcs://kas-0" },
			`OWN_PRIVATE_API_URL: "grpcs://kas-0" must have the form grpcs://host:port`},
		{"own unix URL with a host", RoleDataplane, func(c *Config) { c.Dataplane.OwnPrivateAPI.URL = "unix://host/private.sock" },
			`OWN_PRIVATE_API_URL: "unix://host/private.sock" must have the form unix:///absolute/path`},
		{"path prefix without trailing slash", RoleDataplane, func(c *Config) { c.Dataplane.KubernetesAPI.PathPrefix = "/k8s" },
			`dataplane.kubernetes_api.path_prefix: "/k8s" must start and end with /`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			c.PrivateAPISecretKeyFile = key
			tc.modify(c)
			wantProblems(t, c.Validate(tc.role), tc.want)
		})
	}
	// Each role checks only its own settings.
	c := Default()
	c.Dataplane.ControlplaneURL = "bogus"
	c.Controlplane.LeaseTTL = time.Millisecond
	c.Observability.Listen.Network = "udp"
	wantProblems(t, c.Validate(RoleMigrate))
}
