// Package agentcfg parses and validates an agent's configuration: the YAML
// that KAS reads from .gitlab/agents/<name>/config.yaml. Unknown fields are
// errors; every problem is reported at once, each with the path of the field
// it concerns (for example `ci_access.projects[1].access_as.impersonate.username`)
// and its line.
//
// The model follows KAS: ci_access and user_access decide who may reach the
// agent through the Kubernetes API proxy and as whom; observability tunes
// agentk's logging. Other sections KAS documents (gitops, flux,
// remote_development, container_scanning, starboard...) are accepted and kept
// opaque: kas does not act on them.
package agentcfg

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// MaxSize is the largest configuration accepted, in bytes (KAS's
// max_configuration_file_size).
const MaxSize = 128 << 10

// Config is an agent's configuration. The zero value (an empty document) is
// the default configuration: no CI or user access, default logging.
type Config struct {
	CIAccess      *CIAccess      `yaml:"ci_access,omitempty"`
	UserAccess    *UserAccess    `yaml:"user_access,omitempty"`
	Observability *Observability `yaml:"observability,omitempty"`

	// Sections KAS documents that kas accepts but does not interpret.
	GitOps            any `yaml:"gitops,omitempty"`
	Flux              any `yaml:"flux,omitempty"`
	RemoteDevelopment any `yaml:"remote_development,omitempty"`
	Workspaces        any `yaml:"workspaces,omitempty"`
	ContainerScanning any `yaml:"container_scanning,omitempty"`
	Starboard         any `yaml:"starboard,omitempty"`
}

// CIAccess authorises CI jobs of projects, of groups' projects, or of the
// whole instance, to use the agent.
type CIAccess struct {
	Projects []CIAccessEntry `yaml:"projects,omitempty"`
	Groups   []CIAccessEntry `yaml:"groups,omitempty"`
	// Instance authorises every project of the instance.
	Instance *CIAccessInstance `yaml:"instance,omitempty"`
}

// CIAccessEntry authorises one project, or every project in one group and
// its subgroups.
type CIAccessEntry struct {
	// ID is the full path of the project or group, e.g. "group/sub/project".
	ID                    string      `yaml:"id"`
	DefaultNamespace      string      `yaml:"default_namespace,omitempty"`
	AccessAs              *CIAccessAs `yaml:"access_as,omitempty"`
	Environments          []string    `yaml:"environments,omitempty"`
	ProtectedBranchesOnly bool        `yaml:"protected_branches_only,omitempty"`
}

// CIAccessInstance authorises every project of the instance.
type CIAccessInstance struct {
	DefaultNamespace      string      `yaml:"default_namespace,omitempty"`
	AccessAs              *CIAccessAs `yaml:"access_as,omitempty"`
	Environments          []string    `yaml:"environments,omitempty"`
	ProtectedBranchesOnly bool        `yaml:"protected_branches_only,omitempty"`
}

// CIAccessAs says how agentk impersonates for CI jobs: exactly one is set.
type CIAccessAs struct {
	Agent       *AccessAsAgent       `yaml:"agent,omitempty"`
	Impersonate *AccessAsImpersonate `yaml:"impersonate,omitempty"`
	CIJob       *AccessAsCIJob       `yaml:"ci_job,omitempty"`
}

// AccessAsAgent: no impersonation, agentk's own service account.
type AccessAsAgent struct{}

// AccessAsCIJob: impersonate the CI job (gitlab:ci_job:<id>).
type AccessAsCIJob struct{}

// AccessAsUser: impersonate the GitLab user (gitlab:user:<username>).
type AccessAsUser struct{}

// AccessAsImpersonate is an explicit identity.
type AccessAsImpersonate struct {
	Username string       `yaml:"username"`
	Groups   []string     `yaml:"groups,omitempty"`
	UID      string       `yaml:"uid,omitempty"`
	Extra    []ExtraValue `yaml:"extra,omitempty"`
}

// ExtraValue is one Impersonate-Extra key with its values.
type ExtraValue struct {
	Key string   `yaml:"key"`
	Val []string `yaml:"val"`
}

