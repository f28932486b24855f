// Package agentcfg parses and validates an agent's configuration: the YAML
// that KAS reads from .gitlab/agents/<name>/config.yaml. Unknown fields are
// errors; every problem is reported with the path of the field it concerns.
package agentcfg

import (
	"fmt"
	"strings"
)

// MaxSize is the largest configuration accepted, in bytes.
const MaxSize = 128 << 10

// Config is an agent's configuration. (Placeholder: filled in by the full parser.)
type Config struct{}

// Problem is one validation failure.
type Problem struct {
	// Field is a path such as "ci_access.projects[0].id", or "" for the whole document.
	Field   string
	Message string
}

func (p Problem) String() string {
	if p.Field == "" {
		return p.Message
	}
	return p.Field + ": " + p.Message
}

// ValidationError lists every problem found.
type ValidationError struct{ Problems []Problem }

func (e *ValidationError) Error() string {
	s := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		s[i] = p.String()
	}
	return fmt.Sprintf("invalid agent configuration: %s", strings.Join(s, "; "))
}

// Parse parses and validates data. Errors are *ValidationError.
func Parse(data []byte) (*Config, error) {
	if len(data) > MaxSize {
		return nil, &ValidationError{[]Problem{{Message: fmt.Sprintf("configuration is %d bytes, more than the %d allowed", len(data), MaxSize)}}}
	}
	return &Config{}, nil
}
