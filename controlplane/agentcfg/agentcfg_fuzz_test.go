package agentcfg

import (
	"bytes"
	"errors"
	"reflect"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// Messages of problems about the whole document, which have no field.
var documentProblems = []string{
	"invalid YAML", "more than one YAML document", "configuration is ", "must be a mapping",
	"keys must be strings", "merge (<<) needs a mapping", "the configuration expands to more than", "more problems not shown",
}

var index = regexp.MustCompile(`^\[\d+\]`)

// resolve follows path (like ci_access.projects[1].access_as) through the
// Config type as far as it names real fields and indexes real lists. It
// returns how many bytes of path it consumed and the type reached.
func resolve(path string) (int, reflect.Type) {
	t, pos := configType, 0
	for {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return pos, t
		}
		end := strings.IndexAny(path[pos:], ".[")
		if end < 0 {
			end = len(path) - pos
		}
		ft, ok := fieldsOf(t)[path[pos:pos+end]]
		if !ok {
			return pos, t
		}
		next := pos + end
		for t = ft; t.Kind() == reflect.Slice; t = t.Elem() {
			m := index.FindString(path[next:])
			if m == "" {
				break
			}
			next += len(m)
		}
		if next == len(path) {
			return next, t
		}
		if path[next] != '.' {
			return pos, t
		}
		pos = next + 1
	}
}

// checkProblems fails t unless err is a *ValidationError whose every
// problem has a message and either a field path that exists in Config (an
// unknown field: up to the unknown key, which follows as a plain word or
// quoted) or is about the whole document.
func checkProblems(t *testing.T, data []byte, err error) {
	t.Helper()
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Parse(%q): error %T %v is not a *ValidationError", data, err, err)
	}
	if len(ve.Problems) == 0 {
		t.Fatalf("Parse(%q): ValidationError without problems", data)
	}
	for _, p := range ve.Problems {
		if strings.TrimSpace(p.Message) == "" {
			t.Fatalf("Parse(%q): problem without a message: %+v", data, p)
		}
		if p.Field == "" {
			doc := false
			for _, m := range documentProblems {
				doc = doc || strings.Contains(p.Message, m)
			}
			if !doc {
				t.Fatalf("Parse(%q): problem %q names no field", data, p.Message)
			}
			continue
		}
		n, typ := resolve(p.Field)
		if !strings.HasPrefix(p.Message, "unknown field") {
			if n != len(p.Field) {
				t.Fatalf("Parse(%q): problem %q has field path %q, which Config does not have past %q",
					data, p.Message, p.Field, p.Field[:n])
			}
			continue
		}
		key := p.Field[n:]
		if unq, err := strconv.Unquote(key); err == nil {
			key = unq
		} else if !regexp.MustCompile(`^[A-Za-z0-9_-]+$`).MatchString(key) {
			t.Fatalf("Parse(%q): unknown field %q: key %q is neither a word nor quoted", data, p.Field, key)
		}
		if typ.Kind() != reflect.Struct {
			t.Fatalf("Parse(%q): unknown field %q is not inside a mapping of Config", data, p.Field)
		}
		if _, known := fieldsOf(typ)[key]; known {
			t.Fatalf("Parse(%q): %q reported unknown, but it is a field there", data, p.Field)
		}
	}
}

