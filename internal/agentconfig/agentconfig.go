// Package agentconfig is the contract between a dataplane node and agentk
// for delivering an agent's configuration over one of its tunnels.
//
// The node opens a stream on the tunnel and sends PUT Path with the
// version in VersionHeader and the configuration's YAML as the body
// (version 0 and an empty body: the agent has no configuration). agentk
// applies it and answers 204 No Content; it answers 204 without applying
// anything when it already has that version or a newer one, since each of
// its tunnels gets the delivery and nodes may deliver out of order.
//
// Only the node can make such a request: it strips every Kas-* header a
// caller of the Kubernetes API proxy sends, so a caller's PUT to Path
// lacks VersionHeader and goes to the Kubernetes API like any other path.
package agentconfig

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

const (
	// Path is the request path of a delivery.
	Path = "/.kas/agent-config"
	// VersionHeader carries the configuration's version.
	VersionHeader = "Kas-Agent-Config-Version"
	// MaxSize bounds the YAML of a delivery.
	MaxSize = 1 << 20
)

// NewRequest builds the delivery of version (0: none) with body yamlText,
// to be written on a tunnel stream (its URL has no host).
func NewRequest(ctx context.Context, version int64, yamlText string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://agent"+Path, strings.NewReader(yamlText))
	if err != nil {
		return nil, err
	}
	req.Header.Set(VersionHeader, strconv.FormatInt(version, 10))
	req.Header.Set("Content-Type", "application/yaml")
	return req, nil
}

// IsDelivery reports whether r is a delivery made by a node.
func IsDelivery(r *http.Request) bool {
	return r.URL.Path == Path && r.Header.Get(VersionHeader) != ""
}

// Delivery is a configuration as agentk receives it.
type Delivery struct {
	Version int64 // 0: the agent has no configuration
	YAML    string
}

// ReadDelivery reads a delivery's version and YAML; the error says what
// is wrong with a malformed one.
func ReadDelivery(r *http.Request) (Delivery, error) {
	if r.Method != http.MethodPut {
		return Delivery{}, fmt.Errorf("method %s, want PUT", r.Method)
	}
	v, err := strconv.ParseInt(r.Header.Get(VersionHeader), 10, 64)
	if err != nil || v < 0 {
		return Delivery{}, fmt.Errorf("%s %q is not a version", VersionHeader, r.Header.Get(VersionHeader))
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, MaxSize+1))
	if err != nil {
		return Delivery{}, fmt.Errorf("read configuration: %w", err)
	}
	if len(b) > MaxSize {
		return Delivery{}, fmt.Errorf("configuration larger than %d bytes", MaxSize)
	}
	return Delivery{Version: v, YAML: string(b)}, nil
}

// Settings are the parts of an agent's configuration that agentk itself
// applies (the rest is for the control plane: ci_access, user_access).
type Settings struct {
	// LogLevel is observability.logging.level; "" keeps agentk's own
	// --log-level.
	LogLevel string
}

// ParseSettings extracts Settings from a configuration's YAML. The control
// plane validated it when it was stored; unknown keys are ignored.
func ParseSettings(yamlText string) (Settings, error) {
	var doc struct {
		Observability struct {
			Logging struct {
				Level string `yaml:"level"`
			} `yaml:"logging"`
		} `yaml:"observability"`
	}
	if err := yaml.Unmarshal([]byte(yamlText), &doc); err != nil {
		return Settings{}, fmt.Errorf("parse agent configuration: %w", err)
	}
	return Settings{LogLevel: doc.Observability.Logging.Level}, nil
}

// ErrNotSupported is what a node makes of a 404 answer: an agentk too
// old to know deliveries passed the request to the Kubernetes API.
var ErrNotSupported = errors.New("agentk does not accept configuration deliveries")
