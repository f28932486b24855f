package agentcfg

import (
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

var configType = reflect.TypeFor[Config]()

// validator collects problems. lines maps each field path seen to its line,
// so that the semantic checks can point at the line too.
type validator struct {
	problems []Problem
	lines    map[string]int
	// broken holds the paths with structural problems; semantic checks
	// stay quiet about them and everything below them.
	broken map[string]bool
	// nulls holds the paths of keys given without a value ("agent:").
	nulls map[string]bool
	// nodes counts the nodes walked, aliases expanded; past maxNodes the
	// walk stops (tooBig), so that a few aliases cannot make it exponential.
	nodes  int
	tooBig bool
	// dropped counts problems beyond maxProblems.
	dropped int
}

// Bounds on the work a document may cause and on the problems reported.
const (
	maxNodes    = 100_000
	maxProblems = 100
)

func (v *validator) err() error {
	ps := v.problems
	if v.dropped > 0 {
		ps = append(ps, Problem{Message: fmt.Sprintf("%d more problems not shown", v.dropped)})
	}
	return &ValidationError{Problems: ps}
}

// addAt records a problem at an explicit line.
func (v *validator) addAt(path string, line int, format string, args ...any) {
	if len(v.problems) >= maxProblems {
		v.dropped++
		return
	}
	v.problems = append(v.problems, Problem{Field: path, Message: fmt.Sprintf(format, args...), Line: line})
}

// bad records a structural problem (unknown field, wrong type) at path.
func (v *validator) bad(path string, line int, format string, args ...any) {
	v.broken[path] = true
	v.addAt(path, line, format, args...)
}

// add records a semantic problem at path, on the line of path or of its
// nearest ancestor that appeared in the document, unless a structural
// problem was already reported there.
func (v *validator) add(path, format string, args ...any) {
	for p := path; ; {
		if v.broken[p] {
			return
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	v.addAt(path, v.line(path), format, args...)
}

func (v *validator) line(path string) int {
	for p := path; ; {
		if l, ok := v.lines[p]; ok {
			return l
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			return v.lines[""]
		}
		p = p[:i]
	}
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// walk checks n against the Go type t: mappings for structs (no unknown or
// repeated fields), sequences for slices, scalars of the right kind. It
// reports every problem and goes on, so one run finds them all.
func (v *validator) walk(n *yaml.Node, path string, t reflect.Type) {
	for n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if !v.count(n) {
		return
	}
	if _, seen := v.lines[path]; !seen {
		v.lines[path] = n.Line
	}
	if isNull(n) {
		v.nulls[path] = true
		return // the zero value
	}
	if t.Kind() == reflect.Interface {
		return // opaque
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			v.bad(path, n.Line, "must be a mapping, not %s", describe(n))
			return
		}
		v.walkMapping(n, path, t, map[string]int{})
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			v.bad(path, n.Line, "must be a list, not %s", describe(n))
			return
		}
		for i, e := range n.Content {
			v.walk(e, fmt.Sprintf("%s[%d]", path, i), t.Elem())
		}
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			v.bad(path, n.Line, "must be a string, not %s", describe(n))
		}
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
			v.bad(path, n.Line, "must be true or false, not %s", describe(n))
		}
	default:
		panic("agentcfg: unsupported field type " + t.String())
	}
}

// count counts a node walked and reports whether the walk may go on.
func (v *validator) count(n *yaml.Node) bool {
	if v.nodes++; v.nodes <= maxNodes {
		return true
	}
	if !v.tooBig {
		v.tooBig = true
		v.addAt("", n.Line, "the configuration expands to more than %d nodes (aliases?); write it with fewer aliases", maxNodes)
	}
	return false
}

func (v *validator) walkMapping(n *yaml.Node, path string, t reflect.Type, seen map[string]int) {
	fields := fieldsOf(t)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.ShortTag() == "!!merge" { // "<<: *anchor" merges mappings in
			for val.Kind == yaml.AliasNode {
				val = val.Alias
			}
			merged := []*yaml.Node{val}
			if val.Kind == yaml.SequenceNode {
				merged = val.Content
			}
			for _, m := range merged {
				for m.Kind == yaml.AliasNode {
					m = m.Alias
				}
				if !v.count(m) {
					return
				}
				if m.Kind != yaml.MappingNode {
					v.bad(path, m.Line, "merge (<<) needs a mapping, not %s", describe(m))
					continue
				}
				v.walkMapping(m, path, t, map[string]int{})
			}
			continue
		}
		name := k.Value
		fp := join(path, name)
		if k.Kind != yaml.ScalarNode {
			v.bad(path, k.Line, "keys must be strings")
			continue
		}
		ft, ok := fields[name]
		if !ok {
			v.bad(join(path, keyInPath(name)), k.Line, "unknown field; expected one of %s", strings.Join(sortedKeys(fields), ", "))
			continue
		}
		if first, dup := seen[name]; dup {
			v.bad(fp, k.Line, "repeated; first set on line %d", first)
			continue
		}
		seen[name] = k.Line
		v.lines[fp] = k.Line
		v.walk(val, fp, ft)
	}
}

var plainKey = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// keyInPath writes an unknown key into a field path: as is when it is a
// plain word, quoted otherwise (empty, or with dots, brackets or spaces that
// would make the path ambiguous).
func keyInPath(key string) string {
	if plainKey.MatchString(key) {
		return key
	}
	return strconv.Quote(key)
}

func fieldsOf(t reflect.Type) map[string]reflect.Type {
	m := make(map[string]reflect.Type, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		m[name] = f.Type
	}
	return m
}

func sortedKeys(m map[string]reflect.Type) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!str":
			return fmt.Sprintf("the string %q", n.Value)
		case "!!int", "!!float":
			return "the number " + n.Value
		case "!!bool":
			return n.Value
		}
		return n.Value
	}
	return "something else"
}
