// Package k8sschema turns the OpenAPI v2 document of Kubernetes (the
// swagger.json shipped in the k8s.io/kubernetes module) into one JSON Schema
// file per kind, laid out the way kubeconform looks them up, so manifests can
// be validated offline:
//
//	kubeconform -strict -schema-location 'DIR/{{ .ResourceKind }}{{ .KindSuffix }}.json' …
//
// Each file holds the kind's schema with the definitions it reaches under
// "definitions" (references stay references, so recursive types are fine).
// The schemas are strict: an object with declared properties admits no
// others, so a misspelt field is an error, as it is for the API server's
// strict field validation. IntOrString accepts a string or an integer and
// Quantity a string or a number, as the API server does.
//
// Ensure builds the schemas once per machine into a cache directory outside
// the repository; scripts/schemas.sh and the tests call it. k8s.io/kubernetes
// is downloaded with `go mod download` outside any module, so the project's
// go.mod never mentions it.
package k8sschema

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// KubernetesVersion is the version whose API the schemas describe; it is the
// version of the API server in tests/k8senv.
const KubernetesVersion = "v1.37.2"

// generatorVersion changes whenever Generate's output changes, so that
// Ensure rebuilds schemas made by an older generator.
const generatorVersion = "kas-k8sschema/2"

// stampFile marks a complete schema directory; it holds stamp().
const stampFile = ".complete"

// SchemaLocation is kubeconform's -schema-location template for dir.
func SchemaLocation(dir string) string {
	return filepath.Join(dir, "{{ .ResourceKind }}{{ .KindSuffix }}.json")
}

// DefaultDir is where Ensure keeps the schemas: $KAS_SCHEMA_DIR, else
// $XDG_CACHE_HOME/kas/schemas/<version>, else ~/.cache/kas/schemas/<version>.
func DefaultDir() string {
	if d := os.Getenv("KAS_SCHEMA_DIR"); d != "" {
		return d
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "kas", "schemas", KubernetesVersion)
}

func stamp() string { return generatorVersion + " kubernetes=" + KubernetesVersion + "\n" }

// Ensure makes sure dir holds the schemas of KubernetesVersion, generating
// them when it does not (or holds another generator's). It downloads the
// k8s.io/kubernetes module through the Go module proxy when it is not in the
// module cache yet. A complete directory is left untouched, so Ensure is
// cheap to call from every test run.
func Ensure(ctx context.Context, dir string) error {
	if got, err := os.ReadFile(filepath.Join(dir, stampFile)); err == nil && string(got) == stamp() {
		return nil
	}
	swagger, err := SwaggerPath(ctx)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("create schema directory: %w", err)
	}
	// Generate beside dir and rename, so a reader never sees half a set
	// and two concurrent runs do not mix their files.
	tmp, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".tmp-")
	if err != nil {
		return fmt.Errorf("create schema directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	if _, err := Generate(swagger, tmp); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, stampFile), []byte(stamp()), 0o644); err != nil {
		return fmt.Errorf("write schema stamp: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove old schemas: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Another run may have finished first; its result is as good.
		if got, rerr := os.ReadFile(filepath.Join(dir, stampFile)); rerr == nil && string(got) == stamp() {
			return nil
		}
		return fmt.Errorf("install schemas: %w", err)
	}
	return nil
}

// SwaggerPath returns the path of api/openapi-spec/swagger.json in the
// k8s.io/kubernetes module of KubernetesVersion, downloading the module into
// the module cache when needed. The download runs outside any module, so no
// go.mod or go.sum changes.
func SwaggerPath(ctx context.Context) (string, error) {
	mod := "k8s.io/kubernetes@" + KubernetesVersion
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", mod)
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GO111MODULE=on", "GOFLAGS=-mod=mod", "GOWORK=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var info struct{ Dir, Error string }
	if jerr := json.Unmarshal(out, &info); jerr == nil && info.Error != "" {
		return "", fmt.Errorf("download %s: %s", mod, info.Error)
	}
	if err != nil {
		return "", fmt.Errorf("download %s: %w: %s", mod, err, strings.TrimSpace(stderr.String()))
	}
	if info.Dir == "" {
		return "", fmt.Errorf("download %s: go mod download reported no directory", mod)
	}
	p := filepath.Join(info.Dir, "api", "openapi-spec", "swagger.json")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("find swagger.json in %s: %w", mod, err)
	}
	return p, nil
}

// Special definitions whose JSON form the OpenAPI document does not say.
const (
	intOrStringDef = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
	quantityDef    = "io.k8s.apimachinery.pkg.api.resource.Quantity"
	refPrefix      = "#/definitions/"
)