// UserAccess authorises GitLab users (access tokens, browser sessions) who
// are members of the listed projects or groups.
type UserAccess struct {
	AccessAs *UserAccessAs     `yaml:"access_as"`
	Projects []UserAccessEntry `yaml:"projects,omitempty"`
	Groups   []UserAccessEntry `yaml:"groups,omitempty"`
}

// UserAccessAs says how agentk impersonates for users: exactly one is set.
type UserAccessAs struct {
	Agent *AccessAsAgent `yaml:"agent,omitempty"`
	User  *AccessAsUser  `yaml:"user,omitempty"`
}

// UserAccessEntry names a project or group by full path.
type UserAccessEntry struct {
	ID string `yaml:"id"`
}

// Observability tunes agentk's own telemetry.
type Observability struct {
	Logging        *Logging `yaml:"logging,omitempty"`
	GoogleProfiler any      `yaml:"google_profiler,omitempty"`
}

// Logging sets agentk's log levels: debug, info, warn or error.
type Logging struct {
	Level     string `yaml:"level,omitempty"`
	GRPCLevel string `yaml:"grpc_level,omitempty"`
}

// Problem is one validation failure.
type Problem struct {
	// Field is a path such as "ci_access.projects[0].id", or "" for the whole document.
	Field   string
	Message string
	// Line is the 1-based line the problem is on, 0 when unknown.
	Line int
}

func (p Problem) String() string {
	s := p.Message
	if p.Field != "" {
		s = p.Field + ": " + s
	}
	if p.Line > 0 {
		s = fmt.Sprintf("line %d: %s", p.Line, s)
	}
	return s
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

// Parse parses and validates data. An empty document gives the default
// configuration. Errors are *ValidationError.
func Parse(data []byte) (*Config, error) {
	if len(data) > MaxSize {
		return nil, &ValidationError{[]Problem{{Message: fmt.Sprintf("configuration is %d bytes, more than the %d allowed", len(data), MaxSize)}}}
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return &Config{}, nil // empty document: defaults
		}
		return nil, &ValidationError{[]Problem{syntaxProblem(err)}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		line := extra.Line
		if err != nil {
			return nil, &ValidationError{[]Problem{syntaxProblem(err)}}
		}
		return nil, &ValidationError{[]Problem{{Message: "more than one YAML document; the configuration is a single document", Line: line}}}
	}
	root := &doc
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return &Config{}, nil
		}
		root = root.Content[0]
	}

	// First the structure: every unknown field and wrong type, with paths.
	v := &validator{lines: map[string]int{}, broken: map[string]bool{}, nulls: map[string]bool{}}
	v.walk(root, "", configType)
	if v.tooBig {
		return nil, v.err() // decoding would expand the aliases again
	}
	// Then the values, strictly. Decoding goes on past type errors, so the
	// semantic checks below see whatever could be decoded; the walk has
	// reported those errors better, so an error here only counts when the
	// walk found nothing (a gap in it).
	var c Config
	if !isNull(root) {
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&c); err != nil && len(v.problems) == 0 {
			return nil, &ValidationError{[]Problem{syntaxProblem(err)}}
		}
	}
	// Then the meaning.
	c.fillNullKinds(v)
	c.validate(v)
	if len(v.problems) > 0 {
		sort.SliceStable(v.problems, func(i, j int) bool { return v.problems[i].Line < v.problems[j].Line })
		return nil, v.err()
	}
	return &c, nil
}

// syntaxProblem turns a yaml error ("yaml: line 3: mapping values are not
// allowed in this context") into a Problem with its line.
func syntaxProblem(err error) Problem {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg = strings.Join(te.Errors, "; ")
	}
	var line int
	if n, _ := fmt.Sscanf(msg, "line %d:", &line); n == 1 {
		if _, rest, ok := strings.Cut(msg, ": "); ok {
			msg = rest
		}
	}
	return Problem{Message: "invalid YAML: " + msg, Line: line}
}
