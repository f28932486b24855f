package config

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Setting is one configurable leaf value.
type Setting struct {
	// Path is the dotted YAML path, e.g. "controlplane.listen.address".
	Path string
	// Env is the environment variable that overrides it.
	Env string
	v   reflect.Value
}

var durationType = reflect.TypeFor[time.Duration]()

// Settings lists every setting of c in declaration order. The values refer
// to c's fields.
func (c *Config) Settings() []Setting {
	var out []Setting
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			path := prefix + name
			fv := v.Field(i)
			if f.Type.Kind() == reflect.Struct {
				walk(fv, path+".")
				continue
			}
			env := f.Tag.Get("env")
			if env == "" {
				env = "KAS_" + strings.ToUpper(strings.ReplaceAll(path, ".", "_"))
			}
			out = append(out, Setting{Path: path, Env: env, v: fv})
		}
	}
	walk(reflect.ValueOf(c).Elem(), "")
	return out
}

// EnvNames lists every environment variable that overrides a setting.
func EnvNames() []string {
	var names []string
	for _, s := range Default().Settings() {
		names = append(names, s.Env)
	}
	return names
}

// set parses raw into the setting's field.
func (s Setting) set(raw string) error {
	switch {
	case s.v.Type() == durationType:
		d, err := time.ParseDuration(raw)
		if err != nil {
			return fmt.Errorf("%q is not a duration (for example 20s or 1m)", raw)
		}
		if d < 0 {
			return fmt.Errorf("%q is negative", raw)
		}
		s.v.SetInt(int64(d))
	case s.v.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return fmt.Errorf("%q is not true or false", raw)
		}
		s.v.SetBool(b)
	case s.v.Kind() == reflect.String:
		s.v.SetString(raw)
	case s.v.Kind() == reflect.Int:
		n, err := strconv.ParseInt(raw, 10, 32)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", raw)
		}
		s.v.SetInt(n)
	default:
		panic("config: unsupported setting type " + s.v.Type().String())
	}
	return nil
}

// String formats the setting's current value.
func (s Setting) String() string {
	switch {
	case s.v.Type() == durationType:
		return time.Duration(s.v.Int()).String()
	case s.v.Kind() == reflect.Bool:
		return strconv.FormatBool(s.v.Bool())
	case s.v.Kind() == reflect.Int:
		return strconv.FormatInt(s.v.Int(), 10)
	}
	return s.v.String()
}

// Load returns the default configuration overridden by the YAML file at path
// (none when path is empty), then by the environment as lookupEnv sees it
// (os.LookupEnv when nil; empty values count as unset). It reports every
// unknown setting and unparsable value at once. It does not validate: call
// Validate.
func Load(path string, lookupEnv func(string) (string, bool)) (*Config, error) {
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	c := Default()
	var errs []error
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read configuration file: %w", err)
		}
		if err := c.applyYAML(b); err != nil {
			errs = append(errs, err)
		}
	}
	for _, s := range c.Settings() {
		raw, ok := lookupEnv(s.Env)
		if !ok || raw == "" {
			continue
		}
		if err := s.set(raw); err != nil {
			errs = append(errs, fmt.Errorf("%s (from %s): %w", s.Path, s.Env, err))
		}
	}
	return c, errors.Join(errs...)
}

// applyYAML sets the settings found in a YAML document.
func (c *Config) applyYAML(b []byte) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("configuration file: %w", err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil // empty file
	}
	byPath := map[string]Setting{}
	groups := map[string]bool{}
	for _, s := range c.Settings() {
		byPath[s.Path] = s
		for p := s.Path; strings.Contains(p, "."); {
			p = p[:strings.LastIndex(p, ".")]
			groups[p] = true
		}
	}
	var errs []error
	var walk func(n *yaml.Node, prefix string)
	walk = func(n *yaml.Node, prefix string) {
		if n.Kind != yaml.MappingNode {
			name := strings.TrimSuffix(prefix, ".")
			if name == "" {
				name = "configuration file"
			}
			errs = append(errs, fmt.Errorf("%s: must be a mapping of settings (line %d)", name, n.Line))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			path := prefix + k.Value
			if v.Tag == "!!null" {
				continue
			}
			if s, ok := byPath[path]; ok {
				if v.Kind != yaml.ScalarNode {
					errs = append(errs, fmt.Errorf("%s: must be a single value (line %d)", path, v.Line))
					continue
				}
				if err := s.set(v.Value); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w (line %d)", path, err, v.Line))
				}
				continue
			}
			if groups[path] {
				walk(v, path+".")
				continue
			}
			errs = append(errs, fmt.Errorf("%s: unknown setting (line %d)", path, k.Line))
		}
	}
	walk(doc.Content[0], "")
	return errors.Join(errs...)
}

// YAML renders the effective configuration, each value commented with its
// environment variable. Secrets are redacted: the configuration holds only
// key file paths, and a password in database.url is replaced by xxxxx.
func (c *Config) YAML() ([]byte, error) {
	root := &yaml.Node{Kind: yaml.MappingNode}
	groups := map[string]*yaml.Node{"": root}
	for _, s := range c.Settings() {
		parent := root
		parts := strings.Split(s.Path, ".")
		for i := range parts[:len(parts)-1] {
			p := strings.Join(parts[:i+1], ".")
			g, ok := groups[p]
			if !ok {
				g = &yaml.Node{Kind: yaml.MappingNode}
				groups[p] = g
				parent.Content = append(parent.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: parts[i]}, g)
			}
			parent = g
		}
		val := s.String()
		if s.Path == "database.url" {
			val = RedactDatabaseURL(val)
		}
		vn := &yaml.Node{Kind: yaml.ScalarNode, Value: val, LineComment: s.Env}
		if s.v.Kind() == reflect.String {
			vn.Style = yaml.DoubleQuotedStyle
		}
		parent.Content = append(parent.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: parts[len(parts)-1]}, vn)
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{root}}); err != nil {
		return nil, fmt.Errorf("render configuration: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("render configuration: %w", err)
	}
	return buf.Bytes(), nil
}

var dsnPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// RedactDatabaseURL hides the password in a PostgreSQL URL or DSN.
func RedactDatabaseURL(s string) string {
	if u, err := url.Parse(s); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	return dsnPassword.ReplaceAllString(s, "${1}xxxxx")
}
