package k8sschema

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"
)

const fixture = `{
  "definitions": {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"type": "string", "format": "int-or-string", "description": "i"},
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {"type": "string", "description": "q"},
    "io.example.v1.Node": {
      "type": "object",
      "properties": {
        "child": {"$ref": "#/definitions/io.example.v1.Node", "description": "recursive"},
        "port": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.util.intstr.IntOrString"},
        "limits": {"type": "object", "additionalProperties": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.api.resource.Quantity"}},
        "format": {"type": "string", "x-kubernetes-list-type": "atomic"},
        "$ref": {"type": "string"}
      },
      "x-kubernetes-group-version-kind": [{"group": "example.io", "version": "v1", "kind": "Node"}]
    },
    "io.example.core.v1.Widget": {
      "type": "object",
      "properties": {"spec": {"type": "object", "properties": {"n": {"type": "integer"}}}},
      "x-kubernetes-group-version-kind": [{"group": "", "version": "v1", "kind": "Widget"}]
    },
    "io.example.v1.Unused": {"type": "object", "properties": {"a": {"type": "string"}}}
  }
}`

func generateFixture(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "swagger.json")
	if err := os.WriteFile(src, []byte(fixture), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	n, err := Generate(src, out)
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	if n != 2 {
		t.Errorf("Generate wrote %d schemas, want 2", n)
	}
	return out
}

func readSchema(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

func TestGenerateNamesFilesAsKubeconform(t *testing.T) {
	out := generateFixture(t)
	entries, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	if want := []string{"node-example-v1.json", "widget-v1.json"}; !reflect.DeepEqual(names, want) {
		t.Errorf("files %v, want %v", names, want)
	}
}

func TestGenerateSchemaShape(t *testing.T) {
	out := generateFixture(t)
	s := readSchema(t, filepath.Join(out, "node-example-v1.json"))
	if s["$schema"] != "http://json-schema.org/draft-04/schema#" {
		t.Errorf("$schema = %v", s["$schema"])
	}
	if s["additionalProperties"] != false {
		t.Errorf("object with properties is not closed: additionalProperties = %v", s["additionalProperties"])
	}
	if _, ok := s["x-kubernetes-group-version-kind"]; ok {
		t.Error("vendor extension kept")
	}
	props := s["properties"].(map[string]any)
	// Properties named like keywords are properties, not keywords.
	if f := props["format"].(map[string]any); f["type"] != "string" || f["x-kubernetes-list-type"] != nil {
		t.Errorf("property format = %v", f)
	}
	if r := props["$ref"].(map[string]any); r["type"] != "string" {
		t.Errorf("property $ref = %v", r)
	}
	defs := s["definitions"].(map[string]any)
	var defNames []string
	for k := range defs {
		defNames = append(defNames, k)
	}
	sort.Strings(defNames)
	want := []string{"io.example.v1.Node", quantityDef, intOrStringDef}
	sort.Strings(want)
	if !reflect.DeepEqual(defNames, want) {
		t.Errorf("definitions %v, want the reachable ones %v", defNames, want)
	}
	ios := defs[intOrStringDef].(map[string]any)
	if ios["type"] != nil || ios["format"] != nil || len(ios["oneOf"].([]any)) != 2 {
		t.Errorf("IntOrString = %v, want oneOf string, integer", ios)
	}
	q := defs[quantityDef].(map[string]any)
	if q["type"] != nil || len(q["oneOf"].([]any)) != 2 {
		t.Errorf("Quantity = %v, want oneOf string, number", q)
	}

	w := readSchema(t, filepath.Join(out, "widget-v1.json"))
	spec := w["properties"].(map[string]any)["spec"].(map[string]any)
	if spec["additionalProperties"] != false {
		t.Errorf("nested object not closed: %v", spec)
	}
	if _, ok := w["definitions"]; ok {
		t.Error("a schema without references has definitions")
	}
}

func TestGenerateRejectsDanglingReference(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "swagger.json")
	bad := `{"definitions": {"a.v1.A": {"type": "object", "properties": {"b": {"$ref": "#/definitions/missing"}},
	  "x-kubernetes-group-version-kind": [{"group": "", "version": "v1", "kind": "A"}]}}}`
	if err := os.WriteFile(src, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Generate(src, dir); err == nil {
		t.Fatal("Generate accepted a reference to a missing definition")
	}
}

// The real document: every kind the charts use gets a schema.
func TestEnsureRealSwagger(t *testing.T) {
	if testing.Short() {
		t.Skip("downloads k8s.io/kubernetes when it is not in the module cache")
	}
	dir := filepath.Join(t.TempDir(), "schemas")
	if err := Ensure(context.Background(), dir); err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	for _, f := range []string{"deployment-apps-v1.json", "service-v1.json", "secret-v1.json", "job-batch-v1.json",
		"cronjob-batch-v1.json", "horizontalpodautoscaler-autoscaling-v2.json", "poddisruptionbudget-policy-v1.json",
		"clusterrole-rbac-v1.json", "clusterrolebinding-rbac-v1.json", "serviceaccount-v1.json", "configmap-v1.json"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("no schema %s: %v", f, err)
		}
	}
	// A second call finds the stamp and keeps the directory.
	marker := filepath.Join(dir, "marker")
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Ensure(context.Background(), dir); err != nil {
		t.Fatalf("second Ensure: %v", err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Error("second Ensure regenerated a complete directory")
	}
}