// Generate writes a schema file for every group/version/kind that swagger
// (an OpenAPI v2 document) defines into outDir, named as kubeconform expects
// (<kind>[-<group's first label>]-<version>.json, in lower case). It returns
// how many files it wrote.
func Generate(swaggerPath, outDir string) (int, error) {
	b, err := os.ReadFile(swaggerPath)
	if err != nil {
		return 0, fmt.Errorf("read swagger: %w", err)
	}
	var doc struct {
		Definitions map[string]map[string]any `json:"definitions"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return 0, fmt.Errorf("parse swagger %s: %w", swaggerPath, err)
	}
	if len(doc.Definitions) == 0 {
		return 0, fmt.Errorf("parse swagger %s: no definitions", swaggerPath)
	}
	defs := make(map[string]map[string]any, len(doc.Definitions))
	for name, d := range doc.Definitions {
		switch name {
		case intOrStringDef:
			defs[name] = map[string]any{"description": d["description"], "oneOf": []any{
				map[string]any{"type": "string"}, map[string]any{"type": "integer"}}}
		case quantityDef:
			defs[name] = map[string]any{"description": d["description"], "oneOf": []any{
				map[string]any{"type": "string"}, map[string]any{"type": "number"}}}
		default:
			defs[name] = convert(d)
		}
	}
	written := map[string]string{} // file name → definition
	names := make([]string, 0, len(defs))
	for name := range doc.Definitions {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		gvks, err := groupVersionKinds(doc.Definitions[name])
		if err != nil {
			return 0, fmt.Errorf("definition %s: %w", name, err)
		}
		if len(gvks) == 0 {
			continue
		}
		schema, err := standalone(name, defs)
		if err != nil {
			return 0, err
		}
		out, err := json.Marshal(schema)
		if err != nil {
			return 0, fmt.Errorf("encode schema of %s: %w", name, err)
		}
		for _, g := range gvks {
			file := g.fileName()
			if prev, ok := written[file]; ok {
				return 0, fmt.Errorf("definitions %s and %s both map to %s", prev, name, file)
			}
			written[file] = name
			if err := os.WriteFile(filepath.Join(outDir, file), out, 0o644); err != nil {
				return 0, fmt.Errorf("write schema: %w", err)
			}
		}
	}
	if len(written) == 0 {
		return 0, fmt.Errorf("swagger %s defines no kinds", swaggerPath)
	}
	return len(written), nil
}

type gvk struct{ Group, Version, Kind string }

// fileName is kubeconform's name for the kind: see its registry's
// KindSuffix (first label of the group, then the version).
func (g gvk) fileName() string {
	suffix := "-" + g.Version
	if g.Group != "" {
		first, _, _ := strings.Cut(g.Group, ".")
		suffix = "-" + first + suffix
	}
	return strings.ToLower(g.Kind + suffix + ".json")
}

func groupVersionKinds(def map[string]any) ([]gvk, error) {
	raw, ok := def["x-kubernetes-group-version-kind"]
	if !ok {
		return nil, nil
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, err
	}
	var out []gvk
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("x-kubernetes-group-version-kind: %w", err)
	}
	for _, g := range out {
		if g.Kind == "" || g.Version == "" {
			return nil, errors.New("x-kubernetes-group-version-kind without kind or version")
		}
	}
	return out, nil
}

// standalone returns the schema of definition root as a document of its
// own: the definition itself plus every definition it reaches.
func standalone(root string, defs map[string]map[string]any) (map[string]any, error) {
	reached := map[string]any{}
	var visit func(node any) error
	visit = func(node any) error {
		switch n := node.(type) {
		case map[string]any:
			if ref, ok := n["$ref"].(string); ok {
				name, found := strings.CutPrefix(ref, refPrefix)
				if !found {
					return fmt.Errorf("definition %s: unsupported reference %q", root, ref)
				}
				if _, done := reached[name]; !done {
					d, ok := defs[name]
					if !ok {
						return fmt.Errorf("definition %s: reference to unknown %q", root, name)
					}
					reached[name] = d
					if err := visit(d); err != nil {
						return err
					}
				}
			}
			for _, v := range n {
				if err := visit(v); err != nil {
					return err
				}
			}
		case []any:
			for _, v := range n {
				if err := visit(v); err != nil {
					return err
				}
			}
		}
		return nil
	}
	top := defs[root]
	if err := visit(top); err != nil {
		return nil, err
	}
	out := make(map[string]any, len(top)+2)
	for k, v := range top {
		out[k] = v
	}
	out["$schema"] = "http://json-schema.org/draft-04/schema#"
	if len(reached) > 0 {
		out["definitions"] = reached
	}
	return out, nil
}

// convert returns a copy of an OpenAPI v2 schema as a JSON Schema (draft 4)
// that kubeconform validates with: vendor extensions dropped, objects with
// declared properties closed. It walks schema keywords only, so a property
// named like a keyword (JSONSchemaProps has "format" and "$ref") is not
// mistaken for one.
func convert(s map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range s {
		switch k {
		case "properties", "patternProperties", "definitions":
			props := map[string]any{}
			for name, p := range asMap(v) {
				props[name] = convertAny(p)
			}
			out[k] = props
		case "items", "additionalProperties", "not":
			out[k] = convertAny(v)
		case "allOf", "anyOf", "oneOf":
			var list []any
			for _, e := range asList(v) {
				list = append(list, convertAny(e))
			}
			out[k] = list
		default:
			if strings.HasPrefix(k, "x-") {
				continue
			}
			out[k] = v
		}
	}
	if _, hasProps := out["properties"]; hasProps && out["additionalProperties"] == nil && isObject(out) {
		out["additionalProperties"] = false
	}
	return out
}

// convertAny converts a schema, or leaves a boolean schema as it is.
func convertAny(v any) any {
	if m, ok := v.(map[string]any); ok {
		return convert(m)
	}
	return v
}

func isObject(s map[string]any) bool {
	t, ok := s["type"]
	return !ok || t == "object"
}

func asMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

func asList(v any) []any {
	l, _ := v.([]any)
	return l
}