// FuzzParse: Parse never panics; errors list problems with field paths;
// a configuration it accepts survives being written out and parsed again
// unchanged, and parsing is deterministic.
func FuzzParse(f *testing.F) {
	f.Add([]byte(full))
	for _, s := range []string{
		"", "~", "{}", "[]", "a", "ci_access: {}", "user_access: {access_as: {agent: }}",
		"ci_access:\n  projects:\n  - id: a/b\n    access_as:\n      impersonate:\n        username: u\n        extra: [{key: k, val: [v]}]\n",
		"ci_access: &a {projects: [{id: x}]}\ngitops: *a\n",
		"base: &b {id: g}\nci_access: {groups: [<<: *b]}\n",
		"ci_access:\n  <<: {groups: [{id: g}]}\n",
		"gitops: !!binary aGVsbG8=\n",
		"gitops: {a: .nan, b: 2001-12-14t21:59:43.10-05:00, c: 0x1f, d: !!set {x, y}}\n",
		"ci_access: {projects: [{id: \"a\\u0000b\"}]}\n",
		"? [a]\n: b\n", "'\\xff': 1", "\xff\xfe", "%YAML 1.1\n---\n{}\n", "ci_access: !!str x\n",
		"user_access:\n  access_as: {user: {}}\n  groups: [{id: a}, {id: A}]\n",
		"observability: {logging: {level: debug, grpc_level: error}, google_profiler: {enabled: true}}\n",
		"a: &a [*a, *a]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			checkProblems(t, data, err)
			if _, err2 := Parse(data); err2 == nil || err2.Error() != err.Error() {
				t.Fatalf("Parse(%q) is not deterministic: %v, then %v", data, err, err2)
			}
			return
		}
		if c == nil {
			t.Fatalf("Parse(%q) = nil, nil", data)
		}
		if c2, err := Parse(data); err != nil || !reflect.DeepEqual(normalize(t, c), normalize(t, c2)) {
			t.Fatalf("Parse(%q) is not deterministic: %+v, then %+v, %v", data, c, c2, err)
		}
		out := normalize(t, c)
		if len(out) > MaxSize {
			return // aliases expanded: too big to parse again, by design
		}
		c2, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(%q) accepted it, but not its own rendering %q: %v", data, out, err)
		}
		if out2 := normalize(t, c2); !bytes.Equal(out, out2) {
			t.Fatalf("Parse(%q) is not stable:\nfirst  %q\nsecond %q", data, out, out2)
		}
		// What the control plane acts on must survive too.
		if c.UserAccessAsAgent() != c2.UserAccessAsAgent() {
			t.Fatalf("Parse(%q): user_access.access_as changed on a round trip", data)
		}
	})
}

// normalize renders c as YAML.
func normalize(t *testing.T, c *Config) []byte {
	t.Helper()
	out, err := yaml.Marshal(c)
	if err != nil {
		t.Fatalf("render %+v: %v", c, err)
	}
	return out
}

// aliasBombs are small documents whose aliases expand to millions of nodes.
func aliasBombs(n int) map[string]string {
	list := func(alias string) string { return "[" + strings.TrimSuffix(strings.Repeat(alias+",", n), ",") + "]" }
	return map[string]string{
		"lists": "x:\n  v: &v [s, s, s]\n  x: &x {key: k, val: *v}\n" +
			"  e: &e {id: a, access_as: {impersonate: {username: u, extra: " + list("*x") + "}}}\n" +
			"ci_access:\n  projects: " + list("*e") + "\n",
		"merges": "gitops:\n  m0: &m0 {}\n  m1: &m1 {<<: " + list("*m0") + "}\n  m2: &m2 {<<: " + list("*m1") + "}\n" +
			"ci_access:\n  <<: *m2\n",
	}
}

// TestParseAliasBomb: a few kilobytes of aliases used to take minutes and
// gigabytes to walk. Now the walk stops after maxNodes and says why.
func TestParseAliasBomb(t *testing.T) {
	for name, doc := range aliasBombs(2000) {
		t.Run(name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := Parse([]byte(doc))
			runtime.ReadMemStats(&after)
			if err == nil || !strings.Contains(err.Error(), "expands to more than 100000 nodes") {
				t.Fatalf("Parse(%d-byte alias bomb) = %v; want the expansion refused", len(doc), err)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 256<<20 {
				t.Errorf("Parse allocated %d MiB for a %d-byte document", alloc>>20, len(doc))
			}
		})
	}
}

// TestParseProblemsCapped: a document with thousands of problems gives the
// first maxProblems and a count of the rest, not a megabyte of errors.
func TestParseProblemsCapped(t *testing.T) {
	doc := "ci_access:\n  projects:\n" + strings.Repeat("  - {}\n", 500)
	_, err := Parse([]byte(doc))
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Parse = %v", err)
	}
	if len(ve.Problems) != maxProblems+1 || ve.Problems[maxProblems].Message != "400 more problems not shown" {
		t.Fatalf("got %d problems, last %+v", len(ve.Problems), ve.Problems[len(ve.Problems)-1])
	}
}
